"""TensorFlow Serving over gRPC: `tensorflow.serving.PredictionService/Predict`, checked first with
`GetModelMetadata`. Its messages are TensorFlow's, so this imports TensorFlow (quietly, once:
`tensorflow_runtime`); imported with the first TensorFlow Serving model served over gRPC
(`tensorflow_serving`).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from flows.adapters.scorers.grpc_channel import open_channel, sorted_rpc_error
from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.remote import ServerModelMismatch, check_names
from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.adapters.scorers.transport import RequestError
from flows.core.scorer import INPUTS, OUTPUT, SIGNATURE


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
