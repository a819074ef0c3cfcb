"""The trial run of a TensorFlow SavedModel: TensorFlow loads it and scores the batches of
`flows.core.admission.trial`, up to the largest the flow will send, in the admission child
(`flows.core.admission.unpack_child`), before the flow's process loads it.

The graph check (`flows.core.admission.graph`) sees which ops a model uses, not what they cost: users [N, 1]
plus transpose(products) [1, N] is a graph of allowed ops that passes a probe of 257 pairs and takes 10 GB
for 50,000; 120 dense layers of 512 units pass it in a second and take minutes for the largest batch.
Loaded in the flow, either killed it, and again at every restart, since the model is restored from
recovery. Here they meet the child's resident-memory watchdog (`SERVING_MODEL_TRIAL_MEMORY`) and its clock
(`SERVING_MODEL_UNPACK_TIMEOUT`, started after TensorFlow's import), and are refused naming the stage they
reached; a largest call slower than `SERVING_MODEL_MAX_CALL_SECONDS` is refused too.

Cost, measured for the shipped SavedModels on the loaded 2-core development machine: importing TensorFlow
in the child takes 5 to 13 s (7 s of CPU; 25 s once, under a full test suite) and 682 MB resident, 2.3 GB
of address space; loading the model 0.1 to 0.16 s; 50,000 pairs 30 to 90 ms a call; the child peaks at 740
to 760 MB resident. The flow's own process already holds TensorFlow, so the import is what admission of a
SavedModel now costs on top: 7 to 16 s where loading and probing it in the flow took under a second. An
inline SavedModel that passed is not tried again in the same process (`flows.core.admission.unpack`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from flows.core.admission.saved_model_bounds import embedding_bounds
from flows.core.admission.trial import TrialFigures, TrialRefused, error_line, peak_mb, score_batches
from flows.core.errors import WrongScoreCount
from flows.core.scorer import INPUTS, OUTPUT, SIGNATURE


def signature_problem(tf: ModuleType, signature: Any) -> str | None:
    """What is wrong with the signature's names, dtypes or shapes; None if it is the recommender's."""
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if set(inputs) != set(INPUTS) or OUTPUT not in outputs:
        return (
            f"takes {sorted(inputs)} and returns {sorted(outputs)}; "
            f"expected inputs {list(INPUTS)} and output {OUTPUT!r}"
        )
    specs = {**{name: inputs[name] for name in INPUTS}, OUTPUT: outputs[OUTPUT]}
    for name, spec in specs.items():
        if spec.dtype != tf.float32:
            return f"declares {name!r} as {spec.dtype.name}, expected float32"
        shape = spec.shape
        if shape.rank is not None and (shape.rank != 2 or shape[1] not in (None, 1)):
            return f"declares {name!r} of shape {shape}, expected [N, 1]"
    return None


def run_signature(tf: ModuleType, signature: Any, users: np.ndarray, products: np.ndarray) -> np.ndarray:
    """One call, as the flow makes it: the scores of the pairs (1-D), or WrongScoreCount for another count."""
    outputs = signature(
        users=tf.constant(users.reshape(-1, 1)), products=tf.constant(products.reshape(-1, 1))
    )
    scores = outputs[OUTPUT].numpy()
    if scores.shape not in ((users.size, 1), (users.size,)):
        raise WrongScoreCount(f"model returned {OUTPUT!r} of shape {scores.shape} for {users.size} pairs")
    return scores.reshape(-1)


def trial(
    tf: ModuleType,
    directory: Path,
    max_pairs: int,
    output_range: tuple[float, float],
    max_call_seconds: float,
    stage: Callable[[str], None],
) -> TrialFigures:
    """Load the SavedModel in `directory` and score batches up to `max_pairs` through its `serving_default`
    signature (see `flows.core.admission.trial.score_batches`); TrialRefused naming what failed."""
    base_mb = peak_mb()
    stage("loading the SavedModel in TensorFlow")
    started = time.perf_counter()
    try:
        signature = tf.saved_model.load(str(directory)).signatures.get(SIGNATURE)
    except Exception as error:  # noqa: BLE001 (TensorFlow raises many types; any is the reason)
        raise TrialRefused(f"trial: not a loadable SavedModel: {error_line(error)}") from None
    open_ms = (time.perf_counter() - started) * 1000
    if signature is None:
        raise TrialRefused(f"SavedModel has no {SIGNATURE!r} signature")
    problem = signature_problem(tf, signature)
    if problem:
        raise TrialRefused(f"signature {SIGNATURE!r} {problem}")
    bounds = embedding_bounds(tf, signature)
    call_ms = score_batches(
        lambda users, products: run_signature(tf, signature, users, products),
        (bounds.users, bounds.products) if bounds else None,
        max_pairs,
        output_range,
        max_call_seconds,
        stage,
        error_line,
    )
    return TrialFigures.measured(open_ms, max_pairs, call_ms, base_mb)
