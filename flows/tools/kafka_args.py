"""The Kafka arguments every tool takes, with defaults from the flow's own settings (SERVING_KAFKA_*), so a
tool pointed at nothing talks to the same broker and topics as the flow."""

from __future__ import annotations

import argparse

from flows.adapters.kafka.config import client_config
from flows.adapters.kafka.read_to_end import ISOLATION_LEVELS
from flows.adapters.kafka.settings import KafkaSettings

LOCAL_BROKER = "127.0.0.1:9092"


def add_kafka_arguments(
    parser: argparse.ArgumentParser, settings: KafkaSettings, topics: dict[str, str]
) -> None:
    """`--bootstrap-servers`, and one topic option per entry of `topics` (flag: default topic)."""
    parser.add_argument(
        "--bootstrap-servers",
        default=settings.bootstrap_servers or LOCAL_BROKER,
        help=f"Kafka bootstrap servers (default: SERVING_KAFKA_BOOTSTRAP_SERVERS, else {LOCAL_BROKER})",
    )
    for flag, default in topics.items():
        parser.add_argument(flag, default=default, help=f"default {default}")


def add_isolation_argument(parser: argparse.ArgumentParser) -> None:
    """`--isolation`, for a tool that reads what the flow writes."""
    parser.add_argument(
        "--isolation",
        choices=ISOLATION_LEVELS,
        default="read_committed",
        help="read_committed (default): only what committed transactions wrote, as a consumer of the flow's "
        "exactly-once output must read; read_uncommitted also shows what aborted or open transactions wrote",
    )


def consumer_config(args: argparse.Namespace, settings: KafkaSettings) -> dict[str, str]:
    """librdkafka consumer settings: the broker (and `--isolation`, if the tool has it) from the arguments,
    TLS/SASL and the rest from the settings."""
    isolation = getattr(args, "isolation", None)
    return {
        "bootstrap.servers": args.bootstrap_servers,
        **client_config(settings, settings.consumer_config),
        **({"isolation.level": isolation} if isolation else {}),
    }


def producer_config(args: argparse.Namespace, settings: KafkaSettings) -> dict[str, str]:
    """librdkafka producer settings, as `consumer_config`."""
    return {
        "bootstrap.servers": args.bootstrap_servers,
        **client_config(settings, settings.producer_config),
    }
