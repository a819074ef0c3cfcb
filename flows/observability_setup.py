"""Switching on what an operator watches the flow with: OpenTelemetry, Bytewax's tracing, /state."""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

from flows.context import ServingContext
from flows.observability.state_server import start_state_server
from flows.observability.telemetry import configure_from_environment
from flows.settings import Settings

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
        server = start_state_server(state.host, state.port, context.state)
        if server is not None:
            handles.append(server)
            switched_on.append(f"state: http://{state.host}:{state.port}/state")
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
