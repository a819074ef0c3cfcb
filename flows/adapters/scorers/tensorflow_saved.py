"""The embedded scorer: a TensorFlow SavedModel loaded into this process.

A descriptor of type TENSORFLOWSAVED carries either the model inline (`model_bytes`: a tar archive of the
SavedModel directory) or a local path under an allowed root (`model_source_location`: a directory, or a
`file://` URL). Before TensorFlow sees it, the model is unpacked and its graph inspected in a child process
with resource limits (`flows.core.admission.unpack`). The SavedModel must have a `serving_default` signature
with float32 inputs `users` and `products` of shape [N, 1] and a float32 output `predictions` of [N, 1].
The ids each input can take are read from the embeddings it indexes (`flows.core.admission.saved_model_bounds`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.core.admission.descriptor_checks import allowed_local_directory
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.saved_model_bounds import embedding_bounds
from flows.core.admission.unpack import UnpackRefused, unpack_and_inspect
from flows.core.records import ModelDescriptor, ModelType
from flows.core.scorer import INPUTS, OUTPUT, SIGNATURE, ModelLoadError, register


class SavedModelScorer:
    """Scores pairs with the `serving_default` signature of a loaded SavedModel."""

    source = "embedded:savedmodel"

    def __init__(self, model_name: str, directory: Path) -> None:
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
        problem = _signature_problem(tf, signature)
        if problem:
            raise ModelLoadError(model_name, f"signature {SIGNATURE!r} {problem}")
        self._signature = signature
        self.input_bounds = embedding_bounds(tf, signature)

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        tf = self._tf
        outputs = self._signature(
            users=tf.constant(users.reshape(-1, 1)), products=tf.constant(products.reshape(-1, 1))
        )
        scores = outputs[OUTPUT].numpy()
        if scores.shape not in ((users.size, 1), (users.size,)):
            raise ValueError(f"model returned {OUTPUT!r} of shape {scores.shape} for {users.size} pairs")
        return scores.reshape(-1)

    def close(self) -> None:
        # Dropping the references frees the model's variables; TensorFlow has no explicit unload.
        self._signature = None
        self._model = None


def _signature_problem(tf, signature) -> str | None:
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


@register(ModelType.TENSORFLOWSAVED)
def build_saved_model_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> SavedModelScorer:
    """Unpack and inspect (in a limited child process), then load the SavedModel."""
    name = descriptor.model_name
    if descriptor.model_bytes:
        with tempfile.TemporaryDirectory(prefix="savedmodel-") as scratch:
            try:
                unpack_and_inspect(descriptor.model_bytes, Path(scratch), policy)
            except UnpackRefused as error:
                raise ModelLoadError(name, str(error)) from error
            # Variables are read into memory at load, so the scratch directory can go right after.
            return SavedModelScorer(name, Path(scratch))
    if descriptor.model_source_location:
        try:
            directory = allowed_local_directory(descriptor.model_source_location, policy.roots)
        except ValueError as error:
            raise ModelLoadError(name, str(error)) from error
        if not directory.is_dir():
            raise ModelLoadError(name, f"no SavedModel directory at {directory}")
        try:
            unpack_and_inspect(None, directory, policy)
        except UnpackRefused as error:
            raise ModelLoadError(name, str(error)) from error
        return SavedModelScorer(name, directory)
    raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")
