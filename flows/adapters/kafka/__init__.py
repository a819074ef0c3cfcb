"""Kafka at both ends of the flow: the data and model topics in (`source`, with the start-up `catch_up`),
results and dead letters out (`outputs`, through the delivery-checking `sink`), Avro messages throughout.

`KafkaOrigin` is importable from here because recovery snapshots written before this package was split
name it `flows.adapters.kafka.KafkaOrigin` (records a shard holds before its first model keep their origin).
It is looked up on first use, so that importing `flows.adapters.kafka.headers` or
`flows.adapters.kafka.config` (as the tools do) does not import the source and everything behind it.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "KafkaOrigin":
        from flows.adapters.kafka.data_source import KafkaOrigin

        return KafkaOrigin
    raise AttributeError(f"module 'flows.adapters.kafka' has no attribute {name!r}")
