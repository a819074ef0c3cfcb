"""The Kafka scenario: a data topic through the main job's flow (in this process) to a results topic."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from typing import Self

import numpy as np
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import SecretStr

from flows.adapters.kafka.headers import (
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TIMESTAMP_HEADER,
    consumed_headers,
)
from flows.adapters.sources.generators import generated_records, shipped_model
from flows.adapters.sources.stoppable import request_stop
from flows.bench.report import kafka_report
from flows.core.context import ServingContext
from flows.core.explanations import ExplainSettings
from flows.core.outliers import OutlierSettings
from flows.core.records import RecommenderResult
from flows.runtime.app import build_flow, freeze_what_start_built
from flows.runtime.settings import Settings
from flows.testing.local_broker import (
    consume_all,
    create_topics,
    kafka_broker,
    produce,
)
from flows.testing.loopback import free_port
from flows.wire.avro import MODEL, RECORD, RESULT

READER_WAIT_S = 0.005  # the visible-results reader's longest wait per read


def run_kafka_embedded(
    records: int,
    rate: float,
    bootstrap: str | None,
    partitions: int,
    version: str,
    processes: int | None = None,
    delivery: str = "at-least-once",
    snapshot_interval: float = 1.0,
    outliers: bool = True,
    explain: bool = True,
) -> dict:
    """Through a broker: data topic -> flow (in this process) -> results topic.

    With `processes`, the main job runs instead, as that many processes of one cluster (`bytewax.run`
    with `-i`/`-a`, as the Kubernetes StatefulSet runs it), on the pre-loaded topic.

    Without `rate` the data topic is filled first and the flow reads it to the end; with `rate` a producer
    thread offers that many records/s while the flow runs. Latency: the result message's timestamp minus
    the data message's (both set when produced), so it includes the time in Kafka on both sides; throughput
    counts from the first result to the last, so the flow's start-up is not in it.

    `delivery` is SERVING_KAFKA_DELIVERY. Results of exactly-once delivery are written at once but become
    visible at each commit (every SERVING_KAFKA_COMMIT_INTERVAL seconds, and each `snapshot_interval`): so
    a read_committed consumer in this process also times each result when it sees it, and the report gives
    that latency and the throughput between the first and the last result it saw (`visible_*`), for both
    deliveries alike.

    Without `outliers` the flow scores no outliers (SERVING_OUTLIER_REFERENCE=0); without `explain` it
    explains nothing (SERVING_EXPLAIN_FRACTION=0, SERVING_EXPLAIN_REQUESTS=false); with either, at the
    settings this process has (the defaults, unless its environment says otherwise).
    """
    settings = Settings.from_environment()
    model = shipped_model(settings.generator.models_dir, version)
    context = ServingContext.create()
    context.cache.acquire(model)
    with ExitStack() as stack:
        servers = bootstrap or stack.enter_context(kafka_broker())
        names = ["data", "models", "results", "dead", "answered"]
        topics = create_topics(servers, "bench", names, partitions=partitions)
        produce(servers, topics["models"], [(model.model_name.encode(), MODEL.encode(model))])
        encoded = [
            (str(r.user).encode(), RECORD.encode(r))
            for r in generated_records(settings.generator.seed, records)
        ]
        kafka = settings.kafka.model_copy(
            update={
                "bootstrap_servers": servers,
                "data_topic": topics["data"],
                "models_topic": topics["models"],
                "results_topic": topics["results"],
                "dead_letters_topic": topics["dead"],
                "answered_topic": topics["answered"],
                "delivery": delivery,
                "tail": rate > 0,
                # The run's topics are new: a key of its own signs their exactly-once markers.
                "marker_key": settings.kafka.marker_key or SecretStr(secrets.token_hex(16)),
            }
        )
        flow_settings = settings.model_copy(
            update={
                "kafka": kafka,
                "output": settings.output.model_copy(update={"console_every": 0}),
                "outliers": settings.outliers if outliers else OutlierSettings(reference=0),
                "explain": settings.explain if explain else ExplainSettings(fraction=0, requests=False),
            }
        )
        expected = records + (1 if rate > 0 else 0)
        visible = stack.enter_context(VisibleResults(servers, topics["results"]))
        if processes:
            if rate > 0:
                raise SystemExit("bench: --processes runs on a pre-loaded topic; leave --rate out")
            produce(servers, topics["data"], encoded)
            _run_main_job(flow_settings, processes)
        else:
            _run_here(flow_settings, context, rate, servers, topics, encoded, visible, snapshot_interval)
        results = consume_all(servers, topics["results"], expected)
        visible.wait_for(expected)
    if len(results) < expected:
        raise SystemExit(f"bench: expected {expected} results, got {len(results)}")
    if rate > 0:  # the warm-up record (partition 0, offset 0) answered before the offered load began
        results = [message for message in results if not _is_warm_up(message)]
    report = kafka_report(
        "kafka-embedded",
        records,
        rate or "pre-loaded",
        results,
        partitions,
        bootstrap,
        delivery=delivery,
        snapshot_interval_s=snapshot_interval,
        **({"commit_interval_s": settings.kafka.commit_interval} if delivery == "exactly-once" else {}),
        **visible.figures(skip_first=rate > 0),
    )
    on_off = {"outliers": "on" if outliers else "off", "explain": "on" if explain else "off"}
    return report | on_off | {"model": model.model_name} | ({"processes": processes} if processes else {})


def _run_here(
    flow_settings: Settings,
    context: ServingContext,
    rate: float,
    servers: str,
    topics: dict,
    encoded: list,
    visible: VisibleResults,
    snapshot_interval: float,
) -> None:
    flow = build_flow(flow_settings, context)
    freeze_what_start_built()  # as the main job does
    if rate > 0:
        offer = (servers, topics, encoded, rate, flow_settings.generator.seed, visible)
        threading.Thread(target=_offer, args=offer, daemon=True).start()
    else:
        produce(servers, topics["data"], encoded)
        visible.started_ms = time.time_ns() // 1_000_000
    run_main(flow, epoch_interval=timedelta(seconds=snapshot_interval))


def _run_main_job(flow_settings: Settings, processes: int) -> None:
    """`python -m bytewax.run flows.serving` as `processes` processes of one cluster, until the topic ends."""
    ports = [free_port() for _ in range(processes)]
    addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
    env = {**os.environ, **_environment(flow_settings), "BYTEWAX_ADDRESSES": addresses}
    command = [sys.executable, "-m", "bytewax.run", "flows.serving"]
    jobs = [
        subprocess.Popen([*command, "-i", str(index)], env=env, stdout=subprocess.DEVNULL)
        for index in range(processes)
    ]
    try:
        for job in jobs:
            if job.wait(timeout=600) != 0:
                raise SystemExit(f"bench: a process of the main job exited with {job.returncode}")
    finally:
        for job in jobs:
            job.kill()


def _environment(flow_settings: Settings) -> dict[str, str]:
    """The SERVING_* variables that give the main job `flow_settings`' Kafka topics."""
    marker_key = flow_settings.kafka.marker_key
    assert marker_key is not None  # every bench run has a key of its own (`run_kafka_embedded`)
    return {
        "SERVING_KAFKA_BOOTSTRAP_SERVERS": flow_settings.kafka.bootstrap_servers,
        "SERVING_KAFKA_DATA_TOPIC": flow_settings.kafka.data_topic,
        "SERVING_KAFKA_MODELS_TOPIC": flow_settings.kafka.models_topic,
        "SERVING_KAFKA_RESULTS_TOPIC": flow_settings.kafka.results_topic,
        "SERVING_KAFKA_DEAD_LETTERS_TOPIC": flow_settings.kafka.dead_letters_topic,
        "SERVING_KAFKA_ANSWERED_TOPIC": flow_settings.kafka.answered_topic,
        "SERVING_KAFKA_DELIVERY": flow_settings.kafka.delivery,
        "SERVING_KAFKA_MARKER_KEY": marker_key.get_secret_value(),
        "SERVING_KAFKA_TAIL": "false",
        "SERVING_CONSOLE_EVERY": "0",
        "SERVING_OUTLIER_REFERENCE": str(flow_settings.outliers.reference),
        "SERVING_EXPLAIN_FRACTION": str(flow_settings.explain.fraction),
        "SERVING_EXPLAIN_REQUESTS": str(flow_settings.explain.requests).lower(),
    }


