"""A Kafka source that says when it has read what its partitions held when the flow started.

A fresh deployment reads the models topic from its beginning: every model ever published, oldest first.
Without a marker, records waiting for a first model would be scored by each historical model in turn. Each
partition of this source looks up its end offset when it is built and, once it has read up to it, emits
`CaughtUp` after the messages; the model holder waits for every partition's marker and starts with the
newest model (see `flows.core.model_holder`).

The last offsets may hold no readable message (transaction markers, compaction), so a partition that has
returned nothing for `IDLE_CATCH_UP` also counts as caught up.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, TopicPartition

from flows.adapters.kafka.data_source import partition_names
from flows.adapters.sources.wrapping import PartitionWrapper
from flows.core.model_holder import CaughtUp

IDLE_CATCH_UP_S = 2.0
LOOKUP_TIMEOUT_S = 10.0


class _CatchUpPartition(PartitionWrapper):
    def __init__(
        self, inner: StatefulSourcePartition, name: str, end_offset: int, partitions: int, resume: int | None
    ) -> None:
        super().__init__(inner)
        self.marker: CaughtUp | None = CaughtUp(name, partitions)
        self.last_offset = end_offset - 1  # the last message there was at start-up
        if resume is not None and resume > self.last_offset:
            self.last_offset = -1  # resumed past it: caught up already
        self.idle_since = time.monotonic()

    def next_batch(self) -> Iterable[Any]:
        if self.marker is None:
            return self.inner.next_batch()
        batch = list(self.inner.next_batch())  # read twice below: Bytewax promises only an iterable
        offsets = [_offset(item) for item in batch]
        if (offsets and max(offsets) >= self.last_offset) or self.last_offset < 0:
            batch = [*batch, self.marker]
            self.marker = None
        elif batch:
            self.idle_since = time.monotonic()
        elif time.monotonic() - self.idle_since >= IDLE_CATCH_UP_S:
            batch = [self.marker]
            self.marker = None
        return batch


def _offset(item: KafkaSourceMessage | KafkaError) -> int:
    message = item.msg if isinstance(item, KafkaError) else item
    return message.offset if message.offset is not None else -1


class CatchUpSource(FixedPartitionedSource[Any, Any]):
    """`inner` (a KafkaSource of one topic), plus a `CaughtUp` marker per partition."""

    def __init__(self, inner: KafkaSource, topic: str, config: dict[str, Any]) -> None:
        self.inner = inner
        self.topic = topic
        self.config = config

    def list_parts(self) -> list[str]:
        return partition_names(self.config, self.topic)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _CatchUpPartition:
        index = int(for_part.split("-", 1)[0])
        end_offset, partitions = self._end_offset(index)
        partition = self.inner.build_part(step_id, for_part, resume_state)
        return _CatchUpPartition(partition, for_part, end_offset, partitions, resume_state)

    def _end_offset(self, index: int) -> tuple[int, int]:
        """The partition's end offset now, and how many partitions the topic has."""
        consumer = Consumer({**self.config, "group.id": "catch-up-lookup", "enable.auto.commit": "false"})
        try:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, index), timeout=LOOKUP_TIMEOUT_S, cached=False
            )
            metadata = consumer.list_topics(self.topic, timeout=LOOKUP_TIMEOUT_S)
            partitions = len(metadata.topics[self.topic].partitions)
        finally:
            consumer.close()
        return high, partitions
