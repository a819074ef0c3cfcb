"""OpenTelemetry traces and metrics of the serving flow.

A span per scored micro-batch (linked to the W3C trace context of the records it scored, when they came
with one) and per model event (accepted, rejected, swapped in on a shard, failed); counters and
histograms of records, errors, batch sizes and scoring time; gauges of the model each shard serves, of
challengers and drift, and of each Kafka data partition's lag (`serving.kafka.lag`).

This module uses OpenTelemetry's API only. The runtime installs providers into a `Telemetry` from the
standard OpenTelemetry environment variables (`flows.runtime.observability`). Unlike the OpenTelemetry
default, nothing is exported unless `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` name an exporter: a
newcomer has no collector, and off must cost nothing (the hooks below return before touching OpenTelemetry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from flows.core.events import ModelEvent
from flows.core.records import DataMessage, ScoredBatch
from flows.core.serving_state import ServingState
from flows.core.vocabulary import EventKind

TRACEPARENT = "traceparent"
INSTRUMENTATION = "flows.serving"
MAX_LINKS = 64  # per batch span: enough to find the records' traces, bounded for large batches
_PROPAGATOR = TraceContextTextMapPropagator()


def trace_context_of(origin: Any) -> str | None:
    """The W3C `traceparent` a record came with (a header of its Kafka message, its `origin`), if any."""
    headers = getattr(origin, "headers", None)
    if not headers:
        return None
    for key, value in headers:
        if key == TRACEPARENT:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def _links(messages: Sequence[DataMessage]) -> list[Link]:
    """Links to the distinct trace contexts the messages came with, at most MAX_LINKS."""
    traceparents: dict[str, None] = {}
    for message in messages:
        if message.origin is not None:  # generated records have none: skip the header lookup
            traceparent = trace_context_of(message.origin)
            if traceparent:
                traceparents[traceparent] = None
    links = []
    for traceparent in traceparents:
        span_context = _span_context(traceparent)
        if span_context is not None:
            links.append(Link(span_context))
            if len(links) >= MAX_LINKS:
                break
    return links


def _span_context(traceparent: str) -> SpanContext | None:
    context = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def _traceparent(span: Span) -> str:
    """The W3C traceparent of `span` (version 00), as the propagator writes it, without its context
    plumbing."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@dataclass
class _Instruments:
    records: Any
    errors: Any
    batch_size: Any
    scoring_ms: Any
    model_events: Any
    explanations: Any


class Telemetry:
    """A flow's tracer and instruments; both None until `install` (that is: off, at no cost). The gauge of
    the model each shard serves reads `state`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.tracer: Tracer | None = None
        self._instruments: _Instruments | None = None

    def install(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        """Start tracing and/or metrics with these providers (None leaves that signal off)."""
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION) if tracer_provider else None
        self._instruments = (
            _create_instruments(meter_provider.get_meter(INSTRUMENTATION), self.state)
            if meter_provider
            else None
        )

    def uninstall(self) -> None:
        self.tracer = None
        self._instruments = None

    @contextmanager
    def batch(
        self, shard: str, model_name: str, source: str, messages: Sequence[DataMessage]
    ) -> Iterator[Span | None]:
        """Wraps the scoring of one micro-batch in a span linked to the records' own traces."""
        if self.tracer is None:
            yield None
            return
        attributes: dict[str, AttributeValue] = {
            "model.name": model_name,
            "model.source": source,
            "shard": shard,
            "batch.records": len(messages),
        }
        # Not made the current span: nothing runs inside it that would attach children.
        span = self.tracer.start_span(
            "score batch", links=_links(messages), attributes=attributes, record_exception=False
        )
        try:
            yield span
        finally:
            span.end()

    def scored(
        self,
        span: Span | None,
        shard: str,
        model_name: str,
        results: ScoredBatch,
        batch_ms: float,
    ) -> None:
        """Record a scored batch on its span and in the metrics; results carry the span's trace context."""
        if span is None and self._instruments is None:
            return
        errors = results.errors()
        if span is not None:
            span.set_attribute("batch.errors", len(errors))
            span.set_attribute("batch.duration_ms", batch_ms)
            if errors:
                span.set_status(Status(StatusCode.ERROR, errors[0][:500]))
            if span.is_recording():
                results.trace_context = _traceparent(span)
        instruments = self._instruments
        if instruments is not None:
            labels = {"model": model_name, "shard": shard}
            instruments.records.add(len(results) - len(errors), labels)
            if errors:
                instruments.errors.add(len(errors), labels)
            instruments.batch_size.record(len(results), labels)
            instruments.scoring_ms.record(batch_ms, labels)

    def explained(self, model_name: str, count: int) -> None:
        """Count `count` explanations of records `model_name` answered (flows.core.explanations)."""
        if self._instruments is not None:
            self._instruments.explanations.add(count, {"model": model_name})

    def model_events(self, events: Iterable[ModelEvent]) -> None:
        """A span and a count for each model event; the per-shard gauge follows swaps."""
        for event in events:
            if self._instruments is not None:
                self._instruments.model_events.add(1, {"event": event.kind, "model": event.model_name})
            if self.tracer is not None:
                self._event_span(event)

    def _event_span(self, event: ModelEvent) -> None:
        assert self.tracer is not None
        attributes: dict[str, AttributeValue] = {
            "model.name": event.model_name,
            "model.previous": event.previous_model,
            "model.load_ms": event.load_ms,
            "model.outcome": event.kind,
        }
        if event.shard:
            attributes["shard"] = event.shard
        now = time.time_ns()
        span = self.tracer.start_span(
            f"model {event.kind}", attributes=attributes, start_time=now - int(event.load_ms * 1e6)
        )
        if event.kind in (EventKind.REJECTED, EventKind.FAILED):
            span.set_status(Status(StatusCode.ERROR, event.reason[:500]))
        span.end(end_time=now)


