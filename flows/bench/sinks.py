"""What the benchmark's flows write to: numbers only, collected in this process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.core.explanations import ExplanationMessage
from flows.core.records import ScoredBatch, ScoredMessage

T = TypeVar("T")


class _LatencyPartition(StatelessSinkPartition[Sequence[ScoredMessage]]):
    def __init__(self, latencies: list[int], errors: list[str]) -> None:
        self.latencies = latencies
        self.errors = errors

    def write_batch(self, batches: list[Sequence[ScoredMessage]]) -> None:
        now = time.time_ns()
        for batch in batches:
            if isinstance(batch, ScoredBatch):  # its columns: no result objects built for a number
                self.latencies.extend(now - message.entered_ns for message in batch.messages)
                self.errors.extend(batch.errors())
                continue
            self.latencies.extend(now - item.entered_ns for item in batch)
            self.errors.extend(item.result.metadata.errors for item in batch if item.result.metadata.errors)


class LatencySink(DynamicSink[Sequence[ScoredMessage]]):
    """Collects each result's latency (ns) and any error, from batches of results, in this process."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.errors: list[str] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LatencyPartition:
        return _LatencyPartition(self.latencies, self.errors)


class ExplanationCounter(DynamicSink[list[ExplanationMessage]]):
    """Counts explanations and the ms of their model calls (one call per micro-batch, which each of that
    batch's explanations names: counted once, by its start and duration)."""

    def __init__(self) -> None:
        self.explained = 0
        self.calls: dict[tuple[str, int, float], None] = {}

    @property
    def call_ms(self) -> float:
        return sum(duration for _, _, duration in self.calls)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        counter = self

        class _Partition(StatelessSinkPartition[list[ExplanationMessage]]):
            def write_batch(self, batches: list[list[ExplanationMessage]]) -> None:
                for batch in batches:
                    counter.explained += len(batch)
                    for item in batch:
                        explanation = item.explanation
                        call = (explanation.model_name, explanation.start_time, explanation.duration)
                        counter.calls[call] = None

        return _Partition()


class SwapSink(DynamicSink[Sequence[ScoredMessage]]):
    """Per result: arrival (time.time()), latency, whether v2 scored it, whether it has an error.

    Plain numbers only: keeping every result object would grow what each full garbage collection scans
    and put the benchmark's own pauses into the gaps it measures.
    """

    def __init__(self, new_model: str) -> None:
        self.new_model = new_model
        self.arrived: list[float] = []
        self.latency_ms: list[float] = []
        self.by_new_model: list[bool] = []
        self.errors = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        sink = self

        class _Partition(StatelessSinkPartition[Sequence[ScoredMessage]]):
            def write_batch(self, batches: list[Sequence[ScoredMessage]]) -> None:
                now = time.time()
                for item in (item for batch in batches for item in batch):
                    sink.arrived.append(now)
                    sink.latency_ms.append((now * 1e9 - item.entered_ns) / 1e6)
                    sink.by_new_model.append(item.result.metadata.model_name == sink.new_model)
                    sink.errors += bool(item.result.metadata.errors)

        return _Partition()


class ArrivalSink(DynamicSink[T]):
    """Collects (time.time() at arrival, item) for every item, in this process (for few items: events)."""

    def __init__(self, arrivals: list[tuple[float, T]] | None = None) -> None:
        self.arrivals: list[tuple[float, T]] = arrivals if arrivals is not None else []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[T]:
        arrivals = self.arrivals

        class _Partition(StatelessSinkPartition[T]):
            def write_batch(self, items: list[T]) -> None:
                now = time.time()
                arrivals.extend((now, item) for item in items)

        return _Partition()
