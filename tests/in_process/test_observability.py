"""Traces, metrics and /state: what an operator sees of a run with a model swap and a failing model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from support.bad_models import bad_models
from support.core_runs import (
    FlowRun,
    GatedSource,
    at,
    messages,
    run_core,
    run_in_thread,
    sample_records,
    serve_into,
)
from support.jobs import REPO, wait_for

from flows.adapters.kafka.source import KafkaOrigin
from flows.adapters.observability.state_server import start_state_server, state_document
from flows.adapters.sources.generators import generate_block
from flows.core.context import ServingContext
from flows.core.descriptors import CANARY, CHALLENGER
from flows.core.drift import DriftSettings
from flows.core.records import DataMessage, RecommenderRecord
from flows.testing.loopback import free_port
from flows.testing.otlp_receiver import otlp_receiver
from flows.tools.query_state import fetch

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def telemetry():
    """A context whose telemetry records spans and metrics in memory."""
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    context = ServingContext.create()
    context.telemetry.install(tracer_provider, MeterProvider(metric_readers=[metrics]))
    return context, spans, metrics


def traced(records: list[RecommenderRecord]) -> list[DataMessage]:
    origin = KafkaOrigin("data", 0, 0, 0, (("traceparent", TRACEPARENT.encode()),))
    return [DataMessage(record, 0, origin) for record in records]


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    points: dict[str, list] = {}
    data = reader.get_metrics_data()
    assert data is not None  # None only when nothing was recorded
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_spans_and_metrics_of_a_run_with_a_swap_and_a_failing_model(telemetry, model_v1, model_v2, tmp_path):
    context, spans, metrics = telemetry
    rejected, reason = bad_models(model_v1, tmp_path)[0]
    records = sample_records(40)
    bad_record = RecommenderRecord(5, [100_000])  # fails to score: an error result
    data = at(0.3, traced(records)) + at(1.2, messages([*records, bad_record]))
    run = run_core(data, at(0, [model_v1]) + at(0.6, [rejected]) + at(0.9, [model_v2]), context=context)

    finished = spans.get_finished_spans()
    batches = [span for span in finished if span.name == "score batch"]
    by_model = Counter()
    for span in batches:
        by_model[span.attributes["model.name"]] += span.attributes["batch.records"]
        assert (
            span.attributes["shard"].startswith("shard-")
            and span.attributes["model.source"] == "embedded:savedmodel"
        )
    assert by_model == {model_v1.model_name: 40, model_v2.model_name: 41}
    linked = [span for span in batches if span.attributes["model.name"] == model_v1.model_name]
    assert all(link.context.trace_id == int(TRACE_ID, 16) for span in linked for link in span.links)
    assert all(span.links for span in linked)
    failed_batches = [span for span in batches if span.status.status_code == StatusCode.ERROR]
    assert len(failed_batches) == 1 and failed_batches[0].attributes["batch.errors"] == 1

    # Results carry their batch span's context onward.
    span_ids = {format(span.context.span_id, "016x") for span in batches}
    assert all(item.trace_context.split("-")[2] in span_ids for item in run.results)

    events = [span for span in finished if span.name.startswith("model ")]
    rejected_spans = [span for span in events if span.name == "model rejected"]
    assert len(rejected_spans) == 1 and rejected_spans[0].status.status_code == StatusCode.ERROR
    assert (
        reason in rejected_spans[0].status.description
        and rejected_spans[0].attributes["model.name"] == rejected.model_name
    )
    accepted = [span for span in events if span.name == "model accepted"]
    assert [span.attributes["model.name"] for span in accepted] == [model_v1.model_name, model_v2.model_name]
    assert (
        accepted[1].attributes["model.previous"] == model_v1.model_name
        and accepted[1].attributes["model.load_ms"] > 0
    )
    assert len([span for span in events if span.name == "model swapped"]) == 2 * 4  # two models, four shards

    points = metric_points(metrics)
    scored = Counter()
    for point in points["serving.records.scored"]:
        scored[point.attributes["model"]] += point.value
    assert scored == {model_v1.model_name: 40, model_v2.model_name: 40}
    assert sum(point.value for point in points["serving.records.errors"]) == 1
    assert sum(point.count for point in points["serving.batch.size"]) == len(batches)
    assert sum(point.count for point in points["serving.batch.duration"]) == len(batches)
    event_counts = Counter()
    for point in points["serving.model.events"]:
        event_counts[point.attributes["event"]] += point.value
    assert event_counts["rejected"] == 1 and event_counts["accepted"] == 2 and event_counts["swapped"] == 8
    current = {
        point.attributes["shard"]: point.attributes["model"] for point in points["serving.model.current"]
    }
    assert current == {f"shard-00{i}": model_v2.model_name for i in range(4)}


def test_drift_shows_on_the_metrics_and_on_the_state(telemetry, model_v1):
    context, _spans, metrics = telemetry
    plain = [record for block in range(12) for record in generate_block(5, 0, block)]
    shifted = [record for block in range(12, 20) for record in generate_block(5, 0, block, shifted=True)]
    data = at(0.5, [messages(plain[at_ : at_ + 200]) for at_ in range(0, len(plain), 200)])
    data += at(1.5, [messages(shifted[at_ : at_ + 200]) for at_ in range(0, len(shifted), 200)])
    run_core(
        data,
        at(0, [model_v1]),
        context=context,
        drift=DriftSettings(reference=2_000, window=1_000, threshold=0.2, sample=1_000),
    )
    psi = {
        (point.attributes["model"], point.attributes["feature"]): point.value
        for point in metric_points(metrics)["serving.drift.psi"]
    }
    assert psi[(model_v1.model_name, "product")] > 0.2 > psi[(model_v1.model_name, "user")]
    shown = state_document(context.state)["drift"][model_v1.model_name]
    assert shown["drifting"] and shown["windows"] >= 1 and shown["reference_taken"]


def test_a_challenger_shows_on_the_metrics_and_on_the_state(telemetry, model_v1, model_v2):
    context, spans, metrics = telemetry
    canary = replace(model_v2, role=CHALLENGER, mode=CANARY, fraction=0.4)
    records = [record for block in range(4) for record in generate_block(9, 0, block)]
    data = at(1.5, [messages(records[start : start + 128]) for start in range(0, len(records), 128)])
    run_core(data, at(0, [model_v1]) + at(0.5, [canary]), context=context)
    points = metric_points(metrics)
    [answered] = points["serving.challenger.challenger_records"]
    assert answered.attributes == {"challenger": model_v2.model_name, "champion": model_v1.model_name,
                                   "mode": CANARY}  # fmt: skip
    [shown] = state_document(context.state)["challengers"]
    assert shown["challenger_records"] == answered.value > 0 and shown["records"] == len(records)
    assert shown["closed_by"] == "ended" and shown["mode"] == CANARY and shown["fraction"] == 0.4
    # Both models' batches are spans; the records each answered are counted under its name.
    scored = Counter()
    for point in points["serving.records.scored"]:
        scored[point.attributes["model"]] += point.value
    assert scored[model_v2.model_name] == answered.value
    assert scored[model_v1.model_name] == len(records) - answered.value
    assert {
        span.attributes["model.name"] for span in spans.get_finished_spans() if span.name == "score batch"
    } == {
        model_v1.model_name
    }  # one span per micro-batch, named after the champion, whichever model answered a record


def test_off_means_no_spans_and_no_context(model_v1):
    run = run_core(at(0.3, traced(sample_records(10))), at(0, [model_v1]))
    assert len(run.results) == 10 and all(item.trace_context == "" for item in run.results)


def get_state(port: int) -> dict:
    return fetch(f"http://127.0.0.1:{port}/state", timeout_s=5)


def shards_serving(run: FlowRun, model_name: str) -> int:
    return sum(1 for event in run.events if event.kind == "swapped" and event.model_name == model_name)


def test_state_answers_during_a_run_and_matches_what_was_scored(model_v1, model_v2):
    port = free_port()
    run = FlowRun()
    server = start_state_server("127.0.0.1", port, run.context.state)
    first, second = sample_records(30), sample_records(20, 500)
    start, swap, more = threading.Event(), threading.Event(), threading.Event()
    data = GatedSource([(start, messages(first)), (more, messages(second))])
    flow = serve_into(run, data, GatedSource([(start, [model_v1]), (swap, [model_v2])]), hold_limit=100)
    flow_thread = run_in_thread(flow)
    try:
        start.set()
        wait_for(lambda: len(run.results) >= 30, "the first 30 results")
        during = get_state(port)
        swap.set()  # records sent with a model may still meet the previous one: send them once it is in
        wait_for(lambda: shards_serving(run, model_v2.model_name) == 4, "model v2 on the four shards")
        more.set()
        flow_thread.join(timeout=60)
        after = get_state(port)
    finally:
        server.shutdown()
    assert [(model["name"], model["usage"]) for model in during["models"]] == [(model_v1.model_name, 30)]
    v1 = during["models"][0]
    assert v1["description"] == model_v1.description and sorted(v1["shards"]) == [
        f"shard-00{i}" for i in range(4)
    ]
    assert v1["min"] <= v1["max"] and v1["average"] == pytest.approx(v1["duration"] / 30, rel=1e-3)
    assert [(model["name"], model["usage"]) for model in after["models"]] == [(model_v2.model_name, 20)]
    assert set(after["shards"].values()) == {model_v2.model_name}


def test_query_tool_prints_the_state_of_several_processes(model_v1):
    run = run_core(at(0.3, messages(sample_records(25))), at(0, [model_v1]))
    ports = [free_port(), free_port()]
    servers = [
        start_state_server("127.0.0.1", port, run.context.state) for port in ports
    ]  # two "processes" with the same shards
    try:
        urls = [f"http://127.0.0.1:{port}/state" for port in ports]
        done = subprocess.run(
            [sys.executable, "-m", "flows.tools.query_state", "--json", *urls],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        table = subprocess.run(
            [sys.executable, "-m", "flows.tools.query_state", *urls],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for server in servers:
            server.shutdown()
    merged = json.loads(done.stdout)
    assert [(model["name"], model["usage"], len(model["shards"])) for model in merged] == [
        (model_v1.model_name, 50, 8)
    ]
    assert model_v1.model_name in table.stdout and "50" in table.stdout


def test_query_tool_merges_the_challengers_of_several_processes(model_v1, model_v2):
    shadow = replace(model_v2, role=CHALLENGER, mode="shadow", fraction=1.0)
    records = [record for block in range(2) for record in generate_block(3, 0, block)]
    data = at(1.5, [messages(records[start : start + 64]) for start in range(0, len(records), 64)])
    run = run_core(data, at(0, [model_v1]) + at(0.5, [shadow]))
    [alone] = run.context.state.challengers()
    ports = [free_port(), free_port()]
    servers = [start_state_server("127.0.0.1", port, run.context.state) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}/state" for port in ports]
        query = [sys.executable, "-m", "flows.tools.query_state", "--challengers"]
        done = subprocess.run([*query, "--json", *urls], cwd=REPO, capture_output=True, text=True, check=True)
        table = subprocess.run([*query, *urls], cwd=REPO, capture_output=True, text=True, check=True)
    finally:
        for server in servers:
            server.shutdown()
    [merged] = json.loads(done.stdout)
    assert (merged["challenger"], merged["processes"]) == (model_v2.model_name, 2)
    assert merged["records"] == 2 * alone["records"] == 2 * len(records)  # two "processes", the same shards
    assert merged["top_k_agreement"] == pytest.approx(alone["top_k_agreement"])
    assert merged["mean_abs_diff"] == pytest.approx(alone["mean_abs_diff"])
    assert f"{model_v2.model_name} (shadow 1 of {model_v1.model_name})" in table.stdout


def test_the_main_job_exports_spans_over_otlp_grpc(tmp_path):
    with otlp_receiver() as receiver:
        env = {
            **os.environ,
            "SERVING_RECORDS": "2000",
            "SERVING_RECORD_RATE": "4000",
            "SERVING_CONSOLE_EVERY": "0",
            "SERVING_STATE_PORT": "0",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "serving-under-test",
            "SERVING_BYTEWAX_TRACING": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "300",  # the exit waits one export round; keep it short
        }
        done = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "flows.serving"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert receiver.service_names == {"serving-under-test"}
    batch_records = sum(span["records"] for span in receiver.spans if span["name"] == "score batch")
    assert batch_records == 2000
    ours = {"score batch", "model accepted", "model swapped"}
    names = {span["name"] for span in receiver.spans}
    assert names >= ours
    # Bytewax's outermost spans end last: they arrive only if its exporter is drained at exit.
    assert {"worker_main", "production_dataflow", "operator"} <= names
    assert "serving.records.scored" in receiver.metric_names


def test_prometheus_metrics_reach_the_registry_bytewax_serves_at_metrics(model_v1):
    from bytewax._metrics import generate_python_metrics  # what Bytewax's dataflow API serves at /metrics

    from flows.runtime.observability import configure_from_environment

    context = ServingContext.create()
    switched_on = configure_from_environment(context.telemetry, {"OTEL_METRICS_EXPORTER": "prometheus"})
    assert switched_on == ["metrics: prometheus"]
    run_core(at(0.3, messages(sample_records(12))), at(0, [model_v1]), context=context)
    exposition = generate_python_metrics()
    scored = [line for line in exposition.splitlines() if line.startswith("serving_records_scored")]
    assert scored and all(f'model="{model_v1.model_name}"' in line for line in scored)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in scored) == 12


def test_two_flows_in_one_process_keep_their_own_statistics(model_v1, model_v2):
    first = run_core(at(0.3, messages(sample_records(12))), at(0, [model_v1]))
    second = run_core(at(0.3, messages(sample_records(30))), at(0, [model_v2]))
    assert [(model["name"], model["usage"]) for model in first.context.state.per_model()] == [
        (model_v1.model_name, 12)
    ]
    assert [(model["name"], model["usage"]) for model in second.context.state.per_model()] == [
        (model_v2.model_name, 30)
    ]
