"""Benchmarks of the serving flow: `python -m flows.bench --scenario SCENARIO --records N [--rate R]`.

Prints, as its last line, one JSON object: scenario, records, seconds, records_per_s, p50_ms, p99_ms, plus
the run's parameters. Scenarios:
- embedded: the dataflow in this process on generated records; latency from the moment the source emitted
  a record to the moment its result reached the sink.
- tfserving-grpc, tfserving-rest, v2-grpc, v2-rest: as embedded, but scoring with a model server on
  this machine (the TensorFlow Serving stand-in from tests/, or Seldon MLServer) over gRPC or REST; the
  line adds the per-request latency (call_p50_ms, call_p99_ms) and the number of requests.
  tfserving-grpcs and tfserving-https: the same stand-in over TLS, with a throwaway CA (needs trustme).
- swap: as embedded at an offered --rate, with v1 serving and v2 published --swap-after seconds in; the
  line adds the largest gap between consecutive results (largest_gap_ms, and within the swap:
  swap_gap_ms) and the time from v2's arrival to the first record it scored (swap_ms).
- kafka-embedded: through a Kafka-protocol broker (started locally unless --bootstrap-servers names one);
  latency from the data message's produce timestamp to the result message's.
The model is loaded before the clock starts, so the figures are steady-state scoring, not TensorFlow's
start-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import timedelta
from typing import TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from flows import shutdown
from flows.admission.policy import AdmissionPolicy
from flows.app import build_flow
from flows.avro import MODEL, RECORD
from flows.dataflow import serve
from flows.generators import DataGenerator, ModelGenerator, generated_records, shipped_model
from flows.kafka import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TIMESTAMP_HEADER
from flows.records import ModelDescriptor, ModelEvent, ModelType, ScoredMessage
from flows.scorers import Scorer, ScorerCache, build_scorer
from flows.scorers.cache import SCORERS
from flows.scorers.location import TLS_SCHEMES
from flows.settings import Settings
from flows.telemetry import TELEMETRY
from flows.testing.local_broker import (
    LOCAL_BROKER_CONSUMER_CONFIG,
    consume_all,
    create_topics,
    kafka_broker,
    produce,
)
from flows.testing.local_servers import mlserver, tfserving_double
from flows.testing.loopback import free_port

SCENARIOS = (
    "embedded", "kafka-embedded", "swap",
    "tfserving-grpc", "tfserving-rest", "v2-grpc", "v2-rest", "tfserving-grpcs", "tfserving-https",
)  # fmt: skip
REMOTE_SCENARIOS = SCENARIOS[3:]
T = TypeVar("T")


class _LatencyPartition(StatelessSinkPartition[ScoredMessage]):
    def __init__(self, latencies: list[int], errors: list[str]) -> None:
        self.latencies = latencies
        self.errors = errors

    def write_batch(self, items: list[ScoredMessage]) -> None:
        now = time.time_ns()
        self.latencies.extend(now - item.entered_ns for item in items)
        self.errors.extend(item.result.metadata.errors for item in items if item.result.metadata.errors)


class LatencySink(DynamicSink[ScoredMessage]):
    """Collects each result's latency (ns) and any error, in this process."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.errors: list[str] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LatencyPartition:
        return _LatencyPartition(self.latencies, self.errors)


class TimedScorer:
    """Wraps a scorer to record how long each call (for a remote scorer: each request) takes."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.source = inner.source
        self.call_ms: list[float] = []

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.score(users, products)
        finally:
            self.call_ms.append((time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.inner.close()


def run_in_process(
    scenario: str,
    model: ModelDescriptor,
    records: int,
    rate: float,
    workers: int,
    shards: int,
    batch: int,
    tracing: bool = False,
) -> dict:
    """The dataflow in this process on generated records, scoring with `model` (embedded or remote).

    With `tracing`, every span is sampled and exported over OTLP/gRPC to a receiver, as to a collector.
    """
    with _exported_spans() if tracing else nullcontext() as receiver:
        result = _measure(scenario, model, records, rate, workers, shards, batch)
    return result | {"tracing": f"on: {receiver.spans} spans exported over OTLP/gRPC" if receiver else "off"}


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
def _exported_spans() -> Iterator[_ReceiverProcess]:
    """Tracing on, every span exported to a receiver process; the receiver's count is ready on exit."""
    receiver = _ReceiverProcess()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True))
    )
    TELEMETRY.install(provider, None)
    try:
        yield receiver
    finally:
        provider.shutdown()  # exports what is left before the receiver stops
        TELEMETRY.uninstall()
        receiver.close()


