"""What a model's trial run does, whatever runs it (ONNX Runtime, `onnx_trial`; TensorFlow,
`saved_model_trial`): the batch sizes it scores, the checks each answer must pass, the figures it measures.

It runs in the limited admission child (`flows.core.admission.unpack_child`). A fixed probe cannot see what
a model costs or answers past its few small batches: a model whose memory grows as N x N with the batch
passes a probe of 257 pairs and takes 10 GB for the 50,000 the flow may send in one call, and one that
answers NaN past user 100 passes a probe of ids below 100. The trial asks the sizes the flow will ask, up to
the largest, with ids spread over the model's whole id range, and times the largest.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np

from flows.core.admission.probe import FLOAT32_EXACT, PROBE_PAIRS, out_of_range, spread_ids
from flows.core.errors import ServingError

# Sizes tried besides the largest batch: the probe's, one pair, and an odd size in between.
SMALL_SIZES = (PROBE_PAIRS, 1, 1_001)

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (users, products) -> one score per pair, 1-D


class TrialRefused(ServingError, ValueError):
    """The model failed its trial; the message says how."""


@dataclass(frozen=True)
class TrialFigures:
    """What the trial measured: `open_ms` to open the model, `call_ms` for `max_pairs` pairs (the fastest
    of two calls), and the child's peak resident memory, before and after opening the model."""

    open_ms: float
    max_pairs: int
    call_ms: float
    base_mb: float
    peak_mb: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def measured(cls, open_ms: float, max_pairs: int, call_ms: float, base_mb: float) -> TrialFigures:
        """The figures of a trial that just passed, with this process's peak memory now, rounded."""
        return cls(round(open_ms, 2), max_pairs, round(call_ms, 3), round(base_mb, 1), round(peak_mb(), 1))

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> TrialFigures:
        return cls(**{field.name: fields[field.name] for field in dataclass_fields(cls)})

    def summary(self) -> str:
        return (
            f"trial: {self.max_pairs:,} pairs in {self.call_ms:.0f} ms, "
            f"{self.peak_mb - self.base_mb:.0f} MB for the model"
        )


def score_batches(
    score: Score,
    bounds: tuple[int, int] | None,
    max_pairs: int,
    output_range: tuple[float, float],
    max_call_seconds: float,
    stage: Callable[[str], None],
    why: Callable[[BaseException], str],
) -> float:
    """Score the small sizes, then `max_pairs` pairs twice, ids spread up to `bounds` (users, products; the
    float32-exact range when the model shows none); the milliseconds of the faster largest call. Raises
    TrialRefused for a call that fails (`why(error)` says why), an answer that is not one score in
    `output_range` per pair, or a largest call slower than `max_call_seconds`. `stage(text)` is told what is
    tried before it is, so whoever kills this process at a limit can say where it was."""
    users_bound, products_bound = bounds if bounds else (FLOAT32_EXACT, FLOAT32_EXACT)
    call_ms = 0.0
    for pairs in [size for size in SMALL_SIZES if size < max_pairs] + [max_pairs, max_pairs]:
        stage(f"scoring {pairs:,} pairs")
        users, products = spread_ids(pairs, users_bound), spread_ids(pairs, products_bound, reverse=True)
        started = time.perf_counter()
        try:
            scores = score(users, products)
        except Exception as error:  # noqa: BLE001 (whatever the model raises is the reason it is refused)
            raise TrialRefused(f"trial: scoring {pairs:,} pairs failed: {why(error)}") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        _check_scores(scores, users, products, output_range)
        if pairs == max_pairs:
            call_ms = elapsed_ms if not call_ms else min(call_ms, elapsed_ms)
    if call_ms > max_call_seconds * 1000:
        raise TrialRefused(
            f"trial: scoring {max_pairs:,} pairs (SERVING_MODEL_MAX_BATCH_PAIRS) took "
            f"{call_ms / 1000:.1f} s, over {max_call_seconds:g} s (SERVING_MODEL_MAX_CALL_SECONDS)"
        )
    return call_ms


def _check_scores(
    scores: np.ndarray, users: np.ndarray, products: np.ndarray, output_range: tuple[float, float]
) -> None:
    if scores.dtype.kind != "f":
        raise TrialRefused(f"trial: scores have dtype {scores.dtype}, expected a float type")
    low, high = output_range
    bad = np.flatnonzero(out_of_range(scores, output_range))
    if bad.size:
        first = int(bad[0])
        raise TrialRefused(
            f"trial: {bad.size:,} of {scores.size:,} scores not finite or outside [{low:g}, {high:g}] "
            f"(first: {float(scores[first])!r} for user {int(users[first])}, product {int(products[first])}; "
            "SERVING_MODEL_OUTPUT_RANGE)"
        )


OUT_OF_MEMORY = "it ran out of the admission child's memory limit (SERVING_MODEL_UNPACK_MEMORY)"


def error_line(error: BaseException) -> str:
    """The error's type and first line: what a refusal quotes of it (runtimes' messages run to pages)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, which starts anew at exec; `ru_maxrss` keeps
    the peak of the process that forked this one (the flow's), so it is only the fallback elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
