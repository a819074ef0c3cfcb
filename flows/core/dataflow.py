"""The serving dataflow's core, independent of where its inputs come from and where its outputs go.

    data batches ──to a shard, in turn────────────────────┐
                                                          ├─merge─▶ stateful_batch(shard) ─▶ result batches
    models ─▶ model holder (1 key) ─▶ fan out to shards ──┘                              ├▶ events
                                                                                         ├▶ challenger reports
                                                                                         ├▶ shadow results
                                                                                         └▶ explanations

Sources (generators, Kafka) feed `serve` a stream of record batches (one per poll: see
`flows.adapters.sources.batched`) and a stream of ModelDescriptor; sinks take the result batches and the model
events it returns. Records travel in batches so that the engine's per-item cost, and the model's per-call
cost, are paid per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Stream

from flows.core.challenger import ChallengerSettings
from flows.core.context import ServingContext
from flows.core.drift import DriftLogic, DriftSettings, batch_features
from flows.core.errors import ConfigurationError
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.explanations import ExplainSettings, ExplanationMessage
from flows.core.model_holder import (
    HOLDER_KEY,
    AcceptedModel,
    ChallengerEnded,
    HolderInput,
    HolderOutput,
    ModelHolderLogic,
)
from flows.core.outliers import OutlierLogic, OutlierSettings
from flows.core.probation import RollbackSettings
from flows.core.records import DataMessage, ScoredBatch, ScoredMessage
from flows.core.routing import batch_router, shard_keys
from flows.core.shard import ShardLogic
from flows.core.shard_messages import ChallengerEnd, Emits, ModelUpdate, ShardInput, ShardOutput


@dataclass(frozen=True)
class ServingStreams:
    results: Stream[Sequence[ScoredMessage]]  # a ScoredBatch per model call, a list for errors
    events: Stream[ModelEvent]
    reports: Stream[ChallengerReport]  # how each challenger compares, per window and shard
    shadow_results: Stream[ScoredBatch]  # a shadow challenger's results, if `serve` was asked for them
    # Of sampled and asked-for records (flows.core.explanations).
    explanations: Stream[list[ExplanationMessage]]


def serve(
    step_id: str,
    data: Stream[list[DataMessage]],
    models: Stream[HolderInput],
    context: ServingContext,
    *,
    shards: int,
    hold_limit: int,
    wait_for_catch_up: bool = False,
    max_products: int = 10_000,
    drift: DriftSettings | None = None,
    outliers: OutlierSettings | None = None,
    challengers: ChallengerSettings | None = None,
    shadow_results: bool = False,
    rollback: RollbackSettings | None = None,
    explain: ExplainSettings | None = None,
) -> ServingStreams:
    """Score `data` with the latest model from `models`; see the module docstring for the shape. The steps
    load models through `context.cache` and report to its telemetry and statistics.

    With `wait_for_catch_up`, a flow without a model waits for the model source's `CaughtUp` markers
    and starts with the newest model it read (see `flows.core.model_holder`). With `drift`, each model's
    scored batches also go to a drift monitor keyed by model name, whose events join the model events
    (`flows.core.drift`). With `outliers`, each model's scored batches pass its outlier detector, keyed by
    model name, on their way out: their results get outlier scores, and its events join the model events
    (`flows.core.outliers`). `challengers` says how shards compare a challenger with the champion
    (`flows.core.challenger`); `shadow_results` makes them also emit a shadow challenger's own results
    (someone must write them). `rollback` says when a shard goes back from a new champion to the one it
    replaced (`flows.core.probation`). `explain` says which records the shards explain, right after scoring
    them (`flows.core.explanations`).
    """
    if shards < 1:
        raise ConfigurationError(f"{step_id}: shards must be at least 1, got {shards}")
    keys = shard_keys(shards)

    keyed_data = op.map(f"{step_id}_shard_data", data, batch_router(keys))

    keyed_models = op.key_on(f"{step_id}_key_models", models, lambda _: HOLDER_KEY)
    held = op.key_rm(
        f"{step_id}_unkey_holder",
        op.stateful_batch(
            f"{step_id}_model_holder",
            keyed_models,
            partial(ModelHolderLogic, context.cache, context.policy, wait_for_catch_up),
        ),
    )
    holder_out = op.branch(f"{step_id}_split_holder", held, _is_event)
    # bytewax narrows only the `trues` side of a TypeGuard branch; what is not an event is an update.
    broadcast = op.flat_map(
        f"{step_id}_to_every_shard",
        holder_out.falses,
        lambda update: [
            (key, _for_shard(key, cast(AcceptedModel | ChallengerEnded, update))) for key in keys
        ],
    )

    shard_in = op.merge(f"{step_id}_merge", keyed_data, broadcast)
    scored = op.key_rm(
        f"{step_id}_unkey_shards",
        op.stateful_batch(
            f"{step_id}_shards",
            shard_in,
            partial(
                ShardLogic,
                hold_limit,
                max_products,
                context,
                challengers=challengers,
                shadow_results=shadow_results,
                rollback=rollback,
                explain=explain,
            ),
        ),
    )
    results, shard_events, reports, shadows, explanations = (
        op.filter_map(f"{step_id}_shard_{kind}", scored, partial(_tagged, kind))
        for kind in (Emits.RESULTS, Emits.EVENT, Emits.REPORT, Emits.SHADOW, Emits.EXPLANATIONS)
    )
    events = op.merge(f"{step_id}_events", holder_out.trues, shard_events)
    if drift is not None and drift.enabled:
        events = op.merge(f"{step_id}_with_drift", events, _drift_events(step_id, results, drift, context))
    if outliers is not None and outliers.enabled:
        results, outlier_events = _outlier_scores(step_id, results, outliers, context)
        events = op.merge(f"{step_id}_with_outliers", events, outlier_events)
    op.inspect(f"{step_id}_event_telemetry", events, partial(_observe_event, context))
    return ServingStreams(results, events, reports, shadows, explanations)


def _observe_event(context: ServingContext, _step: str, event: ModelEvent) -> None:
    """A model event's span and count, and its place on the live page's timeline."""
    context.telemetry.model_events([event])
    context.state.event(event)


def _is_event(item: HolderOutput) -> TypeGuard[ModelEvent]:
    """The holder's output splits into model events (to report) and updates (to every shard)."""
    return isinstance(item, ModelEvent)


