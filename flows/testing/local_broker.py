"""A local Kafka-protocol broker for tests and benchmarks: the pinned noida-db binary (test extra) on a free
loopback port, or an external broker named by SERVING_TEST_KAFKA_BOOTSTRAP (so the same tests and benchmarks
run against real Kafka)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from flows.testing.loopback import free_port, wait_until_ready

EXTERNAL_BROKER_VARIABLE = "SERVING_TEST_KAFKA_BOOTSTRAP"


def _answers(admin: AdminClient) -> bool:
    try:
        admin.list_topics(timeout=1)
    except KafkaException:
        return False
    return True


def _wait_until_ready(bootstrap: str, process: subprocess.Popen | None, timeout: float = 30) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_until_ready(f"the Kafka broker at {bootstrap}", lambda: _answers(admin), process, timeout)


@contextmanager
def kafka_broker(port: int | None = None, data_dir: str | None = None) -> Iterator[str]:
    """Yield bootstrap servers of a broker that runs for the duration of the block.

    With `port` and `data_dir` (kept afterwards), a second block can start the same broker again, with
    its topics: what a broker that goes away and comes back looks like.
    """
    external = os.environ.get(EXTERNAL_BROKER_VARIABLE)
    if external and port is None:
        _wait_until_ready(external, None)
        yield external
        return
    import noida_db

    binary = Path(noida_db.__file__).parent / "noida-db"
    keep_data = data_dir is not None
    port = port or free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="test-broker-")
    log = open(Path(data_dir) / "broker.log", "a")  # noqa: SIM115 (the broker writes it while it runs)
    process = subprocess.Popen(
        [
            str(binary),
            "start",
            "--data-dir",
            data_dir,
            "--host",
            "127.0.0.1",
            "--only",
            "kafka",
            "--kafka-port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        _wait_until_ready(bootstrap, process)
        yield bootstrap
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)


def create_topics(bootstrap: str, prefix: str, names: list[str], partitions: int = 1) -> dict[str, str]:
    """Create uniquely named topics; returns {name: topic}. The one named `answered` is compacted, as
    exactly-once delivery needs its markers topic."""
    unique = uuid.uuid4().hex[:8]
    topics = {name: f"{prefix}-{name}-{unique}" for name in names}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compacted = {"cleanup.policy": "compact"}
    futures = admin.create_topics(
        [
            NewTopic(topic, num_partitions=partitions, replication_factor=1,
                     config=compacted if name == "answered" else {})
            for name, topic in topics.items()
        ]
    )  # fmt: skip
    for future in futures.values():
        future.result(timeout=30)
    return topics


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    producer.flush(30)


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Message]:
    """Read `topic` from the beginning until `expected` messages arrived or `timeout` passed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    received: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None:
                    received.append(message)
    finally:
        consumer.close()
    return received
