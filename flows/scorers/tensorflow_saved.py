"""The embedded scorer: a TensorFlow SavedModel loaded into this process.

A descriptor of type TENSORFLOWSAVED carries either the model inline (`model_bytes`: a tar archive of the
SavedModel directory) or a local path (`model_source_location`: a directory, or a `file://` URL). The
SavedModel must have a `serving_default` signature with float32 inputs `users` and `products` of shape
[N, 1] and an output `predictions`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from flows.records import ModelDescriptor, ModelType
from flows.scorers.archive import UnsafeArchiveError, unpack_archive
from flows.scorers.base import INPUTS, OUTPUT, SIGNATURE, ModelLoadError, register
from flows.tensorflow_runtime import tensorflow


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
        inputs = signature.structured_input_signature[1]
        if set(inputs) != set(INPUTS) or OUTPUT not in signature.structured_outputs:
            raise ModelLoadError(
                model_name,
                f"signature {SIGNATURE!r} takes {sorted(inputs)} and returns {sorted(signature.structured_outputs)}; "
                f"expected inputs {list(INPUTS)} and output {OUTPUT!r}",
            )
        self._signature = signature

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        tf = self._tf
        outputs = self._signature(
            users=tf.constant(users.reshape(-1, 1)), products=tf.constant(products.reshape(-1, 1))
        )
        return outputs[OUTPUT].numpy().reshape(-1)

    def close(self) -> None:
        # Dropping the references frees the model's variables; TensorFlow has no explicit unload.
        self._signature = None
        self._model = None


def local_path(location: str) -> Path:
    """The directory named by a plain path or a file:// URL."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme:
        raise ValueError(f"location {location!r} is not a local path (scheme {parsed.scheme!r})")
    return Path(location)


@register(ModelType.TENSORFLOWSAVED)
def build_saved_model_scorer(descriptor: ModelDescriptor) -> SavedModelScorer:
    """Load the SavedModel from the descriptor's inline archive or local path."""
    name = descriptor.model_name
    if descriptor.model_bytes:
        with tempfile.TemporaryDirectory(prefix="savedmodel-") as scratch:
            try:
                unpack_archive(descriptor.model_bytes, Path(scratch))
            except UnsafeArchiveError as error:
                raise ModelLoadError(name, str(error)) from error
            # Variables are read into memory at load, so the scratch directory can go right after.
            return SavedModelScorer(name, Path(scratch))
    if descriptor.model_source_location:
        try:
            directory = local_path(descriptor.model_source_location)
        except ValueError as error:
            raise ModelLoadError(name, str(error)) from error
        if not directory.is_dir():
            raise ModelLoadError(name, f"no SavedModel directory at {directory}")
        return SavedModelScorer(name, directory)
    raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")
