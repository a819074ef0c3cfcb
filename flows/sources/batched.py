"""One item per poll: a source whose every `next_batch` becomes a single item (a list) of the dataflow.

Bytewax pays its per-item cost at every step an item passes (about ten in the serving flow), so records that
travel one by one spend more time in the engine than in decoding, scoring and encoding together. Wrapped in
`PollBatches`, a source's poll (up to a thousand Kafka messages, or a generator's batch) travels as one item,
and every step pays once per poll. The partitions' snapshots are the inner source's, so recovery offsets
are unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition


class _PollPartition(StatefulSourcePartition[list[Any], Any]):
    def __init__(self, inner: StatefulSourcePartition) -> None:
        self.inner = inner

    def next_batch(self) -> list[list[Any]]:
        polled = self.inner.next_batch()
        return [list(polled)] if polled else []

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class PollBatches(FixedPartitionedSource[list[Any], Any]):
    """`inner`, with each poll of each partition emitted as one list."""

    def __init__(self, inner: FixedPartitionedSource) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _PollPartition:
        return _PollPartition(self.inner.build_part(step_id, for_part, resume_state))
