"""librdkafka settings shared by the flow's consumers and producers and by the tools."""

from __future__ import annotations

from flows.settings import Settings


def client_config(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    """librdkafka settings: the shared ones, overridden by the consumer- or producer-only `extra`."""
    return {**settings.kafka_config, **extra}
