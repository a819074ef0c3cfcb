"""The Kafka arguments every tool takes, with defaults from the flow's own settings (SERVING_KAFKA_*), so a
tool pointed at nothing talks to the same broker and topics as the flow."""

from __future__ import annotations

import argparse

from flows.adapters.kafka.config import client_config
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


def consumer_config(args: argparse.Namespace, settings: KafkaSettings) -> dict[str, str]:
    """librdkafka consumer settings: the broker from the arguments, TLS/SASL and the rest from the settings."""
    return {
        "bootstrap.servers": args.bootstrap_servers,
        **client_config(settings, settings.consumer_config),
    }


def producer_config(args: argparse.Namespace, settings: KafkaSettings) -> dict[str, str]:
    """librdkafka producer settings, as `consumer_config`."""
    return {
        "bootstrap.servers": args.bootstrap_servers,
        **client_config(settings, settings.producer_config),
    }
