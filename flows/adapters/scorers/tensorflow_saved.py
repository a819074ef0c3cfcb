"""The embedded scorer: a TensorFlow SavedModel loaded into this process.

A descriptor of type TENSORFLOWSAVED carries either the model inline (`model_bytes`: a tar archive of the
SavedModel directory) or a local path under an allowed root (`model_source_location`: a directory, or a
`file://` URL). Before TensorFlow sees it in this process, the model is unpacked, its graph inspected and
the model tried on the batch sizes the flow will send, in a child process with resource limits
(`flows.core.admission.unpack`, `flows.core.admission.saved_model_trial`); the probe batches follow, as
for every scorer. The SavedModel must have a `serving_default` signature with float32 inputs `users` and
`products` of shape [N, 1] and a float32 output `predictions` of [N, 1]. The ids each input can take are
read from the embeddings it indexes (`flows.core.admission.saved_model_bounds`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.core.admission.descriptor_checks import allowed_local_directory
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.saved_model_bounds import embedding_bounds, embedding_tables, indexed_tables
from flows.core.admission.saved_model_trial import run_signature, signature_problem
from flows.core.admission.trial import TrialFigures
from flows.core.admission.unpack import UnpackRefused, unpack_and_inspect
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.embeddings import MAX_TABLE_VALUES, EmbeddingTables
from flows.core.scorer import SIGNATURE, InputBounds, ModelLoadError, register

log = logging.getLogger(__name__)


class SavedModelScorer:
    """Scores pairs with the `serving_default` signature of a loaded SavedModel. `trial` is what the model
    cost in its trial run (None for a scorer built without one, in tests)."""

    source = "embedded:savedmodel"

    def __init__(self, model_name: str, directory: Path, trial: TrialFigures | None = None) -> None:
        self.trial = trial
        tf = tensorflow()
        self._tf = tf
        try:
            self._model = tf.saved_model.load(str(directory))
        except Exception as error:
            raise ModelLoadError(
                model_name, f"not a loadable SavedModel: {type(error).__name__}: {error}"
            ) from error
        signature = getattr(self._model, "signatures", {}).get(SIGNATURE)
        if signature is None:
            raise ModelLoadError(model_name, f"SavedModel has no {SIGNATURE!r} signature")
        problem = signature_problem(tf, signature)
        if problem:
            raise ModelLoadError(model_name, f"signature {SIGNATURE!r} {problem}")
        self._signature = signature
        indexed = indexed_tables(signature)  # traced once: they give both the bounds and the neighbours
        self.input_bounds = embedding_bounds(tf, signature, indexed)
        self.embeddings = _embeddings(embedding_tables(signature, indexed), self.input_bounds)

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return run_signature(self._tf, self._signature, users, products)

    def close(self) -> None:
        # Dropping the references frees the model's variables; TensorFlow has no explicit unload.
        self._signature = None
        self._model = None


def _embeddings(tables: tuple[Any, Any] | None, bounds: InputBounds | None) -> EmbeddingTables | None:
    """The tables the inputs index, for explanations' neighbours (`EmbeddingTables.of` checks them)."""
    if tables is None or any((table.shape.num_elements() or 0) > MAX_TABLE_VALUES for table in tables):
        return None  # (read only within the bound: the copy costs the table's memory)
    users, products = (np.asarray(table.numpy()) for table in tables)
    return EmbeddingTables.of(users, products, bounds)


@register(ModelType.TENSORFLOWSAVED)
def build_saved_model_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> SavedModelScorer:
    """Unpack, inspect and try (in a limited child process), then load the SavedModel."""
    name = descriptor.model_name
    if descriptor.model_bytes:
        with tempfile.TemporaryDirectory(prefix="savedmodel-") as scratch:
            try:
                verdict = unpack_and_inspect(descriptor.model_bytes, Path(scratch), policy)
            except UnpackRefused as error:
                raise ModelLoadError(name, str(error)) from error
            # Variables are read into memory at load, so the scratch directory can go right after.
            return SavedModelScorer(name, Path(scratch), _figures(verdict))
    if descriptor.model_source_location:
        try:
            directory = allowed_local_directory(descriptor.model_source_location, policy.roots)
        except ValueError as error:
            raise ModelLoadError(name, str(error)) from error
        if not directory.is_dir():
            raise ModelLoadError(name, f"no SavedModel directory at {directory}")
        try:
            verdict = unpack_and_inspect(None, directory, policy)
        except UnpackRefused as error:
            raise ModelLoadError(name, str(error)) from error
        return SavedModelScorer(name, directory, _figures(verdict))
    raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")


def _figures(verdict: dict) -> TrialFigures | None:
    """The trial's figures, or None for a shipped model, which had none."""
    if verdict.get("trial") is None:
        log.info("SavedModel is the shipped model %s, trusted without a trial", verdict.get("shipped"))
        return None
    figures = TrialFigures.from_json(verdict["trial"])
    log.info("SavedModel passed its %s", figures.summary())
    return figures
