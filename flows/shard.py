"""The keyed stateful scorer: one instance per shard key, the heart of the dynamically controlled stream.

A shard receives, in one stream, the data records routed to it and every model the flow accepted. A model
is loaded in the background (by the process-wide cache, so a process loads each model once) while the
current one keeps scoring; once it is ready in this process the shard swaps to it and resets the
statistics. Data records are scored in micro-batches, one model call per batch. Records that arrive
before any model are held, up to a bound, and scored when the first model arrives; past the bound, or if
the input ends first, they are emitted with an error. Nothing is dropped.

The snapshot holds the model's digest and name, the statistics and the held records: never the model
itself, which lives once in the model holder's state (see `flows.model_holder`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from bytewax.operators import StatefulBatchLogic

from flows.context import ServingContext
from flows.records import DataMessage, ModelDescriptor, ModelEvent, ModelToServeStats, ScoredMessage, ms_since
from flows.scorers import ModelLoadError, Scorer, ScorerCache
from flows.scorers.cache import ModelLoad
from flows.scoring import score_batch, unscored

POLL = timedelta(milliseconds=10)


def shard_keys(shards: int) -> list[str]:
    """The shard keys of a flow with `shards` shards."""
    return [f"shard-{index:03d}" for index in range(shards)]


def shard_of(user: int, keys: list[str]) -> str:
    """The shard key that scores `user`'s records: the one place records are routed."""
    return keys[user % len(keys)]


