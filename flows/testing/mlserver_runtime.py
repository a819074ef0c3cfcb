"""A Seldon MLServer custom runtime that serves the recommender SavedModel over the Open Inference Protocol.

MLServer has no TensorFlow runtime of its own; this is the custom-runtime path its docs describe (an
`MLModel` with `load` and `predict`). `flows.testing.local_servers.mlserver` starts MLServer with it.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.core.scorer import INPUTS, SIGNATURE


class SavedModelRuntime(MLModel):
    """Feeds the request's `users` and `products` to the `serving_default` signature."""

    async def load(self) -> bool:
        self._tf = tensorflow()
        self._model = self._tf.saved_model.load(
            await get_model_uri(self._settings)
        )  # the signature needs it alive
        self._signature = self._model.signatures[SIGNATURE]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {tensor.name: tensor for tensor in payload.inputs}
        missing = [name for name in INPUTS if name not in given]
        if missing:
            raise InferenceError(
                f"missing input(s) {missing}; expected {list(INPUTS)}"
            )  # HTTP 400, gRPC INVALID_ARGUMENT
        try:
            feeds = {
                name: NumpyCodec.decode_input(given[name]).astype(np.float32).reshape(-1, 1)
                for name in INPUTS
            }
        except ValueError as error:
            raise InferenceError(f"inputs do not fit [N, 1] float32: {error}") from error
        if feeds[INPUTS[0]].shape != feeds[INPUTS[1]].shape:
            raise InferenceError(
                f"inputs differ in length: {feeds[INPUTS[0]].shape} vs {feeds[INPUTS[1]].shape}"
            )
        outputs = self._signature(**{name: self._tf.constant(value) for name, value in feeds.items()})
        encoded = [NumpyCodec.encode_output(name, tensor.numpy()) for name, tensor in outputs.items()]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=encoded)
