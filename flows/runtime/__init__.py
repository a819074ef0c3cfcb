"""The runtime: settings read from the environment, the flow wired from them, signals, observability
switched on. `flows.serving` (the main job) runs it."""
