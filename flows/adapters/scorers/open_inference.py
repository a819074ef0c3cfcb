"""Open Inference Protocol (V2) scorers (model type OPENINFERENCE), over REST and gRPC.

The protocol of Seldon MLServer, Seldon Core 2, KServe and Triton. REST: `POST
PREFIX/models/NAME[/versions/V]/infer` (PREFIX is normally `/v2`), checked first with `GET` on the
model's path (its metadata). gRPC: `inference.GRPCInferenceService/ModelInfer`, checked first with
`ModelMetadata`; the stubs come from tritonclient, which ships the standard service definition.
Inputs are sent as FP32 tensors `users` and `products` of shape [N, 1]; the output `predictions` is read.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.remote import RemoteScorer, build_remote_scorer, check_names, client_factories
from flows.adapters.scorers.transport import JsonHttpClient, RequestError, open_channel, sorted_rpc_error
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
        _check_declared_names(self._model, metadata.get("inputs") or [], metadata.get("outputs") or [])

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


def _check_declared_names(model: str, inputs: list[Any], outputs: list[Any]) -> None:
    # Servers need not declare tensors (an MLServer runtime without a signature declares none):
    # check only what is declared.
    if inputs or outputs:
        check_names(model, (_name(tensor) for tensor in inputs), (_name(tensor) for tensor in outputs))


def _name(tensor: Any) -> str:
    return tensor["name"] if isinstance(tensor, dict) else tensor.name


# Output datatype -> (typed contents field, raw little-endian dtype).
_CONTENTS = {"FP32": ("fp32_contents", "<f4"), "FP64": ("fp64_contents", "<f8")}


class OpenInferenceGrpcClient:
    """The V2 gRPC service on one server; the channel lives as long as the scorer."""

    def __init__(self, address: str, location: RemoteLocation) -> None:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._messages = service_pb2
        self._channel = open_channel(address, location)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._model = location.model
        self._version = location.version or ""
        self._timeout_s = location.timeout_s
        self._metadata = location.headers

    def check_model(self) -> None:
        request = self._messages.ModelMetadataRequest(name=self._model, version=self._version)
        try:
            response = self._stub.ModelMetadata(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise sorted_rpc_error("ModelMetadata", error) from error
        _check_declared_names(self._model, list(response.inputs), list(response.outputs))

    def _input(self, name: str, values: np.ndarray) -> Any:
        tensor = self._messages.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP32", shape=[values.size, 1]
        )
        tensor.contents.fp32_contents.extend(values.tolist())
        return tensor

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        messages = self._messages
        request = messages.ModelInferRequest(
            model_name=self._model,
            model_version=self._version,
            inputs=[self._input(INPUTS[0], users), self._input(INPUTS[1], products)],
            outputs=[messages.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT)],
        )
        try:
            response = self._stub.ModelInfer(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise sorted_rpc_error("ModelInfer", error) from error
        for index, output in enumerate(response.outputs):
            if output.name == OUTPUT:
                # Servers answer either in typed contents or, like Triton, in raw little-endian bytes.
                if output.datatype not in _CONTENTS:
                    raise RequestError(
                        f"ModelInfer: output {OUTPUT!r} is {output.datatype}, expected FP32 or FP64"
                    )
                field, raw_type = _CONTENTS[output.datatype]
                if index < len(response.raw_output_contents):
                    return np.frombuffer(response.raw_output_contents[index], dtype=raw_type).astype(
                        np.float32
                    )
                return np.asarray(getattr(output.contents, field), dtype=np.float32)
        raise RequestError(f"ModelInfer: answer has no output {OUTPUT!r}")

    def close(self) -> None:
        self._channel.close()


FACTORIES = client_factories(OpenInferenceRestClient, OpenInferenceGrpcClient)


@register(ModelType.OPENINFERENCE)
def build_open_inference_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> RemoteScorer:
    """A scorer calling the V2 inference servers named by the descriptor's location."""
    return build_remote_scorer(descriptor, "v2", FACTORIES, policy)
