"""The Avro schemas of the flow's messages, and in `history/` the earlier versions old messages were written
with. The repository keeps them at its top level; the package carries them as `flows.schemas` (package data,
mapped in pyproject.toml), read by `flows.wire.avro` through importlib.resources."""