def _is_warm_up(message) -> bool:
    headers = dict(message.headers())
    return headers[SOURCE_PARTITION_HEADER] == b"0" and headers[SOURCE_OFFSET_HEADER] == b"0"


def _offer(
    servers: str, topics: dict[str, str], encoded: list, rate: float, seed: int, visible: VisibleResults
) -> None:
    """Offer `encoded` at `rate` records/s from another process, then ask the flow to stop once every result
    is out.

    One warm-up record (partition 0, offset 0) goes first, and the offered load starts only when its result
    is out: records offered while the flow is still starting would measure the start-up, not the serving.
    The load comes from `serving-loadgen` in a process of its own, as producers are: a producer thread in
    this process would take the GIL from the flow it measures.
    """
    producer = Producer({"bootstrap.servers": servers, "linger.ms": "1"})
    producer.produce(topics["data"], key=encoded[0][0], value=encoded[0][1], partition=0)
    producer.flush(30)
    visible.wait_for(1)
    command = [
        sys.executable,
        "-m",
        "flows.tools.loadgen",
        "--records",
        str(len(encoded)),
        "--rate",
        str(rate),
    ]
    command += ["--bootstrap-servers", servers, "--topic", topics["data"], "--seed", str(seed), "--quiet"]
    environment = {**os.environ, "SERVING_KAFKA_PRODUCER_CONFIG": '{"linger.ms": "1"}'}
    subprocess.run(command, env=environment, check=True, timeout=600)
    visible.wait_for(len(encoded) + 1)
    request_stop()