def _measure(
    scenario: str, model: ModelDescriptor, records: int, rate: float, workers: int, shards: int, batch: int
) -> dict:
    settings = Settings()
    timed: list[TimedScorer] = []

    def build_timed(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> TimedScorer:
        timed.append(TimedScorer(build_scorer(descriptor, policy)))
        return timed[-1]

    cache = ScorerCache(build=build_timed)
    cache.acquire(model)  # Load (and warm up) before timing; the flow then shares this scorer.
    timed[0].score(np.ones(1, np.float32), np.ones(1, np.float32))
    timed[0].call_ms.clear()
    flow = Dataflow("bench")
    data = op.input(
        "data", flow, DataGenerator(records, rate, partitions=workers, batch=batch, seed=settings.seed)
    )
    models = op.input("models", flow, ModelGenerator([model], interval=3600, count=1))
    streams = serve("serve", data, models, shards=shards, hold_limit=records, cache=cache)
    sink = LatencySink()
    op.output("latency", streams.results, sink)
    started = time.perf_counter()
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(seconds=1))
    else:
        cluster_main(flow, [], 0, epoch_interval=timedelta(seconds=1), worker_count_per_proc=workers)
    seconds = time.perf_counter() - started
    if len(sink.latencies) != records:
        raise SystemExit(f"bench: expected {records} results, got {len(sink.latencies)}")
    calls = np.asarray(timed[0].call_ms)
    return _report(
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
        source=timed[0].source,
    )


class _SwapSink(DynamicSink[ScoredMessage]):
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

        class _Partition(StatelessSinkPartition[ScoredMessage]):
            def write_batch(self, items: list[ScoredMessage]) -> None:
                now = time.time()
                for item in items:
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


