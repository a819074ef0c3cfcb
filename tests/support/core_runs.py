"""Running the serving core in this process on scheduled inputs, and what the tests compare its output
with."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from bytewax.testing import AbortExecution, TestingSink, cluster_main, run_main

from flows.adapters.sources.generators import generate_block
from flows.core.admission.policy import AdmissionPolicy
from flows.core.challenger import ChallengerSettings
from flows.core.context import ServingContext
from flows.core.dataflow import serve
from flows.core.drift import DriftSettings
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.explanations import ExplainSettings, ExplanationMessage
from flows.core.model_holder import HolderState, ModelHolderLogic
from flows.core.outliers import OutlierSettings
from flows.core.probation import RollbackSettings
from flows.core.records import DataMessage, RecommenderRecord, ScoredMessage
from flows.core.scorer_cache import ScorerCache

Schedule = list[tuple[float, Any]]


def messages(records: list[RecommenderRecord]) -> list[DataMessage]:
    return [DataMessage(record, time.time_ns()) for record in records]


def sample_records(count: int, offset: int = 0) -> list[RecommenderRecord]:
    """Distinct, reproducible records: user (offset + i) * 7 % 1000 with a few products each."""
    return [
        RecommenderRecord((offset + i) * 7 % 1000, [(offset + i + k * 13) % 300 for k in range(1 + i % 5)])
        for i in range(count)
    ]


@dataclass
class AbortOnce:
    """A schedule item that aborts the execution when its time comes, in the first execution only (as
    Bytewax's `TestingSource.ABORT`, for a source that keeps polling while it waits)."""

    triggered: bool = False


class _ScheduledPartition(StatefulSourcePartition):
    def __init__(self, schedule: list[tuple[float, Any]], resume: int | None, open_until: float) -> None:
        self.schedule = schedule
        self.position = resume or 0
        self.started = time.monotonic()
        self.open_until = open_until

    def next_batch(self) -> list:
        elapsed = time.monotonic() - self.started
        if self.position >= len(self.schedule):
            if elapsed < self.open_until:
                return []
            raise StopIteration()
        batch: list[Any] = []
        while self.position < len(self.schedule) and self.schedule[self.position][0] <= elapsed:
            item = self.schedule[self.position][1]
            if isinstance(item, AbortOnce):
                if batch:
                    break  # what came before it goes out first; the abort on the next poll
                self.position += 1
                if not item.triggered:
                    item.triggered = True
                    raise AbortExecution()
                continue
            batch.append(item)
            self.position += 1
        return batch

    def next_awake(self) -> datetime:
        # Poll often: Bytewax 0.21 may not wake one input at its own time while another input sleeps.
        return datetime.now(timezone.utc) + timedelta(milliseconds=10)

    def snapshot(self) -> int:
        return self.position


class ScheduledSource(FixedPartitionedSource):
    """Emits each item at its time (seconds after start); `at(t, items)` builds the schedule.

    With `open_until`, the input stays open (empty) until that time, as a tailed topic would.
    """

    def __init__(self, schedule: list[tuple[float, Any]], open_until: float = 0.0) -> None:
        self.schedule = schedule
        self.open_until = open_until

    def list_parts(self) -> list[str]:
        return ["scheduled"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ScheduledPartition:
        return _ScheduledPartition(self.schedule, resume_state, self.open_until)


class _GatedPartition(StatelessSourcePartition[Any]):
    def __init__(self, steps: list[tuple[threading.Event, list[Any]]]) -> None:
        self.steps = list(steps)

    def next_batch(self) -> list[Any]:
        if not self.steps:
            raise StopIteration()
        gate, items = self.steps[0]
        if not gate.is_set():
            time.sleep(0.01)
            return []
        self.steps.pop(0)
        return items


class GatedSource(DynamicSource[Any]):
    """Emits each list of messages once its gate is set, so a test can act between them."""

    def __init__(self, steps: list[tuple[threading.Event, list[Any]]]) -> None:
        self.steps = steps

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GatedPartition:
        return _GatedPartition(self.steps)


def assert_same_scores(left: list[tuple], right: list[tuple], atol: float = 1e-5) -> None:
    """Equal lists of (..., probabilities, ...) tuples, probabilities (a tuple of floats) within `atol`.

    One model call over a different micro-batch can differ in the last float bits, so scores of the same
    record from different worker layouts are compared with a tolerance, not rounded (a rounding boundary
    splits equal scores).
    """
    assert len(left) == len(right)
    for one, other in zip(sorted(left), sorted(right)):
        assert len(one) == len(other)
        for mine, theirs in zip(one, other):
            if isinstance(mine, tuple) and mine and isinstance(mine[0], float):
                assert len(mine) == len(theirs) and all(abs(a - b) <= atol for a, b in zip(mine, theirs)), (
                    one,
                    other,
                )
            else:
                assert mine == theirs, (one, other)


def at(seconds: float, items: list) -> list[tuple[float, Any]]:
    return [(seconds, item) for item in items]


@dataclass
class FlowRun:
    results: list[ScoredMessage] = field(default_factory=list)
    events: list[ModelEvent] = field(default_factory=list)
    reports: list[ChallengerReport] = field(default_factory=list)
    explanations: list[ExplanationMessage] = field(default_factory=list)
    context: ServingContext = field(default_factory=ServingContext.create)

    def by_model(self) -> dict[str, list[ScoredMessage]]:
        grouped: dict[str, list[ScoredMessage]] = {}
        for item in self.results:
            grouped.setdefault(item.result.metadata.model_name, []).append(item)
        return grouped

    def errors(self) -> list[str]:
        return [item.result.metadata.errors for item in self.results if item.result.metadata.errors]


def as_batches(step_id: str, stream: Stream[Any]) -> Stream[list[DataMessage]]:
    """Records as `serve` takes them, in batches: a test source's item (a record, or a list) as one batch."""
    return op.map(step_id, stream, lambda item: item if isinstance(item, list) else [item])


def unbatched(step_id: str, results: Stream[Sequence[ScoredMessage]]) -> Stream[ScoredMessage]:
    """The flow's result batches as single results, for a sink that collects them."""
    return op.flat_map(step_id, results, lambda batch: batch)


def serve_into(
    run: FlowRun,
    data: Any,
    models: Any,
    shards: int = 4,
    hold_limit: int = 1000,
    drift: DriftSettings | None = None,
    challengers: ChallengerSettings | None = None,
    rollback: RollbackSettings | None = None,
    outliers: OutlierSettings | None = None,
    explain: ExplainSettings | None = None,
) -> Dataflow:
    """A flow serving `data` and `models` (Bytewax sources) into `run`'s results, events, reports and
    explanations."""
    flow = Dataflow("test")
    data_stream = as_batches("batches", op.input("data", flow, data))
    model_stream = op.input("models", flow, models)
    streams = serve(
        "serve",
        data_stream,
        model_stream,
        run.context,
        shards=shards,
        hold_limit=hold_limit,
        drift=drift,
        challengers=challengers,
        rollback=rollback,
        outliers=outliers,
        explain=explain,
    )
    op.output("results", unbatched("unbatched", streams.results), TestingSink(run.results))
    explained = op.flat_map("explained", streams.explanations, lambda batch: batch)
    op.output("explanations", explained, TestingSink(run.explanations))
    op.output("events", streams.events, TestingSink(run.events))
    op.output("reports", streams.reports, TestingSink(run.reports))
    return flow


def build_core_flow(data: Schedule, models: Schedule, run: FlowRun, **options: Any) -> Dataflow:
    return serve_into(run, ScheduledSource(data), ScheduledSource(models), **options)


def run_in_thread(flow: Dataflow) -> threading.Thread:
    """Run `flow` with one worker in a daemon thread, so the test can act while it runs."""
    thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    thread.start()
    return thread


def run_core(
    data: Schedule, models: Schedule, workers: int = 1, context: ServingContext | None = None, **options
) -> FlowRun:
    """Run the serving core on scheduled inputs with 1 or more workers in this process (with a fresh
    context unless `context` is given)."""
    run = FlowRun(context=context or ServingContext.create())
    flow = build_core_flow(data, models, run, **options)
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(milliseconds=100))
    else:
        cluster_main(flow, [], 0, epoch_interval=timedelta(milliseconds=100), worker_count_per_proc=workers)
    return run


# --- runs in turns: each step waits for an event, not for a wall-clock window -------------------------------


class _TurnPartition(StatefulSourcePartition):
    def __init__(self, steps: list[tuple[threading.Event, list[Any]]], resume: int | None) -> None:
        self.steps = steps
        self.position = resume or 0

    def next_batch(self) -> list:
        if self.position >= len(self.steps):
            raise StopIteration()
        gate, items = self.steps[self.position]
        if not gate.is_set():
            return []
        self.position += 1
        return list(items)

    def next_awake(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(milliseconds=10)

    def snapshot(self) -> int:
        return self.position


class TurnSource(FixedPartitionedSource):
    """Emits each step's items once its gate is set; one partition, so any number of workers emit them
    once."""

    def __init__(self, steps: list[tuple[threading.Event, list[Any]]]) -> None:
        self.steps = steps

    def list_parts(self) -> list[str]:
        return ["turns"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TurnPartition:
        return _TurnPartition(self.steps, resume_state)


@dataclass
class Turn:
    """Model messages, then, once `ready(run)` holds, records: a step of a run in turns."""

    models: list[Any]
    records: list[Any]
    ready: Any  # Callable[[FlowRun], bool]


def every_shard(kind: str, model_name: str, shards: int) -> Any:
    """A `Turn.ready`: every shard has reported `kind` (swapped, challenging, ...) for `model_name`."""

    def ready(run: FlowRun) -> bool:
        events = list(run.events)
        return (
            len({e.shard for e in events if e.kind == kind and e.model_name == model_name and e.shard})
            >= shards
        )

    return ready


def run_in_turns(
    turns: list[Turn],
    workers: int = 1,
    context: ServingContext | None = None,
    timeout: float = 120,
    **options: Any,
) -> FlowRun:
    """Run the serving core turn by turn: a turn's models go in, its records follow once the run shows the
    turn's event (every shard serving the model, say), and the next turn starts once they are all answered.
    What a test asserts then depends on events and counts, not on how fast a loaded machine loads a model."""
    run = FlowRun(context=context or ServingContext.create())
    model_steps = [(threading.Event(), turn.models) for turn in turns]
    data_steps = [(threading.Event(), turn.records) for turn in turns]
    flow = serve_into(run, TurnSource(data_steps), TurnSource(model_steps), **options)
    target: Callable[..., None]
    args: tuple[Any, ...]
    if workers == 1:
        target, args = run_main, (flow,)
    else:
        target, args = cluster_main, (flow, [], 0)
    kwargs: dict[str, Any] = {"epoch_interval": timedelta(milliseconds=100)}
    if workers > 1:
        kwargs["worker_count_per_proc"] = workers
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    answered = 0
    for index, turn in enumerate(turns):
        model_steps[index][0].set()
        _wait(lambda ready=turn.ready: ready(run), f"turn {index}'s event", timeout)
        data_steps[index][0].set()
        answered += sum(len(item) if isinstance(item, list) else 1 for item in turn.records)
        _wait(lambda count=answered: len(run.results) >= count, f"turn {index}'s {answered} results", timeout)
    thread.join(timeout)
    assert not thread.is_alive(), "the run did not end after its last turn"
    return run


def _wait(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def holder_judging_by(
    policy: AdmissionPolicy, wait_for_catch_up: bool, resume: HolderState | None
) -> ModelHolderLogic:
    """A model holder that judges and loads by `policy`, with a cache of its own."""
    return ModelHolderLogic(ScorerCache(policy), policy, wait_for_catch_up, resume)


def generated_blocks(seed: int, blocks: range, shifted: bool = False) -> list[RecommenderRecord]:
    """The generator's records of `blocks` (shifted to the popular range with `shifted`)."""
    return list(chain.from_iterable(generate_block(seed, 0, block, shifted) for block in blocks))


@dataclass
class JudgedRun:
    """What a run of `judged_beside_a_champion` gave: every result, and the events."""

    results: list[ScoredMessage]
    events: list[ModelEvent]

    def rejected(self) -> dict[str, str]:
        """The reason of each model rejected, by name."""
        return {event.model_name: event.reason for event in self.events if event.kind == "rejected"}


def judged_beside_a_champion(
    champion: Any, judged: list[Any], records: list[RecommenderRecord], timeout: float = 300
) -> JudgedRun:
    """The serving core on 4 shards: `champion` first, then, once it is accepted, the `judged` models, while
    `records` arrive one every 10 ms from 0.3 s on; what came out once the flow ended."""
    data = [(0.3 + index * 0.01, message) for index, message in enumerate(messages(records))]
    flow = Dataflow("judged-beside-a-champion")
    now, champion_accepted = threading.Event(), threading.Event()
    now.set()
    streams = serve(
        "serve",
        as_batches("batches", op.input("data", flow, ScheduledSource(data))),
        # The judged models follow once the champion is accepted, however long that takes here.
        op.input("models", flow, TurnSource([(now, [champion]), (champion_accepted, judged)])),
        ServingContext.create(cache=ScorerCache(AdmissionPolicy())),
        shards=4,
        hold_limit=1000,
    )
    results: list[Sequence[ScoredMessage]] = []
    events: list[ModelEvent] = []
    op.output("results", streams.results, TestingSink(results))
    op.output("events", streams.events, TestingSink(events))
    flow_thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    flow_thread.start()
    _wait(
        lambda: any(e.kind == "accepted" and e.model_name == champion.model_name for e in list(events)),
        "the champion accepted",
        timeout,
    )
    champion_accepted.set()
    flow_thread.join(timeout)
    assert not flow_thread.is_alive(), "the flow did not end"
    return JudgedRun([item for batch in results for item in batch], events)