def _tagged(kind: Emits, output: ShardOutput) -> Any:
    """The shard's output if it is a `kind`, else None (filtered out)."""
    tag, value = output
    return value if tag is kind else None


def _for_shard(key: str, update: AcceptedModel | ChallengerEnded) -> ShardInput:
    if isinstance(update, ChallengerEnded):
        return ChallengerEnd(key, update.model_name, update.closed_by)
    return ModelUpdate(key, update.descriptor, update.arrived_at, update.fallback)


def _outlier_scores(
    step_id: str,
    results: Stream[Sequence[ScoredMessage]],
    settings: OutlierSettings,
    context: ServingContext,
) -> tuple[Stream[Sequence[ScoredMessage]], Stream[ModelEvent]]:
    """`results` with outlier scores (the batches a model scored pass its detector; the rest, errors, pass
    by), and the detectors' events."""
    split = op.branch(f"{step_id}_outlier_batches", results, _scored_by_a_model)
    keyed = op.key_on(f"{step_id}_key_outliers", split.trues, lambda batch: batch.metadata.model_name)
    detected = op.key_rm(
        f"{step_id}_unkey_outliers",
        op.stateful_batch(f"{step_id}_outliers", keyed, partial(OutlierLogic, settings, context.state)),
    )
    out = op.branch(f"{step_id}_split_outliers", detected, _is_batch)
    scored = op.merge(f"{step_id}_outlier_scored", out.trues, split.falses)
    return scored, cast(Stream[ModelEvent], out.falses)


def _scored_by_a_model(results: Sequence[ScoredMessage]) -> TypeGuard[ScoredBatch]:
    return isinstance(results, ScoredBatch) and bool(results.metadata.model_name)


def _is_batch(item: ScoredBatch | ModelEvent) -> TypeGuard[ScoredBatch]:
    return isinstance(item, ScoredBatch)


def _drift_events(
    step_id: str, results: Stream[Sequence[ScoredMessage]], drift: DriftSettings, context: ServingContext
) -> Stream[ModelEvent]:
    features = op.filter_map(
        f"{step_id}_drift_features",
        results,
        lambda batch: batch_features(batch, drift.sample) if isinstance(batch, ScoredBatch) else None,
    )
    keyed = op.key_on(f"{step_id}_key_drift", features, lambda features: features.model_name)
    monitors = op.stateful_batch(f"{step_id}_drift", keyed, partial(DriftLogic, drift, context.state))
    return op.key_rm(f"{step_id}_unkey_drift", monitors)