def run_swap(records: int, rate: float, swap_after: float, shards: int, batch: int) -> dict:
    """v1 serving, v2 published `swap_after` seconds in while records arrive at `rate`: gaps and swap time.

    v1 is loaded before the clock starts; v2 is unpacked, inspected, loaded and probed by the flow
    while it runs, which is what this measures.
    """
    if rate <= 0:
        raise SystemExit("bench: the swap scenario needs an offered --rate")
    settings = Settings()
    v1, v2 = (shipped_model(settings.models_dir, version) for version in ("1", "2"))
    cache = ScorerCache()
    cache.acquire(v1)
    flow = Dataflow("bench-swap")
    data = op.input("data", flow, DataGenerator(records, rate, partitions=1, batch=batch, seed=settings.seed))
    models = ModelGenerator([v1, v2], interval=swap_after, count=2, open_for=records / rate)
    streams = serve(
        "serve", data, op.input("models", flow, models), shards=shards, hold_limit=records, cache=cache
    )
    results, events = _SwapSink(v2.model_name), ArrivalSink[ModelEvent]()
    op.output("results", streams.results, results)
    op.output("events", streams.events, events)
    started = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1))
    seconds = time.perf_counter() - started

    if len(results.arrived) != records:
        raise SystemExit(f"bench: expected {records} results, got {len(results.arrived)}")
    accepted = [(t, e) for t, e in events.arrivals if e.kind == "accepted" and e.model_name == v2.model_name]
    if not accepted:
        raise SystemExit(f"bench: {v2.model_name} was never accepted: {[str(e) for _, e in events.arrivals]}")
    accepted_at, event = accepted[0]
    published_at = accepted_at - event.arrival_ms / 1000  # when v2 reached the flow
    times = np.asarray(results.arrived)
    by_v2 = times[np.asarray(results.by_new_model)]
    gaps = np.diff(times) * 1000
    window = (times[1:] >= published_at) & (times[:-1] <= by_v2[0] + 0.5) if len(by_v2) else np.zeros(0, bool)
    shard_ms = [
        e.arrival_ms for _, e in events.arrivals if e.kind == "swapped" and e.model_name == v2.model_name
    ]
    return _report(
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


def _report(
    scenario: str, records: int, offered: float | str, seconds: float, latencies_ms, **details
) -> dict:
    """The JSON line every scenario prints: the common figures first, then the scenario's own details."""
    latencies = np.asarray(latencies_ms, dtype=float)
    return {
        "scenario": scenario,
        "records": records,
        "offered_rate": offered,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        **details,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
    }


def run_kafka_embedded(
    records: int, rate: float, bootstrap: str | None, partitions: int, version: str
) -> dict:
    """Through a broker: data topic -> flow (in this process) -> results topic.

    Without `rate` the data topic is filled first and the flow reads it to the end; with `rate` a producer
    thread offers that many records/s while the flow runs. Latency: the result message's timestamp minus
    the data message's (both set when produced), so it includes the time in Kafka on both sides.
    """
    settings = Settings()
    model = shipped_model(settings.models_dir, version)
    SCORERS.acquire(model)
    with ExitStack() as stack:
        servers = bootstrap or stack.enter_context(kafka_broker())
        topics = create_topics(servers, "bench", ["data", "models", "results", "dead"], partitions=partitions)
        produce(servers, topics["models"], [(model.model_name.encode(), MODEL.encode(model))])
        encoded = [
            (str(r.user).encode(), RECORD.encode(r)) for r in generated_records(settings.seed, records)
        ]
        flow_settings = Settings(
            kafka_bootstrap_servers=servers,
            kafka_data_topic=topics["data"],
            kafka_models_topic=topics["models"],
            kafka_results_topic=topics["results"],
            kafka_dead_letters_topic=topics["dead"],
            kafka_tail=rate > 0,
            kafka_consumer_config={**LOCAL_BROKER_CONSUMER_CONFIG, **settings.kafka_consumer_config},
            console_every=0,
            shards=settings.shards,
        )
        flow = build_flow(flow_settings)
        clock: dict[str, float] = {}
        if rate > 0:
            feeder = threading.Thread(
                target=_offer, args=(servers, topics, encoded, rate, clock), daemon=True
            )
            feeder.start()
        else:
            produce(servers, topics["data"], encoded)
            clock["started"] = time.perf_counter()
        run_main(flow, epoch_interval=timedelta(seconds=1))
        seconds = time.perf_counter() - clock["started"]
        expected = records + (1 if rate > 0 else 0)
        results = consume_all(servers, topics["results"], expected)
    if len(results) < expected:
        raise SystemExit(f"bench: expected {expected} results, got {len(results)}")
    latencies = []
    for message in results:
        headers = dict(message.headers())
        warm_up = (
            rate > 0 and headers[SOURCE_PARTITION_HEADER] == b"0" and headers[SOURCE_OFFSET_HEADER] == b"0"
        )
        if not warm_up:
            latencies.append(message.timestamp()[1] - int(headers[SOURCE_TIMESTAMP_HEADER]))
    return _report(
        "kafka-embedded",
        records,
        rate or "pre-loaded",
        seconds,
        latencies,
        partitions=partitions,
        broker="external" if bootstrap else "noida-db (local)",
    )


def _offer(servers: str, topics: dict[str, str], encoded: list, rate: float, clock: dict[str, float]) -> None:
    """Produce `encoded` at `rate` records/s, then ask the flow to stop once every result is out.

    One warm-up record (partition 0, offset 0) goes first, and the offered load starts only when its result
    is out: records offered while the flow is still starting would measure the start-up, not the serving.
    """
    producer = Producer({"bootstrap.servers": servers, "linger.ms": "1"})
    producer.produce(topics["data"], key=encoded[0][0], value=encoded[0][1], partition=0)
    producer.flush(30)
    consume_all(servers, topics["results"], 1, timeout=120)
    clock["started"] = time.perf_counter()
    started = time.monotonic()
    for position, (key, value) in enumerate(encoded):
        delay = started + position / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topics["data"], key=key, value=value)
        producer.poll(0)
    producer.flush(60)
    consume_all(servers, topics["results"], len(encoded) + 1, timeout=120)
    shutdown.request()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="embedded")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument(
        "--rate", type=float, default=0, help="offered records/s (default: as fast as possible)"
    )
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers in this process")
    parser.add_argument("--shards", type=int, default=Settings().shards)
    parser.add_argument("--batch", type=int, default=1000, help="records per source batch")
    parser.add_argument("--model-version", default="1")
    parser.add_argument(
        "--tracing",
        choices=["off", "on"],
        default="off",
        help="in-process scenarios: export every span over OTLP",
    )
    parser.add_argument(
        "--bootstrap-servers", help="kafka scenarios: use this broker instead of starting one"
    )
    parser.add_argument("--partitions", type=int, default=1, help="kafka scenarios: data topic partitions")
    parser.add_argument(
        "--swap-after", type=float, default=2.0, help="swap scenario: seconds before v2 is published"
    )
    args = parser.parse_args()
    in_process = (args.records, args.rate, args.workers, args.shards, args.batch, args.tracing == "on")
    if args.scenario == "embedded":
        model = shipped_model(Settings().models_dir, args.model_version)
        result = run_in_process(args.scenario, model, *in_process)
    elif args.scenario == "swap":
        result = run_swap(args.records, args.rate, args.swap_after, args.shards, args.batch)
    elif args.scenario in REMOTE_SCENARIOS:
        with ExitStack() as stack:
            model = remote_model(args.scenario, args.model_version, stack)
            result = run_in_process(args.scenario, model, *in_process)
    else:
        result = run_kafka_embedded(
            args.records, args.rate, args.bootstrap_servers, args.partitions, args.model_version
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
