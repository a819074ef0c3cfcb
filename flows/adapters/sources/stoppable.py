"""A wrapper that ends any partitioned source's input when a clean stop is requested.

`request_stop()` asks for it: the runtime's signal handler does (`flows.runtime.shutdown`), and so does a
benchmark that ends its run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import StatefulSourcePartition

from flows.adapters.sources.wrapping import PartitionWrapper, SourceWrapper

STOP_POLL = timedelta(seconds=0.5)
_requested = threading.Event()


def stop_requested() -> bool:
    """Whether a stop was asked for; sources end their input when it is."""
    return _requested.is_set()


def request_stop() -> None:
    _requested.set()


class _StoppablePartition(PartitionWrapper):
    def next_batch(self) -> Iterable[Any]:
        if stop_requested():
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
