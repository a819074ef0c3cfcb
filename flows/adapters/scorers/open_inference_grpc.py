"""The Open Inference Protocol (V2) over gRPC: `inference.GRPCInferenceService/ModelInfer`, checked first with
`ModelMetadata`; the stubs come from tritonclient, which ships the standard service definition. Imported
with the first V2 model served over gRPC (`open_inference`).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from flows.adapters.scorers.grpc_channel import open_channel, sorted_rpc_error
from flows.adapters.scorers.location import RemoteLocation
from flows.adapters.scorers.open_inference import check_declared_names
from flows.adapters.scorers.transport import RequestError
from flows.core.scorer import INPUTS, OUTPUT

# Output datatype -> (typed contents field, raw little-endian dtype).
_CONTENTS = {"FP32": ("fp32_contents", "<f4"), "FP64": ("fp64_contents", "<f8")}


class OpenInferenceGrpcClient:
    """The V2 gRPC service on one server; the channel lives as long as the scorer."""

    def __init__(self, address: str, location: RemoteLocation) -> None:
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
        check_declared_names(self._model, list(response.inputs), list(response.outputs))

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