def split_by_shard(keys: list[str], batch: list[DataMessage]) -> list[tuple[str, list[DataMessage]]]:
    """A batch of records as one batch per shard that has records in it, each in the batch's order."""
    if len(keys) == 1:
        return [(keys[0], batch)]
    parts: dict[str, list[DataMessage]] = {}
    for message in batch:
        parts.setdefault(shard_of(message.record.user, keys), []).append(message)
    return list(parts.items())


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A model sent to one shard; it carries the shard key, which Bytewax does not give the logic."""

    shard: str
    descriptor: ModelDescriptor
    arrived_at: float = 0.0  # when the model message reached the flow, seconds since the epoch


# Records travel in batches (a source's poll, split by shard) and results leave in batches: the engine's
# per-item cost is paid per batch (see flows.sources.batched).
ShardInput = list[DataMessage] | ModelUpdate
ShardOutput = list[ScoredMessage] | ModelEvent


@dataclass
class ShardState:
    """What a shard persists in a recovery snapshot."""

    shard: str = ""
    model_digest: str | None = None
    model_name: str = ""
    stats: ModelToServeStats | None = None
    held: list[DataMessage] = field(default_factory=list)


class ShardLogic(StatefulBatchLogic[ShardInput, ShardOutput, ShardState]):
    """Scores one shard's records with the latest model it has been sent."""

    def __init__(
        self,
        keys: list[str],
        hold_limit: int,
        max_products: int,
        context: ServingContext,
        resume: ShardState | None,
    ) -> None:
        self.keys = keys
        self.hold_limit = hold_limit
        self.max_products = max_products
        self.cache: ScorerCache = context.cache
        self.telemetry = context.telemetry
        self.serving_state = context.state
        self.state = resume if resume is not None else ShardState()
        if self.state.shard and self.state.stats is not None:
            self.serving_state.serve(self.state.shard, self.state.stats)  # statistics survive a restart
        # After a restart the state names a model but this process has not loaded it yet: records are
        # held until the model holder sends the model again (it does so right after a restart).
        self.scorer: Scorer | None = None
        # A model on its way in: loading in the background while the current one keeps scoring.
        self.incoming: tuple[ModelUpdate, ModelLoad] | None = None

    def on_batch(self, values: list[ShardInput]) -> tuple[Iterable[ShardOutput], bool]:
        outputs: list[ShardOutput] = []
        run: list[DataMessage] = []
        if not self.state.shard:
            self.state.shard = self._shard_of(values[0])
        for value in values:
            if not isinstance(value, ModelUpdate):
                run.extend(value)
                continue
            # Records before a model event are scored with the model they arrived under.
            self._score(run, outputs)
            run = []
            self._receive(value, outputs)
        self._score(run, outputs)
        self._swap_when_ready(outputs)
        return outputs, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(timezone.utc) + POLL if self.incoming else None

    def on_notify(self) -> tuple[Iterable[ShardOutput], bool]:
        outputs: list[ShardOutput] = []
        self._swap_when_ready(outputs)
        return outputs, StatefulBatchLogic.RETAIN

    @property
    def shard(self) -> str:
        return self.state.shard

    def _shard_of(self, value: ShardInput) -> str:
        if isinstance(value, ModelUpdate):
            return value.shard
        return shard_of(value[0].record.user, self.keys)

    def on_eof(self) -> tuple[Iterable[ShardOutput], bool]:
        outputs: list[ShardOutput] = []
        if self.incoming is not None:
            self.incoming[1].join()  # the input has ended: nothing is left to score meanwhile
            self._swap_when_ready(outputs)
        held, self.state.held = self.state.held, []
        reason = f"input ended before any model was loaded on {self.shard}"
        if held:
            outputs.append([unscored(message, reason) for message in held])
        return outputs, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ShardState:
        state = self.state
        return ShardState(
            state.shard, state.model_digest, state.model_name, copy.copy(state.stats), list(state.held)
        )

    def _score(self, messages: list[DataMessage], outputs: list[ShardOutput]) -> None:
        if not messages:
            return
        if any(len(message.record.products) > self.max_products for message in messages):
            messages = self._refuse_oversized(messages, outputs)
            if not messages:
                return
        if self.scorer is None:
            self._hold(messages, outputs)
            return
        with self.telemetry.batch(self.shard, self.state.model_name, self.scorer.source, messages) as span:
            results, batch_ms = score_batch(self.scorer, self.state.model_name, messages, self.cache.policy)
            self.telemetry.scored(span, self.shard, self.state.model_name, results, batch_ms)
        outputs.append(results)
        if self.state.stats is not None:
            self.state.stats.record_batch(len(messages), batch_ms)

    def _refuse_oversized(self, messages: list[DataMessage], outputs: list[ShardOutput]) -> list[DataMessage]:
        """Error results for records over the product limit (without their products: a result echoing
        them would be as large); the others, to be scored."""
        kept, refused = [], []
        for message in messages:
            count = len(message.record.products)
            if count <= self.max_products:
                kept.append(message)
                continue
            reason = f"record has {count:,} products, over the limit of {self.max_products:,} (SERVING_MAX_PRODUCTS)"
            record = message.record
            refused.append(unscored(replace(message, record=replace(record, products=[])), reason))
        outputs.append(refused)
        return kept

    def _hold(self, messages: list[DataMessage], outputs: list[ShardOutput]) -> None:
        room = max(self.hold_limit - len(self.state.held), 0)
        self.state.held.extend(messages[:room])
        overflow = messages[room:]
        if overflow:
            reason = (
                f"no model loaded yet on {self.shard} and its hold buffer is full "
                f"({self.hold_limit} records held; setting SERVING_HOLD_LIMIT)"
            )
            outputs.append([unscored(message, reason) for message in overflow])

    def _receive(self, update: ModelUpdate, outputs: list[ShardOutput]) -> None:
        """Start loading `update`'s model; swap at once if this process has it ready already."""
        digest = update.descriptor.digest
        if digest == self.state.model_digest and self.scorer is not None:
            return  # The model we serve, sent again (e.g. re-sent after a restart elsewhere).
        if self.incoming is not None:
            self.cache.release(self.incoming[0].descriptor.digest)  # superseded before it was ready
        self.incoming = (update, self.cache.request(update.descriptor))
        self._swap_when_ready(outputs)

    def _swap_when_ready(self, outputs: list[ShardOutput]) -> None:
        if self.incoming is None or not self.incoming[1].ready():
            return
        update, load = self.incoming
        self.incoming = None
        descriptor = update.descriptor
        arrival_ms = ms_since(update.arrived_at) if update.arrived_at else 0.0
        try:
            scorer, load_ms = load.result()
        except ModelLoadError as error:
            self.cache.release(descriptor.digest)
            outputs.append(
                ModelEvent("failed", descriptor.model_name, error.reason, self.shard, self.state.model_name)
            )
            return
        digest = descriptor.digest
        restored = digest == self.state.model_digest
        if self.scorer is not None and self.state.model_digest is not None:
            self.cache.release(self.state.model_digest)
        previous = self.state.model_name
        self.scorer = scorer
        self.state.model_digest = digest
        self.state.model_name = descriptor.model_name
        if restored and self.state.stats is not None:
            outputs.append(
                ModelEvent(
                    "restored",
                    descriptor.model_name,
                    shard=self.shard,
                    load_ms=load_ms,
                    arrival_ms=arrival_ms,
                )
            )
        else:
            self.state.stats = ModelToServeStats(
                descriptor.model_name, descriptor.description, since=time.time_ns() // 1_000_000
            )
            self.serving_state.serve(self.shard, self.state.stats)
            outputs.append(
                ModelEvent("swapped", descriptor.model_name, "", self.shard, previous, load_ms, arrival_ms)
            )
        held, self.state.held = self.state.held, []
        self._score(held, outputs)
