"""An OTLP/gRPC receiver for the tests: no collector binary exists here, opentelemetry-proto has the services.

It accepts trace and metric exports and keeps what the tests check: span names and attributes, the
resource's service names, metric names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from flows.testing.loopback import free_port


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value")) if any_value.WhichOneof("value") else None


class OtlpReceiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self, port: int) -> None:
        self.port = port
        self.spans: list[dict[str, Any]] = []
        self.service_names: set[str] = set()
        self.metric_names: set[str] = set()
        self._lock = threading.Lock()

    def _resource(self, resource: Any) -> None:
        for attribute in resource.attributes:
            if attribute.key == "service.name":
                self.service_names.add(_value(attribute.value))

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                for resource_spans in request.resource_spans:
                    self._resource(resource_spans.resource)
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            attributes = {a.key: _value(a.value) for a in span.attributes}
                            self.spans.append(
                                {
                                    "name": span.name,
                                    "records": attributes.get("batch.records", 0),
                                    **attributes,
                                }
                            )
                return trace_service_pb2.ExportTraceServiceResponse()
            for resource_metrics in request.resource_metrics:
                self._resource(resource_metrics.resource)
                for scope in resource_metrics.scope_metrics:
                    self.metric_names.update(metric.name for metric in scope.metrics)
            return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def otlp_receiver(port: int | None = None) -> Iterator[OtlpReceiver]:
    """A receiver on loopback (a free port unless given) for the duration of the block."""
    receiver = OtlpReceiver(port or free_port())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    server.add_insecure_port(f"127.0.0.1:{receiver.port}")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=1).wait()


def main() -> None:
    """`python -m flows.testing.otlp_receiver --port P`: receive until SIGTERM, then print what came as one
    JSON line."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(prog="python -m flows.testing.otlp_receiver", description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with otlp_receiver(args.port) as receiver:
        print("ready", flush=True)
        stop.wait()
    print(json.dumps({"spans": len(receiver.spans), "metrics": sorted(receiver.metric_names)}), flush=True)


if __name__ == "__main__":
    main()
