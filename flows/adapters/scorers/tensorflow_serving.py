"""TensorFlow Serving scorers (model type TENSORFLOWSERVING), over REST and gRPC.

REST: `POST PREFIX/models/NAME[/versions/V]:predict` in the columnar ("inputs") format, checked first
with `GET .../metadata`. gRPC: `tensorflow.serving.PredictionService/Predict`, checked first with
`GetModelMetadata`. Both use the `serving_default` signature. Location format:
`flows.adapters.scorers.location`.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.remote import (
    RemoteScorer,
    ServerModelMismatch,
    build_remote_scorer,
    check_names,
    client_factories,
)
from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.adapters.scorers.transport import JsonHttpClient, RequestError, open_channel, sorted_rpc_error
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


def _float_tensor(values: np.ndarray) -> Any:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[
            tensor_shape_pb2.TensorShapeProto.Dim(size=values.size),
            tensor_shape_pb2.TensorShapeProto.Dim(size=1),
        ]
    )
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=values.astype(np.float32).tobytes()
    )


def _tensor_values(tensor: Any) -> np.ndarray:
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=np.float32)
    return np.asarray(tensor.float_val, dtype=np.float32)


class TfServingGrpcClient:
    """TensorFlow Serving's gRPC PredictionService on one server; the channel lives as long as the scorer."""

    def __init__(self, address: str, location: RemoteLocation) -> None:
        tensorflow()  # tensorflow_serving imports TensorFlow: do it the quiet way first.
        from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

        self._messages = (get_model_metadata_pb2, predict_pb2)
        self._channel = open_channel(address, location)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model = location.model
        self._version = location.version
        self._timeout_s = location.timeout_s
        self._metadata = location.headers

    def _model_spec(self, spec: Any) -> None:
        spec.name = self._model
        spec.signature_name = SIGNATURE
        if self._version is None:
            return
        if self._version.isdigit():
            spec.version.value = int(self._version)
        else:
            spec.version_label = self._version

    def check_model(self) -> None:
        metadata_pb2, _ = self._messages
        request = metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        try:
            response = self._stub.GetModelMetadata(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise sorted_rpc_error("GetModelMetadata", error) from error
        signatures = metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE not in signatures.signature_def:
            raise ServerModelMismatch(f"server's model {self._model!r} has no {SIGNATURE!r} signature")
        signature = signatures.signature_def[SIGNATURE]
        check_names(self._model, signature.inputs, signature.outputs)

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        _, predict_pb2 = self._messages
        request = predict_pb2.PredictRequest(output_filter=[OUTPUT])
        self._model_spec(request.model_spec)
        request.inputs[INPUTS[0]].CopyFrom(_float_tensor(users))
        request.inputs[INPUTS[1]].CopyFrom(_float_tensor(products))
        try:
            response = self._stub.Predict(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise sorted_rpc_error("Predict", error) from error
        if OUTPUT not in response.outputs:
            raise RequestError(f"Predict: answer has no {OUTPUT!r}")
        return _tensor_values(response.outputs[OUTPUT])

    def close(self) -> None:
        self._channel.close()


FACTORIES = client_factories(TfServingRestClient, TfServingGrpcClient)


@register(ModelType.TENSORFLOWSERVING)
def build_tensorflow_serving_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> RemoteScorer:
    """A scorer calling the TensorFlow Serving servers named by the descriptor's location."""
    return build_remote_scorer(descriptor, "tfserving", FACTORIES, policy)
