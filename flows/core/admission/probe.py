"""Test-scoring: a model answers a fixed probe batch correctly before it is accepted, and every score
it returns later is checked against the same rules.

A model can have the right signature names and still return the wrong number of scores, another dtype,
NaN or 1e30; such a model must not replace a working one, and such a score must not go out as a result.
"""

from __future__ import annotations

import numpy as np

from flows.core.admission.policy import AdmissionPolicy

PROBE_PAIRS = 64


def probe_batch(users: int = 100, products: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The probe's (users, products): deterministic, small ids every recommender knows, below 100, or below
    the model's own bounds when it shows smaller ones (ids it would refuse are not a fair question)."""
    index = np.arange(PROBE_PAIRS)
    return (
        (index * 37 % min(users, 100)).astype(np.float32),
        (index * 11 % min(products, 100)).astype(np.float32),
    )


def out_of_range(scores: np.ndarray, policy: AdmissionPolicy) -> np.ndarray:
    """Boolean mask of the scores that are not finite or lie outside the output range."""
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(scores) & (scores >= policy.output_low) & (scores <= policy.output_high))


def probe_problem(scores: object, pairs: int, policy: AdmissionPolicy) -> str | None:
    """Why `scores`, the answer to a probe of `pairs` pairs, shows the model unfit; None if it is fit."""
    if not isinstance(scores, np.ndarray):
        return f"probe: scorer returned {type(scores).__name__}, not an array"
    if scores.dtype.kind != "f":
        return f"probe: scores have dtype {scores.dtype}, expected a float type"
    if scores.shape != (pairs,):
        return f"probe: {pairs} pairs gave scores of shape {scores.shape}, expected one score per pair"
    bad = out_of_range(scores, policy)
    if bad.any():
        first = float(scores[bad][0])
        return (
            f"probe: {int(bad.sum())} of {pairs} scores not finite or outside "
            f"[{policy.output_low:g}, {policy.output_high:g}] (first: {first!r}; SERVING_MODEL_OUTPUT_RANGE)"
        )
    return None
