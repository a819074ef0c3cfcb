"""Scenarios that run the dataflow in this process on generated records: embedded, remote model servers,
swap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from datetime import timedelta
from typing import cast

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import StatefulSourcePartition
from bytewax.testing import cluster_main, run_main
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from flows.adapters.scorers import Scorer, ScorerCache, build_scorer
from flows.adapters.scorers.location import TLS_SCHEMES
from flows.adapters.sources.batched import PollBatches
from flows.adapters.sources.generators import DataGenerator, ModelGenerator, shipped_model
from flows.adapters.sources.wrapping import PartitionWrapper, SourceWrapper
from flows.bench.call_cost import resident_mb
from flows.bench.report import report
from flows.bench.sinks import ArrivalSink, ExplanationCounter, LatencySink, SwapSink
from flows.core.admission.policy import AdmissionPolicy
from flows.core.context import ServingContext
from flows.core.dataflow import serve
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.events import ModelEvent
from flows.core.records import DataMessage
from flows.core.telemetry import Telemetry
from flows.core.vocabulary import EventKind
from flows.runtime.app import freeze_what_start_built
from flows.runtime.settings import Settings
from flows.testing.local_servers import mlserver, tfserving_double
from flows.testing.loopback import free_port


class TimedScorer:
    """Wraps a scorer to record how long each call (for a remote scorer: each request) takes."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.source = inner.source
        self.input_bounds = inner.input_bounds
        self.embeddings = getattr(inner, "embeddings", None)  # for explanations' neighbours
        self.call_ms: list[float] = []

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.score(users, products)
        finally:
            self.call_ms.append((time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.inner.close()


UNSCORABLE_USER = 2**63 - 1  # the largest Avro long: past any model's users, and not exact in float32


class _UnscorablePartition(PartitionWrapper):
    """`inner`'s records, every `every`-th of them with the user UNSCORABLE_USER."""

    def __init__(self, inner: StatefulSourcePartition, every: int) -> None:
        super().__init__(inner)
        self.every = every
        self.emitted = 0

    def next_batch(self) -> list[DataMessage]:
        # A DataGenerator's partition (`UnscorableRecords`): its batches are lists, changed here in place.
        messages = cast(list[DataMessage], self.inner.next_batch())
        for index in range(-(self.emitted + 1) % self.every, len(messages), self.every):
            message = messages[index]
            messages[index] = replace(message, record=replace(message.record, user=UNSCORABLE_USER))
        self.emitted += len(messages)
        return messages


class UnscorableRecords(SourceWrapper):
    """`inner`, with one record in `every` that no model can score: what one bad record in a poll costs."""

    def __init__(self, inner: DataGenerator, every: int) -> None:
        super().__init__(inner)
        self.every = every

    def wrap(self, partition: StatefulSourcePartition) -> _UnscorablePartition:
        return _UnscorablePartition(partition, self.every)


def run_in_process(
    scenario: str,
    model: ModelDescriptor,
    records: int,
    rate: float,
    workers: int,
    shards: int,
    batch: int,
    tracing: bool = False,
    drift: bool = True,
    challenger: ModelDescriptor | None = None,
    bad_every: int = 0,
    outliers: bool = True,
    explain: bool = True,
) -> dict:
    """The dataflow in this process on generated records, scoring with `model` (embedded or remote).

    With `tracing`, every span is sampled and exported over OTLP/gRPC to a receiver, as to a collector.
    With `drift`, the flow monitors drift as the main job does by default (`flows.core.drift`); with
    `outliers`, it scores records as outliers as the main job does by default (`flows.core.outliers`); with
    `explain`, it explains a fraction of them, as the main job does (`flows.core.explanations`: the model's
    call times then include the explanation calls, whose own time the report gives apart). With
    `challenger`, that model runs beside `model` as its descriptor says (`flows.core.challenger`). With
    `bad_every`, one record in that many has a user no model can take (`UnscorableRecords`).
    """
    timed: list[TimedScorer] = []
    context = ServingContext.create(cache=ScorerCache(build=_timed_scorers(timed)))
    with _exported_spans(context.telemetry) if tracing else nullcontext() as receiver:
        result = _measure(
            scenario, model, records, rate, workers, shards, batch, context, timed, drift, challenger,
            bad_every, outliers, explain,
        )  # fmt: skip
    tracing_line = f"on: {receiver.spans} spans exported over OTLP/gRPC" if receiver else "off"
    experiment = challenger.experiment() if challenger else "off"
    return result | {
        "tracing": tracing_line,
        "drift": "on" if drift else "off",
        "outliers": "on" if outliers else "off",
        "explain": "on" if explain else "off",
        "challenger": experiment,
        "bad_every": bad_every,
    }


class _ReceiverProcess:
    """The OTLP receiver of flows.testing in a process of its own, as a collector would be."""

    def __init__(self) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "flows.testing.otlp_receiver", "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        if self.process.stdout is None or self.process.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the OTLP receiver did not start")
        self.spans = 0

    def close(self) -> None:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        self.spans = json.loads(output.strip().splitlines()[-1])["spans"]


@contextmanager
def _exported_spans(telemetry: Telemetry) -> Iterator[_ReceiverProcess]:
    """Tracing on `telemetry`, every span exported to a receiver process; the receiver's count is ready on
    exit."""
    receiver = _ReceiverProcess()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True))
    )
    telemetry.install(provider, None)
    try:
        yield receiver
    finally:
        provider.shutdown()  # exports what is left before the receiver stops
        telemetry.uninstall()
        receiver.close()


