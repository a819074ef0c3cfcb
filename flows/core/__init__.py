"""The core: records, models judged and held, shards that score, challengers, drift. It imports no adapter,
no runtime and no tool (tests/project/test_layers.py holds it to that)."""
