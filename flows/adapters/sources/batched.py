"""One item per poll: a source whose every `next_batch` becomes a single item (a list) of the dataflow.

Bytewax pays a per-item cost at every step an item passes (about ten in the serving flow). Wrapped in
`PollBatches`, a source's poll (a generator's batch) travels as one item, every step pays once per poll, and
a shard scores the poll with one model call. The partitions' snapshots are the inner source's, so recovery
state is unchanged. (The Kafka data source emits its polls as items itself:
`flows.adapters.kafka.data_source`.)
"""

from __future__ import annotations

from typing import Any

from bytewax.inputs import StatefulSourcePartition

from flows.adapters.sources.wrapping import PartitionWrapper, SourceWrapper


class _PollPartition(PartitionWrapper):
    def next_batch(self) -> list[list[Any]]:
        polled = self.inner.next_batch()
        return [list(polled)] if polled else []


class PollBatches(SourceWrapper):
    """`inner`, with each poll of each partition emitted as one list."""

    def wrap(self, partition: StatefulSourcePartition) -> _PollPartition:
        return _PollPartition(partition)
