"""What one model call costs, by runtime and batch size: the `call-cost` scenario.

Builds the scorer of one shipped model (a SavedModel, or an ONNX twin such as `1-onnx`), warms it up, then
times `score` on batches of 1, 100 and 1,000 pairs, interleaved and repeated, and reports the median per call
and per pair, with the process's resident memory after warm-up. The model call is the one cost per micro-batch
a runtime adds; the rest of the flow is the same whatever scores.
"""

from __future__ import annotations

import time

import numpy as np

from flows.adapters.scorers import build_scorer
from flows.bench.report import report
from flows.core.descriptors import ModelDescriptor

BATCH_SIZES = (1, 100, 1_000)


def resident_mb() -> float:
    """This process's resident memory now, MiB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run_call_cost(model: ModelDescriptor, rounds: int) -> dict:
    """Median seconds per call at each of BATCH_SIZES over `rounds` interleaved rounds."""
    scorer = build_scorer(model)
    rng = np.random.default_rng(0)
    batches = {
        size: (rng.integers(0, 1000, size).astype(np.float32), rng.integers(0, 300, size).astype(np.float32))
        for size in BATCH_SIZES
    }
    for users, products in batches.values():
        scorer.score(users, products)  # warm-up: first calls allocate and optimise
    memory = resident_mb()
    calls: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
    started = time.perf_counter()
    for _ in range(rounds):
        for size, (users, products) in batches.items():
            begin = time.perf_counter_ns()
            scorer.score(users, products)
            calls[size].append((time.perf_counter_ns() - begin) / 1e6)
    seconds = time.perf_counter() - started
    scorer.close()
    pairs = rounds * sum(BATCH_SIZES)
    details = {}
    for size, times in calls.items():
        median = float(np.median(times))
        details[f"call_ms_batch_{size}"] = round(median, 4)
        details[f"us_per_pair_batch_{size}"] = round(median * 1000 / size, 3)
    all_calls = [time_ms for times in calls.values() for time_ms in times]
    return report(
        "call-cost", pairs, "unthrottled", seconds, all_calls, model=model.model_name, rss_mb=memory,
        **details, source=scorer.source,
    )  # fmt: skip
