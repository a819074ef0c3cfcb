"""PMML models in process: the evaluator that scores them, and their trial run in the admission child.

The evaluator is `sklearn-pmml-model` (BSD-2, pure Python over scikit-learn): it turns a PMML document into
a scikit-learn estimator, so a micro-batch of (user, product) pairs is one vectorised `predict`. It is an
install extra (`pip install 'bytewax-model-serving[pmml]'`), imported on the first PMML model only (2 s and
~150 MB on this machine), never by a flow that serves none. Only regression models with a continuous target
are served (the contract: `users` and `products` in, one number out); the class for each PMML model element
is chosen here from what the guard read (`flows.core.admission.pmml_guard`), not by the evaluator's own
auto-detection, which scans the raw text line by line and parses the document twice.

The evaluator parses with ElementTree and checks nothing of its own (no size cap, no version, entities
expanded): it only ever sees a document the guard passed. It raises bare `Exception` for what it cannot load;
the message is the reason given. What a model costs (memory, time per call) is measured by its trial, in
the child, before the flow's process loads it (`flows.core.admission.trial`).
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flows.core.admission.pmml_guard import PmmlLimits, PmmlRefused, PmmlSummary, check_contract, check_pmml
from flows.core.admission.trial import OUT_OF_MEMORY, TrialFigures, error_line, peak_mb, score_batches
from flows.core.errors import ServingError, WrongScoreCount
from flows.core.scorer import INPUTS as CONTRACT_INPUTS

INSTALL = "pip install 'bytewax-model-serving[pmml]'"
# The evaluator's regressor for each served PMML model element (a MiningModel by how its segments combine).
REGRESSORS = {
    ("TreeModel", None): "tree.PMMLTreeRegressor",
    ("MiningModel", "sum"): "ensemble.PMMLGradientBoostingRegressor",
    ("MiningModel", "average"): "ensemble.PMMLForestRegressor",
    ("RegressionModel", None): "linear_model.PMMLLinearRegression",
    ("GeneralRegressionModel", None): "linear_model.PMMLRidge",
    ("NearestNeighborModel", None): "neighbors.PMMLKNeighborsRegressor",
    ("SupportVectorMachineModel", None): "svm.PMMLSVR",
    ("NeuralNetwork", None): "neural_network.PMMLMLPRegressor",
}
SERVED_MODELS = frozenset(element for element, _ in REGRESSORS)


class EvaluatorMissing(ServingError):
    """The PMML evaluator is not installed; the message says how to install it."""


def served_limits(max_bytes: int) -> PmmlLimits:
    """The guard's limits for a document of at most `max_bytes` whose model the evaluator serves."""
    return PmmlLimits(max_bytes=min(max_bytes, PmmlLimits.max_bytes), allowed_models=SERVED_MODELS)


def regressor_class(summary: PmmlSummary) -> type:
    """The evaluator's class for `summary`'s model; PmmlRefused for a model it does not serve,
    EvaluatorMissing without the evaluator."""
    segmentation = summary.segmentation if summary.model_type == "MiningModel" else None
    name = REGRESSORS.get((summary.model_type, segmentation))
    if name is None:
        served = sorted(f"{element}" + (f" ({method})" if method else "") for element, method in REGRESSORS)
        raise PmmlRefused(
            f"a {summary.model_type} with multipleModelMethod={segmentation!r} is not served "
            f"(served: {', '.join(served)})"
        )
    module_name, class_name = name.rsplit(".", 1)
    try:
        module = importlib.import_module(f"sklearn_pmml_model.{module_name}")
    except ImportError:
        raise EvaluatorMissing(f"the PMML evaluator is not installed: {INSTALL}") from None
    return getattr(module, class_name)


class PmmlModel:
    """A PMML regressor loaded by the evaluator, fed its inputs in the order its DataDictionary lists them."""

    def __init__(self, path: Path, summary: PmmlSummary) -> None:
        estimator_class = regressor_class(summary)
        try:
            self.estimator: Any = estimator_class(str(path))
        except Exception as error:  # noqa: BLE001 (the evaluator raises bare Exception: its text is the reason)
            raise PmmlRefused(f"the PMML evaluator cannot load it: {_why(error)}") from None
        self.columns = [field.name for field in summary.data_fields if field.name in CONTRACT_INPUTS]

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """One `predict` over the pairs: float32 scores, one per pair."""
        given = {"users": users, "products": products}
        features = np.column_stack([np.asarray(given[name], np.float64) for name in self.columns])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's notes on feature names, per call
            scores = np.asarray(self.estimator.predict(features))
        if scores.shape != (users.size,):
            raise WrongScoreCount(
                f"PMML model returned scores of shape {scores.shape} for {users.size:,} pairs"
            )
        return scores.astype(np.float32)


def vet(path: Path, max_bytes: int) -> PmmlSummary:
    """The guard's pass and the contract's check over the document at `path`; PmmlRefused naming the cause."""
    summary = check_pmml(path, served_limits(max_bytes))
    check_contract(summary, CONTRACT_INPUTS)
    return summary


def trial(
    path: Path,
    summary: PmmlSummary,
    max_pairs: int,
    output_range: tuple[float, float],
    max_call_seconds: float,
    stage: Callable[[str], None],
) -> TrialFigures:
    """Load the vetted document at `path` and score batches up to `max_pairs` (see
    `flows.core.admission.trial.score_batches`); PmmlRefused if the evaluator cannot load it, TrialRefused
    naming what failed in a call."""
    base_mb = peak_mb()
    stage("loading the PMML model")
    started = time.perf_counter()
    model = PmmlModel(path, summary)
    open_ms = (time.perf_counter() - started) * 1000
    call_ms = score_batches(model.score, None, max_pairs, output_range, max_call_seconds, stage, _why)
    return TrialFigures.measured(open_ms, max_pairs, call_ms, base_mb)


def _why(error: BaseException) -> str:
    """The error's first line; an allocation that failed is named as the limit it met."""
    return OUT_OF_MEMORY if isinstance(error, MemoryError) else error_line(error)
