"""The embedded PMML scorer: a PMML regression model run in this process by `sklearn-pmml-model`, one
vectorised call per micro-batch.

A descriptor of type PMML carries the document inline (`model_bytes`: the `.pmml` file itself, or a tar
archive holding `model.pmml`) or a local path under an allowed root (a `.pmml` file, or a directory holding
`model.pmml`). Before the evaluator opens it here, the limited child process vets the document
(`flows.core.admission.pmml_guard`: no DTD or entity, bounded size and shape, the contract's fields), then
loads it and scores the largest batch the flow will send (`flows.core.admission.pmml_trial`); the probe
batches follow, as for every scorer. The evaluator is imported here on the first PMML model only; without
the `pmml` extra, a PMML descriptor is refused with the command that installs it, and the flow keeps
serving its current model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from flows.core.admission.descriptor_checks import allowed_local_directory
from flows.core.admission.pmml_guard import PmmlRefused, PmmlSummary
from flows.core.admission.pmml_trial import EvaluatorMissing, PmmlModel
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.trial import TrialFigures
from flows.core.admission.unpack import UnpackRefused, unpack_and_inspect
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.model_formats import PMML, PMML_MODEL_FILE
from flows.core.scorer import InputBounds, ModelLoadError, register

log = logging.getLogger(__name__)


class PmmlScorer:
    """Scores pairs with a vetted PMML regression model. `trial` is what the model cost in its trial run."""

    source = "embedded:pmml"
    # A PMML model takes any number: the ids it was trained on are not in the document.
    input_bounds: InputBounds | None = None

    def __init__(
        self,
        model_name: str,
        path: Path,
        summary: PmmlSummary,
        scratch: tempfile.TemporaryDirectory,
        trial: TrialFigures,
    ) -> None:
        self._scratch: tempfile.TemporaryDirectory | None = scratch
        self.trial = trial
        try:
            self._model: PmmlModel | None = PmmlModel(path, summary)
        except (PmmlRefused, EvaluatorMissing) as error:
            self.close()
            raise ModelLoadError(model_name, str(error)) from error

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        assert self._model is not None, "scored after close"
        return self._model.score(users, products)

    def close(self) -> None:
        self._model = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


@register(ModelType.PMML)
def build_pmml_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> PmmlScorer:
    """Vet and try the document (in a limited child process), then load it with the evaluator."""
    name = descriptor.model_name
    scratch = tempfile.TemporaryDirectory(prefix="pmml-")
    directory = Path(scratch.name)
    try:
        if not descriptor.model_bytes:
            _copy_local_document(descriptor, policy, directory)
        verdict = unpack_and_inspect(descriptor.model_bytes or None, directory, policy, PMML)
    except ModelLoadError:
        scratch.cleanup()
        raise
    except UnpackRefused as error:
        scratch.cleanup()
        raise ModelLoadError(name, str(error)) from error
    summary, figures = PmmlSummary.from_json(verdict["pmml"]), TrialFigures.from_json(verdict["trial"])
    scorer = PmmlScorer(name, directory / PMML_MODEL_FILE, summary, scratch, figures)
    log.info("PMML model passed its %s", figures.summary())
    return scorer


def _copy_local_document(descriptor: ModelDescriptor, policy: AdmissionPolicy, directory: Path) -> None:
    """Copy the document at the descriptor's location (a `.pmml` file, or a directory holding
    `model.pmml`) into `directory`, where the child vets it: the file at the location may change after."""
    name = descriptor.model_name
    if not descriptor.model_source_location:
        raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")
    try:
        location = allowed_local_directory(descriptor.model_source_location, policy.roots)
    except ValueError as error:
        raise ModelLoadError(name, str(error)) from error
    document = location / PMML_MODEL_FILE if location.is_dir() else location
    if not document.is_file():
        raise ModelLoadError(
            name, f"no PMML document at {location} (a .pmml file, or a directory holding model.pmml)"
        )
    size = document.stat().st_size
    if size > policy.max_unpacked_bytes:
        raise ModelLoadError(
            name,
            f"{document} is {size:,} bytes, over {policy.max_unpacked_bytes:,} "
            "(SERVING_MODEL_MAX_UNPACKED_BYTES)",
        )
    shutil.copyfile(document, directory / PMML_MODEL_FILE)