def _create_instruments(meter: Meter, state: ServingState) -> _Instruments:
    def current_models(options: CallbackOptions) -> Iterable[Observation]:
        served = state.models_by_shard().items()
        return [Observation(1, {"shard": shard, "model": model}) for shard, model in served]

    def drift(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(values["psi"], {"model": model, "feature": feature})
            for model, shown in state.drift_per_model().items()
            for feature, values in shown["features"].items()
        ]

    def outlier_rate(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(shown["rates"][-1], {"model": model})
            for model, shown in state.outliers_per_model().items()
            if shown.get("rates")
        ]

    def lag(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            # An unread partition is on every process's /state: as a gauge, summing would count it again.
            return [
                Observation(entry[field], {"topic": entry["topic"], "partition": entry["partition"]})
                for entry in state.lag_per_partition()
                if not entry["unread"]
            ]

        return observe

    def challenger(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(totals[field], {"challenger": totals["challenger"],
                                            "champion": totals["champion"], "mode": totals["mode"]})
                for totals in state.challengers()
            ]  # fmt: skip

        return observe

    for field, description in (
        ("top_k_agreement", "A shadow challenger's mean top-k agreement with the champion"),
        ("mean_abs_diff", "A shadow challenger's mean absolute score difference from the champion"),
        ("challenger_records", "Records a challenger scored (shadow) or answered (canary)"),
        ("challenger_errors", "Records a challenger failed on"),
    ):
        meter.create_observable_gauge(
            f"serving.challenger.{field}", [challenger(field)], unit="1", description=description
        )
    meter.create_observable_gauge(
        "serving.model.current", [current_models], unit="1", description="1 for the model each shard serves"
    )
    meter.create_observable_gauge(
        "serving.drift.psi",
        [drift],
        unit="1",
        description="Population stability index of each feature in a model's last drift window",
    )
    meter.create_observable_gauge(
        "serving.outliers.rate",
        [outlier_rate],
        unit="1",
        description="Share of a model's last outlier window that its detector scored 1 or more",
    )
    meter.create_observable_gauge(
        "serving.kafka.lag",
        [lag("lag")],
        unit="{message}",
        description=(
            "Per data partition read here: the topic's end offset minus the next offset the flow will read"
        ),
    )
    meter.create_observable_gauge(
        "serving.kafka.lag_age",
        [lag("age_s")],
        unit="s",
        description="Per data partition read here: seconds since its lag was measured (the broker answered)",
    )
    return _Instruments(
        records=meter.create_counter("serving.records.scored", unit="{record}", description="Records scored"),
        errors=meter.create_counter(
            "serving.records.errors", unit="{record}", description="Results that carry an error"
        ),
        batch_size=meter.create_histogram(
            "serving.batch.size", unit="{record}", description="Records per micro-batch"
        ),
        scoring_ms=meter.create_histogram(
            "serving.batch.duration", unit="ms", description="Model call time per micro-batch"
        ),
        model_events=meter.create_counter(
            "serving.model.events", unit="{event}", description="Model events by kind"
        ),
        explanations=meter.create_counter(
            "serving.explanations", unit="{explanation}", description="Records explained, sampled or asked"
        ),
    )
