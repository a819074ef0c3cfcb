"""A wrapper that ends any partitioned source's input when a clean stop is requested (see flows.shutdown)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows import shutdown

STOP_POLL = timedelta(seconds=0.5)


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition) -> None:
        self.inner = inner

    def next_batch(self) -> list:
        if shutdown.requested():
            raise StopIteration()
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        wake = self.inner.next_awake()
        if wake is None:
            return None
        return min(wake, datetime.now(timezone.utc) + STOP_POLL)

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """`inner`, except that its partitions end their input once a stop is requested."""

    def __init__(self, inner: FixedPartitionedSource) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))
