"""The lag of the data partitions a process reads, measured on a thread of its own from end offsets asked
of the broker.

The end offset librdkafka caches from its fetch responses goes stale exactly when the lag matters: a
consumer stops fetching once its queue holds `queued.min.messages` (1,000 here), so a partition waiting for
its first model, or one whose worker is busy in a slow model call, kept reporting the end it heard last
(/state read 480-1,020 while the true backlog grew from 1,020 to 17,520). And a measurement made on the
worker thread is not made while that thread scores: readings were up to 31 s old.

So one thread per process asks the broker for each partition's end offset about once a second
(`get_watermark_offsets(cached=False)`: one ListOffsets request per partition, about a millisecond against
a local broker), reads the partition's next offset as it stands, and reports both. The worker's poll loop
never waits for it. A query that fails or times out (`QUERY_TIMEOUT_S`) reports nothing: the last figure
stays, and its `measured_ms` says how old it is.

Bytewax lists a source's partitions once, when the flow starts (`FixedPartitionedSource.list_parts`), so a
partition added to the topic later is not read until a restart. The probe looks at the topic's partitions
every `LIST_EVERY_S` and reports any it was not given as unread, with the messages waiting on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from flows.core.serving_state import PartitionLag

LOG = logging.getLogger(__name__)
LAG_EVERY_S = 1.0
QUERY_TIMEOUT_S = 2.0
LIST_EVERY_S = 10.0

LagReport = Callable[[PartitionLag], None]


class ReadPosition(Protocol):
    """A data partition read in this process, as the probe sees it: where the flow reads next (its recovery
    state: an offset, or OFFSET_BEGINNING / OFFSET_END before the first message)."""

    partition: int
    offset: int


class LagProbe:
    """Measures the lag of the partitions `watch`ed in this process, and reports partitions of `topic`
    beyond `listed` (what the source's `list_parts` found; unset, what the probe's first look finds) as
    unread (see the module docstring). Runs while it watches any partition."""

    def __init__(self, config: dict[str, str], topic: str, report: LagReport) -> None:
        self.config = config
        self.topic = topic
        self.listed: frozenset[int] | None = None
        self.report = report
        self._lock = threading.Lock()
        self._watched: dict[int, ReadPosition] = {}
        self._unread: set[int] = set()
        self._failing: set[int] = set()  # partitions whose last query failed: logged once per streak
        self._stop: threading.Event | None = None  # the running thread's
        self._thread: threading.Thread | None = None

    def watch(self, position: ReadPosition) -> None:
        """Measure `position`'s partition from now on; starts the thread with the first one."""
        with self._lock:
            self._watched[position.partition] = position
            if self._stop is None:
                self._stop = threading.Event()
                name = f"lag-probe {self.topic}"
                threading.Thread(target=self._run, args=(self._stop,), name=name, daemon=True).start()

    def forget(self, partition: int) -> None:
        """`partition` is closed; the thread ends (and closes its consumer) after the last one."""
        with self._lock:
            self._watched.pop(partition, None)
            if self._watched or self._stop is None:
                return
            stop, self._stop = self._stop, None
        stop.set()

    def _run(self, stop: threading.Event) -> None:
        consumer = Consumer(self.config)
        listed_at = float("-inf")
        try:
            while not stop.is_set():
                started = time.monotonic()
                if started - listed_at >= LIST_EVERY_S:
                    self._look_for_added(consumer)
                    listed_at = started
                self._measure_all(consumer)
                stop.wait(max(0.0, LAG_EVERY_S - (time.monotonic() - started)))
        finally:
            consumer.close()

    def _measure_all(self, consumer: Consumer) -> None:
        with self._lock:
            watched = list(self._watched.values())
        for position in watched:
            ends = self._ends(consumer, position.partition)
            if ends is not None:
                self.report(self._lag(position.partition, _next_offset(position.offset, *ends), ends[1]))
        for partition in sorted(self._unread):
            ends = self._ends(consumer, partition)
            if ends is not None:
                self.report(self._lag(partition, ends[0], ends[1], unread=True))

    def _lag(self, partition: int, next_offset: int, end_offset: int, unread: bool = False) -> PartitionLag:
        now_ms = time.time_ns() // 1_000_000
        return PartitionLag(self.topic, partition, next_offset, end_offset, now_ms, unread)

    def _ends(self, consumer: Consumer, partition: int) -> tuple[int, int] | None:
        """The partition's first and end offsets as the broker says now; None (logged once until it answers
        again) when it does not answer within QUERY_TIMEOUT_S."""
        try:
            ends = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=QUERY_TIMEOUT_S, cached=False
            )
            error = None if ends is not None else f"no answer within {QUERY_TIMEOUT_S:g} s"
        except KafkaException as failure:
            ends, error = None, str(failure.args[0])
        if ends is None:
            if partition not in self._failing:
                LOG.warning(
                    "cannot measure the lag of Kafka topic %r partition %d (%s): keeping the last figure, "
                    "its age growing",
                    self.topic,
                    partition,
                    error,
                )
            self._failing.add(partition)
            return None
        self._failing.discard(partition)
        return ends

    def _look_for_added(self, consumer: Consumer) -> None:
        """Note partitions added to the topic after the flow listed its partitions (logged once each)."""
        try:
            metadata = consumer.list_topics(self.topic, timeout=QUERY_TIMEOUT_S).topics[self.topic]
        except KafkaException as failure:
            LOG.warning("cannot list the partitions of Kafka topic %r: %s", self.topic, failure.args[0])
            return
        if metadata.error is not None:
            return  # the topic is gone or the broker is unsure: the next listing tells
        if self.listed is None:
            self.listed = frozenset(metadata.partitions)
        added = set(metadata.partitions) - self.listed - self._unread
        for partition in sorted(added):
            LOG.warning(
                "Kafka topic %r partition %d was added after the flow started: the flow reads it after a "
                "restart, and reports its backlog as unread until then",
                self.topic,
                partition,
            )
        self._unread |= added


def _next_offset(offset: int, first: int, end: int) -> int:
    """The next offset the flow reads; `offset` may still name where it starts (before a first message)."""
    if offset == OFFSET_BEGINNING:
        return max(first, 0)
    if offset == OFFSET_END:
        return end
    return offset
