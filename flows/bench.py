"""Benchmarks of the serving flow: `python -m flows.bench --scenario embedded --records N`.

Runs the dataflow in this process on generated records (unthrottled, or at `--rate` records/s) and prints, as its last line, one
JSON object: scenario, records, seconds, records_per_s, p50_ms, p99_ms (latency of each record from the
moment its source emitted it to the moment its result reached the sink), plus the run's parameters.
The model is loaded before the clock starts, so the figures are steady-state scoring, not TensorFlow's
start-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main

from flows.dataflow import serve
from flows.generators import DataGenerator, ModelGenerator, shipped_model
from flows.records import ScoredMessage
from flows.scorers.cache import SCORERS
from flows.settings import Settings

SCENARIOS = ("embedded",)


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


def run_embedded(records: int, rate: float, workers: int, shards: int, batch: int, version: str) -> dict:
    settings = Settings()
    model = shipped_model(settings.models_dir, version)
    SCORERS.acquire(model)  # Load (and warm up) before timing; the flow then shares this scorer.
    flow = Dataflow("bench")
    data = op.input("data", flow, DataGenerator(records, rate, partitions=workers, batch=batch, seed=settings.seed))
    models = op.input("models", flow, ModelGenerator([model], interval=3600, count=1))
    streams = serve("serve", data, models, shards=shards, hold_limit=records)
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
    latencies_ms = np.asarray(sink.latencies) / 1e6
    return {
        "scenario": "embedded",
        "records": records,
        "offered_rate": rate or "unthrottled",
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
        "errors": len(sink.errors),
        "workers": workers,
        "shards": shards,
        "source_batch": batch,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="embedded")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0, help="offered records/s (default: as fast as possible)")
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers in this process")
    parser.add_argument("--shards", type=int, default=Settings().shards)
    parser.add_argument("--batch", type=int, default=1000, help="records per source batch")
    parser.add_argument("--model-version", default="1")
    args = parser.parse_args()
    result = run_embedded(args.records, args.rate, args.workers, args.shards, args.batch, args.model_version)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
