"""The `GET /state` endpoint (`state_server`): the statistics of what each shard serves
(`flows.core.serving_state`), as JSON."""