def _timed_scorers(timed: list[TimedScorer]) -> Callable[[ModelDescriptor, AdmissionPolicy], TimedScorer]:
    """A scorer factory that wraps every scorer it builds in a TimedScorer, appended to `timed`."""

    def build_timed(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> TimedScorer:
        timed.append(TimedScorer(build_scorer(descriptor, policy)))
        return timed[-1]

    return build_timed


def _measure(
    scenario: str,
    model: ModelDescriptor,
    records: int,
    rate: float,
    workers: int,
    shards: int,
    batch: int,
    context: ServingContext,
    timed: list[TimedScorer],
    drift_on: bool,
    challenger: ModelDescriptor | None,
    bad_every: int,
    outliers_on: bool,
    explain_on: bool,
) -> dict:
    settings = Settings.from_environment()
    served = [model, challenger] if challenger else [model]
    for index, descriptor in enumerate(served):
        context.cache.acquire(descriptor)  # Load (and warm up) before timing; the flow then shares it.
        timed[index].score(np.ones(1, np.float32), np.ones(1, np.float32))
        timed[index].call_ms.clear()
    memory = resident_mb()  # after the models' load and warm-up
    freeze_what_start_built()  # as the main job does, or this would measure the garbage collector's rescans
    flow = Dataflow("bench")
    generator = DataGenerator(records, rate, partitions=workers, batch=batch, seed=settings.generator.seed)
    data = op.input(
        "data", flow, PollBatches(UnscorableRecords(generator, bad_every) if bad_every else generator)
    )
    models = op.input("models", flow, ModelGenerator(served, interval=0.0, count=len(served)))
    drift = settings.drift if drift_on else None
    outliers = settings.outliers if outliers_on else None
    explain = settings.explain if explain_on else None
    streams = serve(
        "serve",
        data,
        models,
        context,
        shards=shards,
        hold_limit=records,
        drift=drift,
        outliers=outliers,
        explain=explain,
    )
    sink = LatencySink()
    op.output("latency", streams.results, sink)
    explained = ExplanationCounter()
    op.output("explanations", streams.explanations, explained)
    started, cpu_started = time.perf_counter(), time.process_time()
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(seconds=1))
    else:
        cluster_main(flow, [], 0, epoch_interval=timedelta(seconds=1), worker_count_per_proc=workers)
    seconds = time.perf_counter() - started
    # CPU time of every thread of this process: what the flow did, less sensitive than the wall clock to
    # what else the machine runs meanwhile (with a rate, it includes the waiting between batches).
    cpu_us_per_record = (time.process_time() - cpu_started) * 1e6 / records
    if len(sink.latencies) != records:
        raise SystemExit(f"bench: expected {records} results, got {len(sink.latencies)}")
    calls = np.asarray(timed[0].call_ms)
    return report(
        scenario,
        records,
        rate or "unthrottled",
        seconds,
        np.asarray(sink.latencies) / 1e6,
        errors=len(sink.errors),
        workers=workers,
        shards=shards,
        source_batch=batch,
        model_calls=len(calls),
        call_p50_ms=round(float(np.percentile(calls, 50)), 2),
        call_p99_ms=round(float(np.percentile(calls, 99)), 2),
        model_ms_per_record=round(float(calls.sum()) / records, 5),
        **(_challenger_calls(timed[1], records) if challenger else {}),
        cpu_us_per_record=round(cpu_us_per_record, 3),
        explained=explained.explained,
        explain_calls=len(explained.calls),
        explain_ms_per_explained=(
            round(explained.call_ms / explained.explained, 4) if explained.explained else None
        ),
        source=timed[0].source,
        rss_mb=memory,
    )


