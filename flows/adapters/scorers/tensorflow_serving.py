"""TensorFlow Serving scorers (model type TENSORFLOWSERVING), over REST and gRPC.

REST: `POST PREFIX/models/NAME[/versions/V]:predict` in the columnar ("inputs") format, checked first
with `GET .../metadata`. gRPC: `tensorflow.serving.PredictionService/Predict`, checked first with
`GetModelMetadata` (`tensorflow_serving_grpc`, imported with the first gRPC model). Both use the
`serving_default` signature. Location format: `flows.adapters.scorers.location`.
"""

from __future__ import annotations

import numpy as np

from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.remote import (
    RemoteScorer,
    ServerClient,
    ServerModelMismatch,
    build_remote_scorer,
    check_names,
    client_factories,
)
from flows.adapters.scorers.transport import JsonHttpClient, RequestError
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.scorer import INPUTS, OUTPUT, SIGNATURE, register


class TfServingRestClient:
    """TensorFlow Serving's REST API on one server."""

    def __init__(self, scheme: str, address: str, location: RemoteLocation) -> None:
        self._http = JsonHttpClient(scheme, address, location)
        self._model = location.model
        self._path = location.model_path

    def check_model(self) -> None:
        answer = self._http.request("GET", f"{self._path}/metadata")
        try:
            signature = answer["metadata"]["signature_def"]["signature_def"][SIGNATURE]
        except (KeyError, TypeError) as error:
            raise ServerModelMismatch(
                f"server's model {self._model!r} has no {SIGNATURE!r} signature"
            ) from error
        check_names(self._model, signature.get("inputs", {}), signature.get("outputs", {}))

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        body = {
            "signature_name": SIGNATURE,
            "inputs": {INPUTS[0]: users.reshape(-1, 1).tolist(), INPUTS[1]: products.reshape(-1, 1).tolist()},
        }
        outputs = self._http.request("POST", f"{self._path}:predict", body).get("outputs")
        if isinstance(outputs, dict):  # Several outputs come as a map, a single one as the bare list.
            outputs = outputs.get(OUTPUT)
        if outputs is None:
            raise RequestError(f"POST {self._path}:predict: answer has no {OUTPUT!r}")
        return np.asarray(outputs, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        self._http.close()


def _grpc_client(address: str, location: RemoteLocation) -> ServerClient:
    """The gRPC client, its module (and gRPC and TensorFlow with it) imported with the first model served
    over gRPC."""
    from flows.adapters.scorers.tensorflow_serving_grpc import TfServingGrpcClient

    return TfServingGrpcClient(address, location)


FACTORIES = client_factories(TfServingRestClient, _grpc_client)


@register(ModelType.TENSORFLOWSERVING)
def build_tensorflow_serving_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> RemoteScorer:
    """A scorer calling the TensorFlow Serving servers named by the descriptor's location."""
    return build_remote_scorer(descriptor, "tfserving", FACTORIES, policy)
