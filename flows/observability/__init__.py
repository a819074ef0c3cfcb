"""How the flow is watched: OpenTelemetry traces and metrics (`telemetry`), the statistics of what each shard
serves (`serving_state`) behind `GET /state` (`state_server`), and switching them on (`setup`)."""
