"""Command-line tools around a running flow: publish models, generate load, watch and audit results, query
/state, make signing keys, retrain the shipped models, plot benchmark results. Each is `python -m
flows.tools.NAME` and a `serving-NAME` script."""
