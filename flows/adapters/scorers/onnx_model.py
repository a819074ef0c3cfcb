"""The embedded ONNX scorer: an ONNX model run in this process by ONNX Runtime, one call per micro-batch.

A descriptor of type ONNX carries either the model inline (`model_bytes`: a tar archive holding `model.onnx`
and any external-data files it names) or a local path under an allowed root (a directory holding
`model.onnx`, or that file). Before ONNX Runtime opens it here, the limited child process unpacks and vets
it (`flows.core.admission.unpack`, rules in `flows.core.admission.onnx_graph`), then opens it and scores the
largest batch the flow will send (`flows.core.admission.onnx_trial`, which also says why the session's
options are what they are); the probe batches follow, as for every scorer.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from flows.core.admission.descriptor_checks import allowed_local_directory
from flows.core.admission.onnx_graph import OnnxRefused, embedding_tables, table_rows
from flows.core.admission.onnx_trial import feeds_of, open_session, run_session
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.trial import TrialFigures
from flows.core.admission.unpack import UnpackRefused, unpack_and_inspect
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.embeddings import EmbeddingTables
from flows.core.model_formats import ONNX, ONNX_MODEL_FILE
from flows.core.scorer import InputBounds, ModelLoadError, register

log = logging.getLogger(__name__)


class OnnxScorer:
    """Scores pairs with an ONNX model's `predictions` output, feeding ids in the type the model declares.
    `trial` is what the model cost in its trial run (None for a scorer built without one, in tests)."""

    source = "embedded:onnx"

    def __init__(
        self,
        model_name: str,
        path: Path,
        scratch: tempfile.TemporaryDirectory | None = None,
        trial: TrialFigures | None = None,
    ) -> None:
        self._scratch = scratch  # the unpacked archive, kept while the session may read its external data
        self.trial = trial
        try:
            self._session = open_session(path)
            self._feeds = feeds_of(self._session)
        except OnnxRefused as error:
            self.close()
            raise ModelLoadError(model_name, str(error)) from error
        except Exception as error:  # onnxruntime raises its own exception types from C++, with no common base
            self.close()
            raise ModelLoadError(
                model_name, f"ONNX Runtime cannot load it: {type(error).__name__}: {error}"
            ) from error
        graph = onnx.load_model(str(path), load_external_data=False).graph
        tables = embedding_tables(graph)  # traced once: they give both the bounds and the neighbours
        self.input_bounds = InputBounds(*table_rows(graph, tables)) if tables else None
        self.embeddings = _embeddings(graph, tables, self.input_bounds)

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return run_session(self._session, self._feeds, users, products)

    def close(self) -> None:
        self._session = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _embeddings(
    graph: onnx.GraphProto, names: tuple[str, str] | None, bounds: InputBounds | None
) -> EmbeddingTables | None:
    """The tables the inputs gather from (`names`), for explanations' neighbours; None for tables kept as
    external data (read only by ONNX Runtime) or unfit (`EmbeddingTables.of` checks them)."""
    if names is None or bounds is None:
        return None
    by_name = {tensor.name: tensor for tensor in graph.initializer}
    users, products = (by_name[name] for name in names)
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in (users, products)):
        return None
    return EmbeddingTables.of(numpy_helper.to_array(users), numpy_helper.to_array(products), bounds)


@register(ModelType.ONNX)
def build_onnx_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> OnnxScorer:
    """Unpack and vet (in a limited child process), then open an ONNX Runtime session."""
    name = descriptor.model_name
    if descriptor.model_bytes:
        scratch = tempfile.TemporaryDirectory(prefix="onnx-")
        directory = Path(scratch.name)
        try:
            verdict = unpack_and_inspect(descriptor.model_bytes, directory, policy, ONNX)
        except UnpackRefused as error:
            scratch.cleanup()
            raise ModelLoadError(name, str(error)) from error
        return OnnxScorer(name, directory / ONNX_MODEL_FILE, scratch, _figures(verdict))
    if descriptor.model_source_location:
        try:
            location = allowed_local_directory(descriptor.model_source_location, policy.roots)
        except ValueError as error:
            raise ModelLoadError(name, str(error)) from error
        directory = location.parent if location.name == ONNX_MODEL_FILE and location.is_file() else location
        if not directory.is_dir():
            raise ModelLoadError(name, f"no ONNX model directory at {directory}")
        try:
            verdict = unpack_and_inspect(None, directory, policy, ONNX)
        except UnpackRefused as error:
            raise ModelLoadError(name, str(error)) from error
        return OnnxScorer(name, directory / ONNX_MODEL_FILE, trial=_figures(verdict))
    raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")


def _figures(verdict: dict) -> TrialFigures:
    figures = TrialFigures.from_json(verdict["trial"])
    log.info("ONNX model passed its %s", figures.summary())
    return figures
