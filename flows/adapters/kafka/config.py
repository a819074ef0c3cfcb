"""librdkafka settings shared by the flow's consumers and producers and by the tools."""

from __future__ import annotations

from flows.adapters.kafka.settings import KafkaSettings

# The flow's consumers read ahead at most about one poll (SERVING_KAFKA_POLL_SIZE, 1,000 messages) instead of
# librdkafka's 100,000 messages (up to 64 MB) per partition, and look again every 10 ms whether to fetch more
# (librdkafka waits 1 s when its queue is long enough, which a short queue would turn into stalls).
# Against Kafka this costs nothing (the broker holds each fetch up to fetch.wait.max.ms, and memory per
# partition falls). Against a broker that answers a fetch at a partition's end at once and empty (noida-db,
# the test broker), librdkafka's default read-ahead brought every consumer of a pre-loaded topic to the end
# after one fetch, to spin there, one core-burning consumer per partition: two partitions halved the flow's
# throughput. SERVING_KAFKA_CONFIG and SERVING_KAFKA_CONSUMER_CONFIG override these.
CONSUMER_DEFAULTS = {"queued.min.messages": "1000", "fetch.queue.backoff.ms": "10"}


def client_config(settings: KafkaSettings, extra: dict[str, str]) -> dict[str, str]:
    """librdkafka settings: the shared ones, overridden by the consumer- or producer-only `extra`."""
    return {**settings.config, **extra}


def consumer_config(settings: KafkaSettings) -> dict[str, str]:
    """The flow's consumer settings: `CONSUMER_DEFAULTS`, then the shared settings, then the consumer-only
    ones."""
    return {**CONSUMER_DEFAULTS, **client_config(settings, settings.consumer_config)}
