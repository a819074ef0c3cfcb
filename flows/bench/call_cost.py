"""What one model call costs, by runtime and batch size: the `call-cost` and `ensemble-cost` scenarios.

`call-cost` builds the scorer of one shipped model (a SavedModel, an ONNX twin such as `1-onnx`, the PMML
`1-pmml`), warms it up, then times `score` on batches of 1, 100 and 1,000 pairs, interleaved and repeated, and
reports the median per call and per pair, with the process's resident memory after warm-up. The model call is
the one cost per micro-batch a runtime adds; the rest of the flow is the same whatever scores.

`ensemble-cost` compares the two ways to serve the mean of the two shipped ONNX twins: one call of the
ensemble `serving-onnx-ensemble` composes, against one call of each member (what an inference graph with an
ensemble node does, less the network), interleaved at each batch size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from flows.adapters.scorers import Scorer, build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.bench.report import report
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.tools.onnx_ensemble import compose

BATCH_SIZES = (1, 100, 1_000)


def resident_mb(pid: int | str = "self") -> float:
    """The resident memory of process `pid` (this one by default) now, MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run_call_cost(model: ModelDescriptor, rounds: int) -> dict:
    """Median seconds per call at each of BATCH_SIZES over `rounds` interleaved rounds."""
    scorer = build_scorer(model)
    batches = _batches()
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


def run_ensemble_cost(models_dir: Path, rounds: int) -> dict:
    """Median milliseconds per batch: the composed ensemble of the ONNX twins against a call of each."""
    paths = [models_dir / version / "model.onnx" for version in ("1-onnx", "2-onnx")]
    members = [_onnx_scorer(path.parent.name, path) for path in paths]
    with tempfile.TemporaryDirectory() as scratch:
        composed = Path(scratch) / "model.onnx"
        onnx.save_model(compose([onnx.load_model(str(path)) for path in paths]), str(composed))
        ensemble = _onnx_scorer("ensemble", composed)
    batches = _batches()
    ways = {
        "composed": lambda users, products: ensemble.score(users, products),
        "separate": lambda users, products: [member.score(users, products) for member in members],
    }
    for call in ways.values():
        for users, products in batches.values():
            call(users, products)  # warm-up
    times: dict[tuple[str, int], list[float]] = {(way, size): [] for way in ways for size in BATCH_SIZES}
    started = time.perf_counter()
    for round_ in range(rounds):
        order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
        for size, (users, products) in batches.items():
            for way in order:
                begin = time.perf_counter_ns()
                ways[way](users, products)
                times[(way, size)].append((time.perf_counter_ns() - begin) / 1e6)
    seconds = time.perf_counter() - started
    details = {
        f"{way}_ms_batch_{size}": round(float(np.median(found)), 4) for (way, size), found in times.items()
    }
    all_calls = [time_ms for found in times.values() for time_ms in found]
    pairs = rounds * sum(BATCH_SIZES) * len(ways)
    return report("ensemble-cost", pairs, "unthrottled", seconds, all_calls, **details)


def _batches() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(users, products) of each of BATCH_SIZES, the same in every run (within the shipped models' ids)."""
    rng = np.random.default_rng(0)
    return {
        size: (rng.integers(0, 1000, size).astype(np.float32), rng.integers(0, 300, size).astype(np.float32))
        for size in BATCH_SIZES
    }


def _onnx_scorer(name: str, path: Path) -> Scorer:
    """The admitted scorer of the ONNX model at `path`, sent inline as the flow would get it."""
    return build_scorer(ModelDescriptor(name, "", ModelType.ONNX, pack_file(path, "model.onnx")))
