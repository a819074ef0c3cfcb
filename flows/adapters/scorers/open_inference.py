"""Open Inference Protocol (V2) scorers (model type OPENINFERENCE), over REST and gRPC.

The protocol of Seldon MLServer, Seldon Core 2, KServe and Triton. REST: `POST
PREFIX/models/NAME[/versions/V]/infer` (PREFIX is normally `/v2`), checked first with `GET` on the
model's path (its metadata). gRPC: `inference.GRPCInferenceService/ModelInfer`, checked first with
`ModelMetadata` (`open_inference_grpc`, imported with the first gRPC model).
Inputs are sent as FP32 tensors `users` and `products` of shape [N, 1]; the output `predictions` is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.remote import (
    RemoteScorer,
    ServerClient,
    build_remote_scorer,
    check_names,
    client_factories,
)
from flows.adapters.scorers.transport import JsonHttpClient, RequestError
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.scorer import INPUTS, OUTPUT, register


class OpenInferenceRestClient:
    """The V2 REST API on one server."""

    def __init__(self, scheme: str, address: str, location: RemoteLocation) -> None:
        self._http = JsonHttpClient(scheme, address, location)
        self._model = location.model
        self._path = location.model_path

    def check_model(self) -> None:
        metadata = self._http.request("GET", self._path)
        check_declared_names(self._model, metadata.get("inputs") or [], metadata.get("outputs") or [])

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        shape = [int(users.size), 1]
        body = {
            "inputs": [
                {"name": INPUTS[0], "shape": shape, "datatype": "FP32", "data": users.tolist()},
                {"name": INPUTS[1], "shape": shape, "datatype": "FP32", "data": products.tolist()},
            ],
            "outputs": [{"name": OUTPUT}],
        }
        answer = self._http.request("POST", f"{self._path}/infer", body)
        for output in answer.get("outputs", []):
            if output.get("name") == OUTPUT:
                return np.asarray(output["data"], dtype=np.float32).reshape(-1)
        raise RequestError(f"POST {self._path}/infer: answer has no output {OUTPUT!r}")

    def close(self) -> None:
        self._http.close()


def check_declared_names(model: str, inputs: list[Any], outputs: list[Any]) -> None:
    """`check_names` on the tensors a server's metadata declares (REST: dicts, gRPC: messages).

    Servers need not declare tensors (an MLServer runtime without a signature declares none): only what
    is declared is checked."""
    if inputs or outputs:
        check_names(model, (_name(tensor) for tensor in inputs), (_name(tensor) for tensor in outputs))


def _name(tensor: Any) -> str:
    return tensor["name"] if isinstance(tensor, dict) else tensor.name


def _grpc_client(address: str, location: RemoteLocation) -> ServerClient:
    """The gRPC client, its module (and gRPC with it) imported with the first model served over gRPC."""
    from flows.adapters.scorers.open_inference_grpc import OpenInferenceGrpcClient

    return OpenInferenceGrpcClient(address, location)


FACTORIES = client_factories(OpenInferenceRestClient, _grpc_client)


@register(ModelType.OPENINFERENCE)
def build_open_inference_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> RemoteScorer:
    """A scorer calling the V2 inference servers named by the descriptor's location."""
    return build_remote_scorer(descriptor, "v2", FACTORIES, policy)
