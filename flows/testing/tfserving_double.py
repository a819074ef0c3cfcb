"""A stand-in for TensorFlow Serving that speaks its real REST and gRPC protocols over one SavedModel.

The `tensorflow_model_server` binary cannot be installed here (the Kubernetes manifests use the real
`tensorflow/serving` image), so the tests and benchmarks run this instead. It implements what the
scorers use, the way TensorFlow Serving does: `PredictionService/Predict` and `GetModelMetadata` over
gRPC (servicer base from tensorflow-serving-api), and `GET /v1/models/NAME[/versions/V][/metadata]`
and `POST /v1/models/NAME[/versions/V]:predict` (columnar "inputs" or row "instances") over REST.

    python -m flows.testing.tfserving_double --model-dir models/recommender/1 --name recommender \
        --version 1 --rest-port 8501 --grpc-port 8500
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import ssl
import threading
from collections.abc import Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.core.scorer import INPUTS, OUTPUT, SIGNATURE

_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<action>/metadata|:predict)?$"
)


class ServedModel:
    """The SavedModel behind both protocols, with TensorFlow Serving's name/version checks."""

    def __init__(self, model_dir: str, name: str, version: int) -> None:
        self.tf = tensorflow()
        self.model = self.tf.saved_model.load(model_dir)
        self.signature = self.model.signatures[SIGNATURE]
        self.name = name
        self.version = version

    def find(self, name: str, version: int | None) -> str | None:
        """None if this model/version is served, else TensorFlow Serving's not-found message."""
        if name != self.name:
            return f"Servable not found for request: Latest({name})"
        if version is not None and version != self.version:
            return f"Servable not found for request: Specific({name}, {version})"
        return None

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        tf = self.tf
        outputs = self.signature(
            users=tf.constant(users.reshape(-1, 1), tf.float32),
            products=tf.constant(products.reshape(-1, 1), tf.float32),
        )
        return outputs[OUTPUT].numpy()

    def signature_json(self) -> dict[str, Any]:
        def tensors(names: list[str]) -> dict[str, Any]:
            shape = {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
            return {
                n: {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": f"serving_default_{n}:0"}
                for n in names
            }

        return {
            "inputs": tensors(list(self.signature.structured_input_signature[1])),
            "outputs": tensors(list(self.signature.structured_outputs)),
            "method_name": "tensorflow/serving/predict",
        }


def grpc_server(
    model: ServedModel,
    port: int,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> grpc.Server:
    """TensorFlow Serving's PredictionService (Predict, GetModelMetadata); TLS when given `credentials`."""
    from tensorflow.core.framework import tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    def check(spec: Any, context: grpc.ServicerContext) -> None:
        version = spec.version.value if spec.HasField("version") else None
        missing = model.find(spec.name, version)
        if missing:
            context.abort(grpc.StatusCode.NOT_FOUND, missing)
        if spec.signature_name not in ("", SIGNATURE):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature key {spec.signature_name!r} not found."
            )

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
            check(request.model_spec, context)
            missing = [name for name in INPUTS if name not in request.inputs]
            if missing:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input tensor(s) {missing} not found")
            users, products = (model.tf.make_ndarray(request.inputs[name]) for name in INPUTS)
            if users.shape != products.shape:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"shapes differ: {users.shape} vs {products.shape}"
                )
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            response.model_spec.version.value = model.version
            response.outputs[OUTPUT].CopyFrom(model.tf.make_tensor_proto(model.predict(users, products)))
            return response

        def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
            check(request.model_spec, context)
            signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for names, tensors in ((INPUTS, signature.inputs), ((OUTPUT,), signature.outputs)):
                for name in names:
                    tensors[name].dtype = types_pb2.DT_FLOAT
                    tensors[name].tensor_shape.CopyFrom(
                        tensor_shape_pb2.TensorShapeProto(dim=[{"size": -1}, {"size": 1}])
                    )
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def[SIGNATURE].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.metadata["signature_def"].Pack(signatures)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    if credentials is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    return server


def rest_server(
    model: ServedModel,
    port: int,
    seen_headers: list[dict[str, str]] | None = None,
    tls: ssl.SSLContext | None = None,
) -> ThreadingHTTPServer:
    """TensorFlow Serving's REST API; HTTPS when given a server-side `tls` context.

    `seen_headers`, if given, collects each request's headers (for tests of what clients send).
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as TensorFlow Serving
        disable_nagle_algorithm = True  # else each small answer waits ~40 ms for the client's ACK

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, str] | None:
            if seen_headers is not None:
                seen_headers.append(dict(self.headers))
            match = _REST_PATH.match(self.path)
            if match is None:
                self._answer(404, {"error": f"Malformed request: {self.command} {self.path}"})
                return None
            version = int(match["version"]) if match["version"] else None
            missing = model.find(match["name"], version)
            if missing:
                self._answer(404, {"error": missing})
                return None
            return match["action"] or "", self.command

        def do_GET(self) -> None:
            route = self._route()
            if route is None:
                return
            spec = {"name": model.name, "signature_name": "", "version": str(model.version)}
            if route[0] == "/metadata":
                signatures = {"signature_def": {SIGNATURE: model.signature_json()}}
                self._answer(200, {"model_spec": spec, "metadata": {"signature_def": signatures}})
            else:
                status = {"version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK"}}
                self._answer(200, {"model_version_status": [status]})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            route = self._route()
            if route is None:
                return
            if route[0] != ":predict":
                self._answer(404, {"error": f"Malformed request: POST {self.path}"})
                return
            try:
                request = json.loads(body)
                if "instances" in request:
                    rows = request["instances"]
                    users, products = (np.asarray([row[name] for row in rows], np.float32) for name in INPUTS)
                    self._answer(200, {"predictions": model.predict(users, products).tolist()})
                else:
                    users, products = (np.asarray(request["inputs"][name], np.float32) for name in INPUTS)
                    self._answer(200, {"outputs": model.predict(users, products).tolist()})
            except (KeyError, TypeError, ValueError) as error:
                self._answer(400, {"error": f"{type(error).__name__}: {error}"})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.testing.tfserving_double", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", default="recommender")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--rest-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--tls-chain", help="PEM certificate chain: serve TLS only (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-chain")
    args = parser.parse_args()
    model = ServedModel(args.model_dir, args.name, args.version)
    credentials, context = None, None
    if args.tls_chain:
        chain, key = Path(args.tls_chain).read_bytes(), Path(args.tls_key).read_bytes()
        credentials = grpc.ssl_server_credentials([(key, chain)])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_chain, args.tls_key)
    grpc_srv = grpc_server(model, args.grpc_port, credentials=credentials)
    grpc_srv.start()
    http_srv = rest_server(model, args.rest_port, tls=context)
    threading.Thread(target=http_srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(
        f"serving {args.name} v{args.version}: "
        f"REST 127.0.0.1:{args.rest_port} gRPC 127.0.0.1:{args.grpc_port}",
        flush=True,
    )
    stop.wait()
    http_srv.shutdown()
    grpc_srv.stop(grace=1).wait()


if __name__ == "__main__":
    main()
