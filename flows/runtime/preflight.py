"""The checks the main job makes before it builds the dataflow: what the deployment must provide.

A problem found here stops the job in a second, one line each, before TensorFlow, a model or Bytewax's
workers start; found later, the same problem was a panic trace inside a worker (see
`flows.adapters.kafka.preflight`)."""

from __future__ import annotations

from flows.adapters.kafka.preflight import kafka_problems
from flows.runtime.settings import Settings


def start_problems(settings: Settings) -> list[str]:
    """What stops these settings from running here (none: start)."""
    return kafka_problems(settings.kafka) if settings.kafka.brokers else []
