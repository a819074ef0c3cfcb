"""Test-scoring: a model answers a fixed probe batch correctly before it is accepted, and every score
it returns later is checked against the same rules.

A model can have the right signature names and still return the wrong number of scores, another dtype,
NaN or 1e30; such a model must not replace a working one, and such a score must not go out as a result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the admission child imports this module; pydantic (the policy's) would cost it 0.3 s
    from flows.core.admission.policy import AdmissionPolicy

PROBE_PAIRS = 64
# Batch sizes the probe asks, the usual one first: a model that answers 64 scores whatever it is asked
# passes a probe of 64 pairs alone, and one call of each size costs a model server a few ms.
PROBE_SIZES = (PROBE_PAIRS, 1, 257)
# The ids a model that shows no bounds of its own is probed with (a model server's): its range is the
# server's business, and every recommender knows the first hundred users and products.
UNKNOWN_BOUND = 100
FLOAT32_EXACT = 2**24  # float32 holds every integer below this; 2**24 + 1 would reach the model as 2**24


def spread_ids(count: int, bound: int, reverse: bool = False) -> np.ndarray:
    """`count` ids (float32, as models are fed) spread over 0 to `bound` - 1, both ends included: a
    deterministic walk by a step of about 0.618 `bound`, so a handful of ids already lands in every part
    of the range (a model that goes wrong past some id is asked about ids past it). `reverse` walks the
    other way: products are drawn so, so that a pair's two ids are not the same number."""
    step = int(bound * 0.6180339887) | 1
    ids = np.arange(count, dtype=np.int64) * step % bound
    if count >= 2:
        ids[-1] = bound - 1
    if reverse:
        ids = bound - 1 - ids
    return ids.astype(np.float32)


def probe_batch(
    users: int = UNKNOWN_BOUND, products: int = UNKNOWN_BOUND, pairs: int = PROBE_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """The probe's (users, products): `pairs` deterministic pairs with ids spread over the whole range the
    model takes (its embeddings' rows when it shows them; see `UNKNOWN_BOUND`)."""
    return (
        spread_ids(pairs, min(users, FLOAT32_EXACT)),
        spread_ids(pairs, min(products, FLOAT32_EXACT), reverse=True),
    )


def out_of_range(scores: np.ndarray, output_range: tuple[float, float]) -> np.ndarray:
    """Boolean mask of the scores that are not finite or lie outside `output_range` (low, high)."""
    low, high = output_range
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(scores) & (scores >= low) & (scores <= high))


def probe_problem(scores: object, pairs: int, policy: AdmissionPolicy) -> str | None:
    """Why `scores`, the answer to a probe of `pairs` pairs, shows the model unfit; None if it is fit."""
    if not isinstance(scores, np.ndarray):
        return f"probe: scorer returned {type(scores).__name__}, not an array"
    if scores.dtype.kind != "f":
        return f"probe: scores have dtype {scores.dtype}, expected a float type"
    if scores.shape != (pairs,):
        return f"probe: {pairs} pairs gave scores of shape {scores.shape}, expected one score per pair"
    bad = out_of_range(scores, policy.output_range)
    if bad.any():
        first = float(scores[bad][0])
        return (
            f"probe: {int(bad.sum())} of {pairs} scores not finite or outside "
            f"[{policy.output_low:g}, {policy.output_high:g}] (first: {first!r}; SERVING_MODEL_OUTPUT_RANGE)"
        )
    return None
