"""The base of the flow's source wrappers (stoppable, batched, the Kafka catch-up): a partition that hands
everything to the partition it wraps, and a source that wraps each partition of another source. A wrapper
overrides only what it changes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition


class PartitionWrapper(StatefulSourcePartition[Any, Any]):
    """`inner`, unchanged: its batches, wake-ups, snapshots (so recovery state is the inner source's) and
    close."""

    def __init__(self, inner: StatefulSourcePartition) -> None:
        self.inner = inner

    def next_batch(self) -> Iterable[Any]:
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()

    def hold_fetching(self, held: bool) -> None:
        """Passed down to the partition that reads: stop (or resume) fetching ahead of what it is asked for
        (`_DataPollPartition`); a partition that does not fetch ahead has no such method."""
        hold = getattr(self.inner, "hold_fetching", None)
        if hold is not None:
            hold(held)


class SourceWrapper(FixedPartitionedSource[Any, Any]):
    """`inner`'s partitions, each wrapped by `wrap`."""

    def __init__(self, inner: FixedPartitionedSource) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> PartitionWrapper:
        return self.wrap(self.inner.build_part(step_id, for_part, resume_state))

    def wrap(self, partition: StatefulSourcePartition) -> PartitionWrapper:
        raise NotImplementedError