def _challenger_calls(timed: TimedScorer, records: int) -> dict:
    calls = np.asarray(timed.call_ms)
    return {
        "challenger_calls": len(calls),
        "challenger_call_p50_ms": round(float(np.percentile(calls, 50)), 2) if len(calls) else None,
        "challenger_ms_per_record": round(float(calls.sum()) / records, 5),
    }


def run_swap(records: int, rate: float, swap_after: float, shards: int, batch: int) -> dict:
    """v1 serving, v2 published `swap_after` seconds in while records arrive at `rate`: gaps and swap time.

    v1 is loaded before the clock starts; v2 is unpacked, inspected, loaded and probed by the flow
    while it runs, which is what this measures.
    """
    if rate <= 0:
        raise SystemExit("bench: the swap scenario needs an offered --rate")
    settings = Settings.from_environment()
    v1, v2 = (shipped_model(settings.generator.models_dir, version) for version in ("1", "2"))
    context = ServingContext.create()
    context.cache.acquire(v1)
    flow = Dataflow("bench-swap")
    generator = DataGenerator(records, rate, partitions=1, batch=batch, seed=settings.generator.seed)
    data = op.input("data", flow, PollBatches(generator))
    models = ModelGenerator([v1, v2], interval=swap_after, count=2, open_for=records / rate)
    model_stream = op.input("models", flow, models)  # typed as its source: serve() takes any HolderInput
    streams = serve("serve", data, model_stream, context, shards=shards, hold_limit=records)
    results, events = SwapSink(v2.model_name), ArrivalSink[ModelEvent]()
    op.output("results", streams.results, results)
    op.output("events", streams.events, events)
    started = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1))
    seconds = time.perf_counter() - started

    if len(results.arrived) != records:
        raise SystemExit(f"bench: expected {records} results, got {len(results.arrived)}")
    accepted = [
        (t, e) for t, e in events.arrivals if e.kind == EventKind.ACCEPTED and e.model_name == v2.model_name
    ]
    if not accepted:
        raise SystemExit(f"bench: {v2.model_name} was never accepted: {[str(e) for _, e in events.arrivals]}")
    accepted_at, event = accepted[0]
    published_at = accepted_at - event.arrival_ms / 1000  # when v2 reached the flow
    times = np.asarray(results.arrived)
    by_v2 = times[np.asarray(results.by_new_model)]
    gaps = np.diff(times) * 1000
    window = (times[1:] >= published_at) & (times[:-1] <= by_v2[0] + 0.5) if len(by_v2) else np.zeros(0, bool)
    shard_ms = [
        e.arrival_ms
        for _, e in events.arrivals
        if e.kind == EventKind.SWAPPED and e.model_name == v2.model_name
    ]
    return report(
        "swap",
        records,
        rate,
        seconds,
        results.latency_ms,
        errors=results.errors,
        largest_gap_ms=round(float(gaps.max()), 1),
        largest_gap_at_s=round(float(times[int(gaps.argmax())] - times[0]), 2),
        published_at_s=round(published_at - times[0], 2),
        swap_gap_ms=round(float(gaps[window].max()), 1) if window.any() else None,
        swap_ms=round((by_v2[0] - published_at) * 1000, 1) if len(by_v2) else None,
        v2_load_ms=round(event.load_ms, 1),
        all_shards_ms=round(max(shard_ms), 1) if shard_ms else None,
        scored_by_v2=len(by_v2),
        shards=shards,
        source_batch=batch,
    )


def remote_model(scenario: str, version: str, stack: ExitStack) -> ModelDescriptor:
    """Start the scenario's server (TensorFlow Serving stand-in or MLServer) and describe its model."""
    protocol, transport = scenario.rsplit("-", 1)
    scheme = {"grpc": "grpc", "rest": "http", "grpcs": "grpcs", "https": "https"}[transport]
    if protocol == "tfserving":
        server = stack.enter_context(tfserving_double(int(version), tls=scheme in TLS_SCHEMES))
        model_type = ModelType.TENSORFLOWSERVING
    else:
        server, model_type = stack.enter_context(mlserver(int(version))), ModelType.OPENINFERENCE
    location = server.location(scheme, f"ca={server.tls.ca}" if server.tls else "")
    return ModelDescriptor(f"recommender-v{version}", scenario, model_type, None, location)
