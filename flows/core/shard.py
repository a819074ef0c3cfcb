"""The keyed stateful scorer: one instance per shard key, the heart of the dynamically controlled stream.

A shard receives, in one stream, the data records routed to it and every model the flow accepted. A model
is loaded in the background (by the process-wide cache, so a process loads each model once) while the
current one keeps scoring; once it is ready in this process the shard swaps to it and resets the
statistics. Data records are scored in micro-batches, one model call per batch. Records that arrive
before any model are held and scored when the first model is ready: all of them while a model is on its
way to the shard (loading, or named by the restored state), up to SERVING_HOLD_LIMIT while none is; past
that bound, once the awaited model fails, or if the input ends first, they are emitted with an error.
Nothing is dropped. The first champion swapped in opens the process's data sources
(`flows.adapters.sources.model_gate`).

A shard may also hold a challenger (`flows.core.challenger`): loaded the same way, it scores beside the
champion as its experiment says, and the shard emits a `ChallengerReport` per window of its records
(`flows.core.challenger_seat` runs the challenger's lifecycle on the shard). What a shard receives and
emits is in `flows.core.shard_messages`; which shard a batch of records goes to, in `flows.core.routing`.

The snapshot holds the model's digest and name, the statistics, the held records and the challenger's
role and window sums: never a model itself, which lives once in the model holder's state (see
`flows.core.model_holder`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from bytewax.operators import StatefulBatchLogic

from flows import moved
from flows.core.challenger import ChallengerSettings, ChallengerSlot, ExperimentScores, ModelCall
from flows.core.challenger_seat import ChallengerSeat
from flows.core.context import ServingContext
from flows.core.descriptors import ModelDescriptor
from flows.core.events import ModelEvent, ModelToServeStats, ms_since
from flows.core.explanations import Background, Explainer, ExplainSettings
from flows.core.probation import Probation, RollbackSettings
from flows.core.records import DataMessage, ScoredBatch, ScoredMessage
from flows.core.routing import ShardBatch
from flows.core.scorer import ModelLoadError, Scorer
from flows.core.scorer_cache import ModelLoad, ScorerCache
from flows.core.scoring import score_batch, unscored
from flows.core.shard_messages import ChallengerEnd, ModelUpdate, ShardInput, ShardOutput, ShardOutputs
from flows.core.vocabulary import ClosedBy, EventKind

POLL = timedelta(milliseconds=10)
MAX_ROLLED_BACK = 8  # digests a shard remembers rolling back from


@dataclass
class ShardState:
    """What a shard persists in a recovery snapshot."""

    shard: str = ""
    model_digest: str | None = None
    model_name: str = ""
    stats: ModelToServeStats | None = None
    held: list[DataMessage] = field(default_factory=list)
    challenger: ChallengerSlot | None = None  # (snapshots from before challengers read the class default)
    rolled_back: tuple[str, ...] = ()  # digests of champions this shard rolled back from, newest last
    # Each served model's explanation background, by digest (flows.core.explanations); None: none yet (and
    # the class default for snapshots from before explanations).
    explain_backgrounds: dict[str, Background] | None = None


class ShardLogic(StatefulBatchLogic[ShardInput, ShardOutput, ShardState]):
    """Scores one shard's records with the latest model it has been sent."""

    def __init__(
        self,
        hold_limit: int,
        max_products: int,
        context: ServingContext,
        resume: ShardState | None,
        *,
        challengers: ChallengerSettings | None = None,
        shadow_results: bool = False,
        rollback: RollbackSettings | None = None,
        explain: ExplainSettings | None = None,
    ) -> None:
        self.hold_limit = hold_limit
        self.rollback = rollback or RollbackSettings()
        # A new champion on probation, beside the one it replaced (flows.core.probation); not in snapshots:
        # after a restart only the champion is loaded again.
        self.probation: Probation | None = None
        self.shadow_results = shadow_results  # emit a shadow challenger's results (someone writes them)
        self.max_products = max_products
        self.cache: ScorerCache = context.cache
        self.policy = context.policy
        self.telemetry = context.telemetry
        self.serving_state = context.state
        self.champion_gate = context.champion_gate
        self.state = resume if resume is not None else ShardState()
        self.explainer = Explainer(explain, self.policy) if explain is not None and explain.enabled else None
        if self.state.shard and self.state.stats is not None:
            self.serving_state.serve(self.state.shard, self.state.stats)  # statistics survive a restart
        # After a restart the state names a model but this process has not loaded it yet: records are
        # held until the model holder sends the model again (it does so right after a restart).
        self.scorer: Scorer | None = None
        self.awaiting_resend = self.state.model_digest is not None
        # A model on its way in: loading in the background while the current one keeps scoring.
        self.incoming: tuple[ModelUpdate, ModelLoad] | None = None
        # The challenger, beside the champion (named, with its window, in `state.challenger` once loaded).
        self.seat = ChallengerSeat(
            self.state, challengers or ChallengerSettings(), context.cache, context.state
        )

    def on_batch(self, values: list[ShardInput]) -> tuple[Iterable[ShardOutput], bool]:
        outputs = ShardOutputs()
        run: list[DataMessage] = []
        if not self.state.shard:
            self.state.shard = values[0].shard
        for value in values:
            if isinstance(value, ShardBatch):
                run.extend(value.messages)
                continue
            # Records before a model event are scored with the model they arrived under.
            self._score(run, outputs)
            run = []
            if isinstance(value, ChallengerEnd):
                if self.seat.end(value.model_name, value.closed_by, outputs):
                    self._score_held(outputs)  # records a restored canary held, if it never loaded again
            elif value.descriptor.is_challenger:
                if self.seat.receive(value):
                    self._swap_when_ready(outputs)  # at once, if this process has it ready already
            else:
                self._receive(value, outputs)
        self._score(run, outputs)
        self._swap_when_ready(outputs)
        return outputs.items, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(timezone.utc) + POLL if self.incoming or self.seat.loading else None

    def on_notify(self) -> tuple[Iterable[ShardOutput], bool]:
        outputs = ShardOutputs()
        self._swap_when_ready(outputs)
        return outputs.items, StatefulBatchLogic.RETAIN

    @property
    def shard(self) -> str:
        return self.state.shard

    def on_eof(self) -> tuple[Iterable[ShardOutput], bool]:
        outputs = ShardOutputs()
        if self.incoming is not None:
            self.incoming[1].join()  # the input has ended: nothing is left to score meanwhile
        self.seat.join()
        self._swap_when_ready(outputs)
        if self.scorer is not None and self.seat.canary_reloading():
            # The restored canary never came back: the champion answers its held users.
            self.seat.close(ClosedBy.ENDED, outputs)
            self._score_held(outputs)
        self.seat.report_last_window(outputs)
        held, self.state.held = self.state.held, []
        reason = f"input ended before any model was loaded on {self.shard}"
        if held:
            outputs.results([unscored(message, reason) for message in held])
        return outputs.items, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ShardState:
        state = self.state
        challenger = state.challenger
        if challenger is not None:
            challenger = replace(challenger, window=copy.copy(challenger.window))
        backgrounds = state.explain_backgrounds
        return ShardState(
            state.shard,
            state.model_digest,
            state.model_name,
            copy.copy(state.stats),
            list(state.held),
            challenger,
            state.rolled_back,
            # A background's arrays are replaced, never changed in place: a shallow copy of each is enough.
            {digest: copy.copy(background) for digest, background in backgrounds.items()}
            if backgrounds
            else None,
        )

    def _score(self, messages: list[DataMessage], outputs: ShardOutputs) -> None:
        if not messages:
            return
        if any(len(message.record.products) > self.max_products for message in messages):
            messages = self._refuse_oversized(messages, outputs)
            if not messages:
                return
        if self.scorer is None or self.seat.canary_reloading():
            self._hold(messages, outputs)
            return
        champion = self.state.model_name
        with self.telemetry.batch(self.shard, champion, self.scorer.source, messages) as span:
            if self.seat.scoring:
                scored = self.seat.score(ModelCall(self.scorer, champion), messages, self.policy)
            else:
                results, batch_ms = score_batch(self.scorer, champion, messages, self.policy)
                scored = ExperimentScores([(results, batch_ms, champion)])
            for results, batch_ms, answered_by in scored.answered:
                self.telemetry.scored(span, self.shard, answered_by, results, batch_ms)
                self.serving_state.scored(answered_by, len(results), len(results.errors()), batch_ms)
        for results, batch_ms, answered_by in scored.answered:
            outputs.results(results)
            if self.explainer is not None:
                self._explain(results, answered_by, outputs)
            if answered_by == champion and self.state.stats is not None:
                self.state.stats.record_batch(len(results), batch_ms)
            if answered_by == champion and self.probation is not None:
                self._judge(results, batch_ms, outputs)
        if scored.shadow is not None and self.shadow_results:
            scored.shadow.trace_context = scored.answered[0][0].trace_context  # the batch's span
            outputs.shadow(scored.shadow)
        self.seat.report_full_window(outputs)

    def _explain(self, results: ScoredBatch, answered_by: str, outputs: ShardOutputs) -> None:
        """Explanations of the batch's chosen records, after their results, with the model that answered."""
        assert self.explainer is not None
        slot = self.state.challenger
        if answered_by == self.state.model_name:
            scorer, digest = self.scorer, self.state.model_digest
        elif slot is not None and answered_by == slot.name:
            scorer, digest = self.seat.scorer, slot.digest
        else:
            return
        if scorer is None or digest is None:
            return
        background = self._background(digest, scorer, self.explainer.settings.background)
        explained = self.explainer.explain(results, scorer, background)
        if explained:
            outputs.explanations(explained)
            self.serving_state.explained(explained)
            self.telemetry.explained(answered_by, len(explained))

    def _background(self, digest: str, scorer: Scorer, size: int) -> Background:
        """The explanation background of the model `digest`, of `size` pairs once complete (those of models
        no longer served go)."""
        backgrounds = self.state.explain_backgrounds
        if backgrounds is None:
            backgrounds = self.state.explain_backgrounds = {}
        if digest not in backgrounds:
            slot = self.state.challenger
            served = {self.state.model_digest, slot.digest if slot is not None else None}
            for gone in [known for known in backgrounds if known not in served]:
                del backgrounds[gone]
            bounds = scorer.input_bounds
            backgrounds[digest] = Background.spread_over(bounds, size) if bounds else Background()
        return backgrounds[digest]

    def _score_held(self, outputs: ShardOutputs) -> None:
        held, self.state.held = self.state.held, []
        self._score(held, outputs)

    def _refuse_oversized(self, messages: list[DataMessage], outputs: ShardOutputs) -> list[DataMessage]:
        """Error results for records over the product limit (without their products: a result echoing
        them would be as large); the others, to be scored."""
        kept, refused = [], []
        for message in messages:
            count = len(message.record.products)
            if count <= self.max_products:
                kept.append(message)
                continue
            reason = (
                f"record has {count:,} products, over the limit of {self.max_products:,} "
                "(SERVING_MAX_PRODUCTS)"
            )
            record = message.record
            refused.append(unscored(replace(message, record=replace(record, products=[])), reason))
        outputs.results(refused)
        return kept

    def _champion_on_its_way(self) -> bool:
        """Whether a model this shard will serve is loading, or known and about to be sent again (after a
        restart): then records wait for it whatever their number, until it is ready or its load fails."""
        return self.incoming is not None or self.awaiting_resend or self.seat.canary_reloading()

    def _hold(self, messages: list[DataMessage], outputs: ShardOutputs) -> None:
        if self._champion_on_its_way():
            # Bounded by what the data sources read meanwhile: they wait for a champion in their own process
            # (flows.adapters.sources.model_gate), and a load has a deadline.
            self.state.held.extend(messages)
            return
        self._hold_within_limit(messages, outputs)

    def _release_overflow(self, outputs: ShardOutputs) -> None:
        """The model the held records waited for failed: those past the hold limit get their error now."""
        held, self.state.held = self.state.held, []
        self._hold_within_limit(held, outputs)

    def _hold_within_limit(self, messages: list[DataMessage], outputs: ShardOutputs) -> None:
        room = max(self.hold_limit - len(self.state.held), 0)
        self.state.held.extend(messages[:room])
        overflow = messages[room:]
        if overflow:
            reason = (
                f"no model loaded yet on {self.shard} and its hold buffer is full "
                f"({self.hold_limit} records held; setting SERVING_HOLD_LIMIT)"
            )
            outputs.results([unscored(message, reason) for message in overflow])

    def _receive(self, update: ModelUpdate, outputs: ShardOutputs) -> None:
        """Start loading `update`'s model; swap at once if this process has it ready already. A model this
        shard rolled back from stays out: the champion it went back to serves (loaded again after a
        restart, from `update.fallback`)."""
        if update.descriptor.digest in self.state.rolled_back:
            if self.scorer is not None:
                return
            if update.fallback is not None:
                update = replace(update, descriptor=update.fallback, fallback=None)
        digest = update.descriptor.digest
        if digest == self.state.model_digest and self.scorer is not None:
            # The model we serve, sent again (re-sent after a restart elsewhere), or under a new name.
            if self.incoming is not None:
                self.cache.release(self.incoming[0].descriptor.digest)  # superseded by this message
                self.incoming = None
            if update.descriptor.model_name != self.state.model_name:
                self._rename(update.descriptor, outputs)
            return
        if self.incoming is not None:
            self.cache.release(self.incoming[0].descriptor.digest)  # superseded before it was ready
        self.incoming = (update, self.cache.request(update.descriptor))
        self._swap_when_ready(outputs)

    def _rename(self, descriptor: ModelDescriptor, outputs: ShardOutputs) -> None:
        """The served model was accepted again under another name: results carry the name it was accepted
        under, so from now on that one, with statistics of its own."""
        previous = self.state.model_name
        self.state.model_name = descriptor.model_name
        if self.state.challenger is not None:
            self.state.challenger.champion = descriptor.model_name
        self._new_stats(descriptor)
        outputs.event(ModelEvent(EventKind.SWAPPED, descriptor.model_name, "renamed", self.shard, previous))

    def _new_stats(self, descriptor: ModelDescriptor) -> None:
        self._new_stats_of(descriptor.model_name, descriptor.description)

    def _new_stats_of(self, name: str, description: str) -> None:
        self.state.stats = ModelToServeStats(name, description, since=time.time_ns() // 1_000_000)
        self.serving_state.serve(self.shard, self.state.stats)

    def _description(self) -> str:
        return self.state.stats.description if self.state.stats is not None else ""

    def _judge(self, results: Sequence[ScoredMessage], batch_ms: float, outputs: ShardOutputs) -> None:
        """Count a batch of the champion on probation; roll it back, or end its probation, if it is time."""
        probation = self.probation
        assert probation is not None and self.scorer is not None
        batch = results if isinstance(results, ScoredBatch) else None
        pairs = sum(batch.counts) if batch is not None else 0
        errors = batch.model_errors if batch is not None else 0  # a list: errors the flow made, not the model
        why = probation.verdict(self.scorer, len(results), errors, pairs, batch_ms, self.rollback)
        if why is not None:
            self._roll_back(why, outputs)
        elif probation.served(self.rollback):
            self._end_probation()

    def _end_probation(self) -> None:
        if self.probation is not None:
            self.cache.release(self.probation.fallback_digest)
            self.probation = None

    def _roll_back(self, why: str, outputs: ShardOutputs) -> None:
        """Serve the champion on probation replaced, again; remember the one that failed."""
        probation, self.probation = self.probation, None
        assert probation is not None and self.state.model_digest is not None
        failed, failed_digest = self.state.model_name, self.state.model_digest
        self.cache.release(failed_digest)
        self.scorer = probation.fallback
        self.state.model_digest, self.state.model_name = probation.fallback_digest, probation.fallback_name
        self.state.rolled_back = (*self.state.rolled_back, failed_digest)[-MAX_ROLLED_BACK:]
        self.seat.new_champion(probation.fallback_name)
        self._new_stats_of(probation.fallback_name, probation.fallback_description)
        reason = f"rolled back from {failed!r}: {why}"
        outputs.event(ModelEvent(EventKind.ROLLED_BACK, probation.fallback_name, reason, self.shard, failed))

    def _swap_when_ready(self, outputs: ShardOutputs) -> None:
        if self.seat.seat_when_ready(outputs, champion_ready=self.scorer is not None):
            self._score_held(outputs)
        if self.incoming is None or not self.incoming[1].ready():
            return
        update, load = self.incoming
        self.incoming = None
        descriptor = update.descriptor
        arrival_ms = ms_since(update.arrived_at) if update.arrived_at else 0.0
        self.awaiting_resend = False
        try:
            scorer, load_ms = load.result()
        except ModelLoadError as error:
            self.cache.release(descriptor.digest)
            outputs.event(
                ModelEvent(
                    EventKind.FAILED, descriptor.model_name, error.reason, self.shard, self.state.model_name
                )
            )
            if self.scorer is None:
                self._release_overflow(outputs)
            return
        digest = descriptor.digest
        restored = digest == self.state.model_digest and descriptor.model_name == self.state.model_name
        self._end_probation()
        if self.scorer is not None and self.state.model_digest is not None:
            if self.rollback.records and not restored:  # kept loaded while the new one is on probation
                self.probation = Probation(
                    self.scorer, self.state.model_digest, self.state.model_name, self._description()
                )
            else:
                self.cache.release(self.state.model_digest)
        previous = self.state.model_name
        self.scorer = scorer
        self.champion_gate.open()
        self.state.model_digest = digest
        self.state.model_name = descriptor.model_name
        self.seat.new_champion(descriptor.model_name)
        if restored and self.state.stats is not None:
            outputs.event(
                ModelEvent(
                    EventKind.RESTORED,
                    descriptor.model_name,
                    shard=self.shard,
                    load_ms=load_ms,
                    arrival_ms=arrival_ms,
                )
            )
        else:
            self._new_stats(descriptor)
            outputs.event(
                ModelEvent(
                    EventKind.SWAPPED, descriptor.model_name, "", self.shard, previous, load_ms, arrival_ms
                )
            )
        self._score_held(outputs)


if not TYPE_CHECKING:  # the code imports each from its module; only old pickles name it here

    def __getattr__(name: str) -> object:
        """The shard's messages and routing, which moved to `flows.core.shard_messages` and
        `flows.core.routing`, for pickles that name them here (see `flows.moved.MOVED_NAMES`)."""
        return moved.moved_attribute(__name__, name)
