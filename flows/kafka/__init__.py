"""Kafka at both ends of the flow: the data and model topics in (`source`, with the start-up `catch_up`),
results and dead letters out (`outputs`, through the delivery-checking `sink`), Avro messages throughout.

`KafkaOrigin` is importable from here because recovery snapshots written before this package was split
name it `flows.kafka.KafkaOrigin` (records a shard holds before its first model keep their origin).
"""

from flows.kafka.source import KafkaOrigin

__all__ = ["KafkaOrigin"]
