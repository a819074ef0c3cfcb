"""Read a topic to the end it has now: what the audit and the exactly-once sink's start-up need.

"The end" is each partition's high watermark when the read starts. A `read_committed` reader can only get
there once no transaction below it is open (it stops at the last stable offset until then), and the last
offset of a transactional topic is a commit marker, never a message: so the read ends a partition when its
position, which passes markers and aborted messages, reaches the end, not when it sees the end's message.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from flows.core.errors import ConfigurationError, ServingError

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 10.0
REPORT_EVERY_S = 10.0
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")


class StillOpen(ServingError):
    """A `read_committed` read gave up waiting: a transaction is still open below the end it was to reach
    (another producer's, or one a broker lost track of at a restart).
    `held` maps each partition not read to its end to (the position it reached, that end)."""

    def __init__(self, topic: str, held: dict[int, tuple[int, int]], waited_s: float) -> None:
        where = ", ".join(
            f"{topic}[{partition}] from offset {position} to {end}"
            for partition, (position, end) in held.items()
        )
        super().__init__(f"after {waited_s:.0f} s, {where} still held back by an open transaction")
        self.held = held


def consumed_position(message: Message) -> tuple[int, int]:
    """A consumed message's (partition, offset); the stubs' Optional is for a message being produced."""
    return cast(int, message.partition()), cast(int, message.offset())


def read_to_end(
    config: dict[str, str],
    topic: str,
    isolation: str = "read_committed",
    partitions: set[int] | None = None,
    max_wait_s: float | None = None,
) -> Iterator[Message]:
    """Every message of every partition of `topic` (or of `partitions`) from its beginning to the end it
    had when called. Waits, logging every 10 s, while an open transaction holds a
    `read_committed` reader back: for ever, or with `max_wait_s`, until then, and then raises `StillOpen`
    naming what it could not read (after yielding what it could)."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"read-to-end-{uuid.uuid4().hex}",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "isolation.level": isolation,
        }
    )
    # A read_committed consumer's watermark lookup answers the last stable offset, which an open transaction
    # holds back: the end is the high watermark, as a read_uncommitted lookup answers it.
    high_watermarks = Consumer(
        {**config, "group.id": f"read-to-end-{uuid.uuid4().hex}", "isolation.level": "read_uncommitted"}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics[topic]
        if metadata.error is not None:
            raise ConfigurationError(f"cannot read Kafka topic {topic!r}: {metadata.error.str()}")
        ends = {}
        assignment = []
        for partition in sorted(metadata.partitions):
            if partitions is not None and partition not in partitions:
                continue
            low, high = high_watermarks.get_watermark_offsets(
                TopicPartition(topic, partition), LOOKUP_TIMEOUT_S
            )
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        consumer.assign(assignment)
        started = time.monotonic()
        next_report = started + REPORT_EVERY_S
        while ends:
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    partition, offset = consumed_position(message)
                    if offset < ends.get(partition, 0):
                        yield message  # (not one written since the read began)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", topic, error.str())
            for position in consumer.position([TopicPartition(topic, partition) for partition in ends]):
                if position.offset >= ends[position.partition]:
                    del ends[position.partition]
            if ends and max_wait_s is not None and time.monotonic() - started > max_wait_s:
                reached = {
                    tp.partition: tp.offset
                    for tp in consumer.position([TopicPartition(topic, partition) for partition in ends])
                }
                held = {partition: (reached[partition], end) for partition, end in sorted(ends.items())}
                raise StillOpen(topic, held, time.monotonic() - started)
            if ends and time.monotonic() >= next_report:
                log.warning(
                    "reading %s: waited %.0f s for partitions %s to reach their end (open transactions?)",
                    topic,
                    time.monotonic() - started,
                    sorted(ends),
                )
                next_report += REPORT_EVERY_S
    finally:
        consumer.close()
        high_watermarks.close()
