"""The start-up scenario: the main job as a process of its own, timed from its start to its first result, with
the memory it holds once warm; then, with `then_version`, the same after a second model is published while
records keep coming (`serving-bench --scenario start-up`).

What a deployment pays for the runtimes it loads: an ONNX champion needs neither TensorFlow nor gRPC, and a
TensorFlow model published later imports TensorFlow on its load thread while the first model answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.adapters.kafka.headers import SOURCE_TIMESTAMP_HEADER, consumed_headers
from flows.adapters.sources.generators import generated_records, shipped_model
from flows.core.records import RecommenderResult
from flows.testing.local_broker import create_topics, kafka_broker, produce
from flows.wire.avro import MODEL, RECORD, RESULT

TRICKLE_PER_S = 1000  # records/s offered while the second model loads
WAIT_S = 300  # the longest wait for any result


def run_start_up(
    records: int,
    bootstrap: str | None,
    models_dir: Path,
    version: str,
    then_version: str | None = None,
    checkout: Path | None = None,
) -> dict:
    """The main job on a models topic holding shipped `version` and a data topic holding `records` records:
    seconds from its start to its first result, resident memory once all are answered, their throughput.

    With `then_version`, that model is then published as the new champion while records are offered at
    `TRICKLE_PER_S`: the seconds until its first result, how many results the first model gave meanwhile,
    their latency, and the memory after. With `checkout`, the main job runs from that directory (another
    commit's tree, to compare with it)."""
    first, then = shipped_model(models_dir, version), then_version and shipped_model(models_dir, then_version)
    with ExitStack() as stack:
        servers = bootstrap or stack.enter_context(kafka_broker())
        topics = create_topics(servers, "start-up", ["data", "models", "results", "dead"])
        produce(servers, topics["models"], [(b"champion", MODEL.encode(first))])
        seeds = iter(range(1, 1_000_000))
        produce(servers, topics["data"], _encoded(next(seeds), records))
        results = stack.enter_context(Results(servers, topics["results"]))
        started_ms = time.time_ns() // 1_000_000
        job = _start_main_job(servers, topics, checkout)
        stack.callback(_stop, job)
        results.wait_for(lambda seen: len(seen) >= 1, job)
        results.wait_for(lambda seen: len(seen) >= records, job)
        seen = list(results.seen)
        report = {
            "scenario": "start-up",
            "model": first.model_name,
            "records": records,
            "checkout": str(checkout) if checkout else "this one",
            "first_result_s": round((seen[0].seen_ms - started_ms) / 1000, 2),
            "records_per_s": round(records / max((seen[-1].seen_ms - seen[0].seen_ms) / 1000, 0.001)),
            "warm_rss_mb": _resident_mb(job.pid),
        }
        if then:
            produce(servers, topics["models"], [(b"champion", MODEL.encode(then))])
            published_ms = time.time_ns() // 1_000_000
            trickle = threading.Event()
            offer = (servers, topics["data"], seeds, trickle)
            offering = threading.Thread(target=_trickle, args=offer, daemon=True)
            offering.start()
            try:
                results.wait_for(lambda seen: seen[-1].model == then.model_name, job)
            finally:
                trickle.set()
                offering.join()  # before the broker it writes to goes
            meanwhile = [result for result in results.seen[records:] if result.model == first.model_name]
            latencies = [result.latency_ms for result in meanwhile] or [0]
            report |= {
                "then_model": then.model_name,
                "then_first_result_s": round((results.seen[-1].seen_ms - published_ms) / 1000, 2),
                "answered_meanwhile": len(meanwhile),
                "meanwhile_p50_ms": round(float(np.percentile(latencies, 50)), 1),
                "meanwhile_p99_ms": round(float(np.percentile(latencies, 99)), 1),
                "then_rss_mb": _resident_mb(job.pid),
            }
        return report | {"broker": "external" if bootstrap else "noida-db (local)"}


class Result:
    """One result as the bench saw it: when, how long after its record was produced, from which model."""

    __slots__ = ("latency_ms", "model", "seen_ms")

    def __init__(self, seen_ms: int, latency_ms: int, model: str) -> None:
        self.seen_ms, self.latency_ms, self.model = seen_ms, latency_ms, model


class Results:
    """A consumer of the results topic in a thread, keeping each result's `Result` in `seen`."""

    def __init__(self, servers: str, topic: str) -> None:
        self.seen: list[Result] = []
        self._consumer = Consumer(
            {"bootstrap.servers": servers, "group.id": f"bench-{uuid.uuid4().hex}", "fetch.wait.max.ms": "10"}
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(1000, 0.005)
            now_ms = time.time_ns() // 1_000_000
            for message in messages:
                if message.error() is None:
                    produced_ms = int(consumed_headers(message)[SOURCE_TIMESTAMP_HEADER])
                    result = RESULT.decode(message.value())
                    model = result.metadata.model_name if isinstance(result, RecommenderResult) else "?"
                    self.seen.append(Result(now_ms, now_ms - produced_ms, model))

    def wait_for(self, condition: Callable[[list[Result]], bool], job: subprocess.Popen) -> None:
        """Until `condition(seen)` holds, `seen` not empty; SystemExit if the job ends, or past `WAIT_S`."""
        deadline = time.monotonic() + WAIT_S
        while not (self.seen and condition(self.seen)):
            if job.poll() is not None:
                raise SystemExit(f"bench: the main job exited with {job.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {len(self.seen)} results after {WAIT_S} s, not what was awaited")
            time.sleep(0.01)


def _encoded(seed: int, count: int) -> list[tuple[bytes, bytes]]:
    return [(str(r.user).encode(), RECORD.encode(r)) for r in generated_records(seed, count)]


def _trickle(servers: str, topic: str, seeds: Iterator[int], stop: threading.Event) -> None:
    """`TRICKLE_PER_S` records a second, a tenth of a second's worth at a time, until `stop`."""
    while not stop.is_set():
        produce(servers, topic, _encoded(next(seeds), TRICKLE_PER_S // 10))
        stop.wait(0.1)


def _start_main_job(servers: str, topics: dict[str, str], checkout: Path | None) -> subprocess.Popen:
    environment = {
        **os.environ,
        "SERVING_KAFKA_BOOTSTRAP_SERVERS": servers,
        "SERVING_KAFKA_DATA_TOPIC": topics["data"],
        "SERVING_KAFKA_MODELS_TOPIC": topics["models"],
        "SERVING_KAFKA_RESULTS_TOPIC": topics["results"],
        "SERVING_KAFKA_DEAD_LETTERS_TOPIC": topics["dead"],
        "SERVING_KAFKA_TAIL": "true",
        "SERVING_CONSOLE_EVERY": "0",
        "SERVING_STATE_PORT": "0",
    }
    if checkout is not None:
        environment["PYTHONPATH"] = str(checkout)
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.serving"],
        cwd=checkout,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(job: subprocess.Popen) -> None:
    job.kill()
    job.wait(timeout=30)


def _resident_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"bench: no VmRSS for process {pid}")
