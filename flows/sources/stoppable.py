"""A wrapper that ends any partitioned source's input when a clean stop is requested (see flows.shutdown)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bytewax.inputs import StatefulSourcePartition

from flows import shutdown
from flows.sources.wrapping import PartitionWrapper, SourceWrapper

STOP_POLL = timedelta(seconds=0.5)


class _StoppablePartition(PartitionWrapper):
    def next_batch(self) -> list:
        if shutdown.requested():
            raise StopIteration()
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        wake = self.inner.next_awake()
        if wake is None:
            return None
        return min(wake, datetime.now(timezone.utc) + STOP_POLL)


class StoppableSource(SourceWrapper):
    """`inner`, except that its partitions end their input once a stop is requested."""

    def wrap(self, partition: StatefulSourcePartition) -> _StoppablePartition:
        return _StoppablePartition(partition)
