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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from flows.adapters.sources.generators import generated_records, shipped_model
from flows.bench.call_cost import resident_mb
from flows.bench.kafka import VisibleResults
from flows.testing.local_broker import create_topics, kafka_broker, produce
from flows.wire.avro import MODEL, RECORD

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
    first = shipped_model(models_dir, version)
    then = shipped_model(models_dir, then_version) if then_version else None
    with ExitStack() as stack:
        servers = bootstrap or stack.enter_context(kafka_broker())
        topics = create_topics(servers, "start-up", ["data", "models", "results", "dead"])
        produce(servers, topics["models"], [(b"champion", MODEL.encode(first))])
        seeds = iter(range(1, 1_000_000))
        produce(servers, topics["data"], _encoded(next(seeds), records))
        results = stack.enter_context(VisibleResults(servers, topics["results"], models=True))
        answered_models = results.models
        assert answered_models is not None  # asked for above
        started_ms = time.time_ns() // 1_000_000
        job = _start_main_job(servers, topics, checkout)
        stack.callback(_stop, job)
        _wait_until(lambda: len(results.seen_ms) >= records, job)
        seen_ms = results.seen_ms[:records]
        report = {
            "scenario": "start-up",
            "model": first.model_name,
            "records": records,
            "checkout": str(checkout) if checkout else "this one",
            "first_result_s": round((seen_ms[0] - started_ms) / 1000, 2),
            "records_per_s": round(records / max((seen_ms[-1] - seen_ms[0]) / 1000, 0.001)),
            "warm_rss_mb": resident_mb(job.pid),
        }
        if then:
            produce(servers, topics["models"], [(b"champion", MODEL.encode(then))])
            published_ms = time.time_ns() // 1_000_000
            trickle = threading.Event()
            offer = (servers, topics["data"], seeds, trickle)
            offering = threading.Thread(target=_trickle, args=offer, daemon=True)
            offering.start()
            try:
                _wait_until(lambda: then.model_name in answered_models[records:], job)
            finally:
                trickle.set()
                offering.join()  # before the broker it writes to goes
            first_then = answered_models.index(then.model_name, records)
            meanwhile = [
                latency
                for latency, model in zip(results.latencies_ms[records:first_then], answered_models[records:])
                if model == first.model_name
            ] or [0]
            report |= {
                "then_model": then.model_name,
                "then_first_result_s": round((results.seen_ms[first_then] - published_ms) / 1000, 2),
                "answered_meanwhile": first_then - records,
                "meanwhile_p50_ms": round(float(np.percentile(meanwhile, 50)), 1),
                "meanwhile_p99_ms": round(float(np.percentile(meanwhile, 99)), 1),
                "then_rss_mb": resident_mb(job.pid),
            }
        return report | {"broker": "external" if bootstrap else "noida-db (local)"}


def _wait_until(condition: Callable[[], bool], job: subprocess.Popen) -> None:
    """Until `condition()` holds; SystemExit if the job ends first, or after `WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if job.poll() is not None:
            raise SystemExit(f"bench: the main job exited with {job.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: what was awaited did not come within {WAIT_S} s")
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
