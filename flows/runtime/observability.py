"""Switching on what an operator watches the flow with: OpenTelemetry, Bytewax's tracing, /state."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from flows.adapters.observability.state_server import start_state_server
from flows.core.context import ServingContext
from flows.core.errors import ConfigurationError
from flows.core.telemetry import Telemetry
from flows.runtime.cluster import processes_before_on_this_host
from flows.runtime.settings import Settings

log = logging.getLogger("flows.serving")


def start_observability(settings: Settings, context: ServingContext) -> list[Any]:
    """Start what the settings and OTEL_* variables ask for, reporting on `context`'s flow; returns handles
    to keep alive for the run."""
    handles: list[Any] = []
    switched_on = configure_from_environment(context.telemetry)
    if settings.output.bytewax_tracing:
        from bytewax.tracing import OtlpTracingConfig, setup_tracing

        config = OtlpTracingConfig(
            service_name=os.environ.get("OTEL_SERVICE_NAME", "bytewax-model-serving"),
            # Bytewax's exporter speaks gRPC but wants an http:// URL (grpc:// fails on the :scheme header).
            url=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            sampling_ratio=float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")),
        )
        tracer = setup_tracing(config)  # Bytewax stops tracing when this handle is dropped.
        handles.append(tracer)
        atexit.register(_drain_bytewax_exporter, tracer)
        switched_on.append("bytewax traces: otlp")
    state = settings.state
    if state.port:
        before = processes_before_on_this_host(sys.argv, os.environ)
        port = state.port + before
        server = start_state_server(
            state.host, port, context.state, state.peer_urls, state.allowed_host_names
        )
        if server is not None:
            handles.append(server)
            shared = f" (SERVING_STATE_PORT + {before}: processes of the cluster before it on this host)"
            where = f"state: http://{state.host}:{port}/state{shared if before else ''}"
            switched_on.append(f"{where}, live page at /")
    if switched_on:
        log.info("observability: %s", "; ".join(switched_on))
    return handles


def _drain_bytewax_exporter(tracer: Any) -> None:
    """Keep Bytewax's tracer alive for one more export round before the process exits.

    Bytewax's Rust exporter batches spans and sends them every OTEL_BSP_SCHEDULE_DELAY milliseconds
    (default 5000) or when 512 are queued; it has no flush, and dropping its handle discards what is
    queued. Without this wait a short run, or the last seconds of a long one, never reaches the
    collector. Being an argument of this exit hook, `tracer` outlives the wait.
    """
    delay_ms = float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000"))
    log.info("observability: waiting %.1f s for Bytewax's last trace export", delay_ms / 1000 + 0.2)
    time.sleep(delay_ms / 1000 + 0.2)


def configure_from_environment(telemetry: Telemetry, environ: dict[str, str] | None = None) -> list[str]:
    """Install the exporters the OTEL_* variables name into `telemetry`; returns what was switched on, for
    the start-up log."""
    environ = dict(os.environ if environ is None else environ)
    traces = environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    metrics = environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    tracer_provider = _tracer_provider(traces) if traces != "none" else None
    meter_provider = _meter_provider(metrics) if metrics != "none" else None
    telemetry.install(tracer_provider, meter_provider)
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    switched_on = [f"traces: {traces}"] if tracer_provider else []
    return switched_on + ([f"metrics: {metrics}"] if meter_provider else [])


def _tracer_provider(exporter_name: str) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter: Any = OTLPSpanExporter()
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: use otlp, console or none")
    provider = SdkTracerProvider(resource=Resource.create())  # sampler from OTEL_TRACES_SAMPLER[_ARG]
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _meter_provider(exporter_name: str) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        reader: Any = PeriodicExportingMetricReader(OTLPMetricExporter())
    elif exporter_name == "prometheus":
        # Registers with prometheus_client's default registry, which Bytewax's dataflow API serves at
        # /metrics (BYTEWAX_DATAFLOW_API_ENABLED=true, port 3030) next to Bytewax's own metrics.
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        reader = PrometheusMetricReader()
    elif exporter_name == "console":
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
    else:
        raise ConfigurationError(
            f"OTEL_METRICS_EXPORTER={exporter_name!r}: use otlp, prometheus, console or none"
        )
    return SdkMeterProvider(resource=Resource.create(), metric_readers=[reader])