class VisibleResults:
    """A read_committed consumer of the results topic, in a thread: when each result became visible, and how
    long after its data message was produced; with `models`, also which model answered (a decode each)."""

    def __init__(self, servers: str, topic: str, models: bool = False) -> None:
        self.servers, self.topic = servers, topic
        self.started_ms = 0  # when the flow started: set by whoever starts it
        self.seen_ms: list[int] = []
        self.latencies_ms: list[int] = []
        self.models: list[str] | None = [] if models else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": f"bench-visible-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": "10",
            }
        )
        partitions = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # consume() waits out its timeout unless the batch fills: a long one would add its wait to
            # the latency it measures (50 ms added 25 ms to the median)
            messages = self._consumer.consume(1000, READER_WAIT_S)
            now_ms = time.time_ns() // 1_000_000
            for message in messages:
                if message.error() is None:
                    produced_ms = int(consumed_headers(message)[SOURCE_TIMESTAMP_HEADER])
                    if self.models is not None:
                        result = RESULT.decode(message.value())
                        model = result.metadata.model_name if isinstance(result, RecommenderResult) else "?"
                        self.models.append(model)
                    self.latencies_ms.append(now_ms - produced_ms)
                    self.seen_ms.append(now_ms)

    def wait_for(self, count: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen_ms) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {len(self.seen_ms)} of {count} results visible after {timeout_s} s")
            time.sleep(0.05)

    def figures(self, skip_first: bool) -> dict:
        """Latency as seen (without the warm-up result), and the throughput from the flow's start to the
        last result seen: a commit makes results visible in bursts, so first-to-last would flatter it."""
        seen, latencies = self.seen_ms, self.latencies_ms
        if skip_first:
            seen, latencies = seen[1:], latencies[1:]
        seconds = max((max(seen) - (self.started_ms or min(seen))) / 1000, 0.001)
        return {
            "visible_records_per_s": round(len(seen) / seconds),
            "visible_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "visible_p99_ms": round(float(np.percentile(latencies, 99)), 1),
        }
