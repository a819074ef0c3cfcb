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
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from bytewax.operators import StatefulBatchLogic

from flows.context import ServingContext
from flows.records import (
    DataMessage,
    ModelDescriptor,
    ModelEvent,
    ModelToServeStats,
    RecommenderRecord,
    ScoredMessage,
    ms_since,
)
from flows.scorers import ModelLoadError, Scorer, ScorerCache
from flows.scorers.cache import ModelLoad
from flows.scoring import score_batch, unscored

POLL = timedelta(milliseconds=10)


def shard_keys(shards: int) -> list[str]:
    """The shard keys of a flow with `shards` shards."""
    return [f"shard-{index:03d}" for index in range(shards)]


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """Records sent to one shard; it carries the shard key, which Bytewax does not give the logic."""

    shard: str
    messages: list[DataMessage]

    def __reduce__(self) -> tuple:
        # Pickled in columns when it goes to a shard in another process: 4.6 us per record instead of 14.5
        # for a dataclass per record, measured on 1,000 Kafka records.
        messages = self.messages
        columns = (
            [message.record.user for message in messages],
            [message.record.products for message in messages],
            [message.record.datatype for message in messages],
            [message.entered_ns for message in messages],
            [message.origin for message in messages],
        )
        return _unpickled_batch, (self.shard, *columns)


def _unpickled_batch(
    shard: str, users: list, products: list, datatypes: list, entered: list, origins: list
) -> ShardBatch:
    records = map(RecommenderRecord, users, products, datatypes)
    return ShardBatch(shard, list(map(DataMessage, records, entered, origins)))


def batch_router(keys: list[str]) -> Callable[[list[DataMessage]], tuple[str, ShardBatch]]:
    """Routes each batch of records, whole, to the next shard in turn: the one place records are routed.

    A batch stays whole so that it is scored with one model call: a call has a fixed cost (about 1 ms for
    the shipped SavedModel, as much as 3,000 pairs), so splitting a poll of 1,000 records over 8 shards
    made 8 calls where one does. Taking the shards in turn spreads batches, and so the scoring, evenly over
    the workers that own the shards. Any shard may score any record: every shard serves every model.
    """
    turns = itertools.count()

    def route(batch: list[DataMessage]) -> tuple[str, ShardBatch]:
        key = keys[next(turns) % len(keys)]
        return key, ShardBatch(key, batch)

    return route


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A model sent to one shard; it carries the shard key, which Bytewax does not give the logic."""

    shard: str
    descriptor: ModelDescriptor
    arrived_at: float = 0.0  # when the model message reached the flow, seconds since the epoch


# Records travel in batches (a source's poll, split by shard) and results leave in batches: the engine's
# per-item cost is paid per batch (see flows.sources.batched).
ShardInput = ShardBatch | ModelUpdate
ShardOutput = Sequence[ScoredMessage] | ModelEvent


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
        hold_limit: int,
        max_products: int,
        context: ServingContext,
        resume: ShardState | None,
    ) -> None:
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
            self.state.shard = values[0].shard
        for value in values:
            if isinstance(value, ShardBatch):
                run.extend(value.messages)
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
