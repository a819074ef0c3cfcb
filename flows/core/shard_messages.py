"""What goes into a shard and what comes out of it: the messages of `flows.core.shard`'s logic.

In: a `ShardBatch` of records (`flows.core.routing`), a `ModelUpdate` or a `ChallengerEnd`, all in one
stream, each naming its shard because Bytewax does not give the logic its key. Out: results, events,
challenger reports, shadow results and explanations, each tagged with what it is (`Emits`) so that `serve`
can split them into streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flows.core.descriptors import ModelDescriptor
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.explanations import ExplanationMessage
from flows.core.records import ScoredBatch, ScoredMessage
from flows.core.routing import ShardBatch
from flows.core.vocabulary import ClosedBy, Word


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A model sent to one shard; it carries the shard key, which Bytewax does not give the logic."""

    shard: str
    descriptor: ModelDescriptor
    arrived_at: float = 0.0  # when the model message reached the flow, seconds since the epoch
    fallback: ModelDescriptor | None = None  # the champion it replaced (flows.core.probation)


@dataclass(frozen=True, slots=True)
class ChallengerEnd:
    """The challenger `model_name` leaves one shard: `closed_by` "promoted" or "retired"."""

    shard: str
    model_name: str
    closed_by: ClosedBy


# Records travel in batches (a source's poll, split by shard) and results leave in batches: the engine's
# per-item cost is paid per batch (see flows.adapters.sources.batched).
ShardInput = ShardBatch | ModelUpdate | ChallengerEnd


class Emits(Word):
    """What a shard emits, as the tag of each output: `serve` splits the shards' output by it."""

    RESULTS = "results"  # a batch of results (a ScoredBatch, or a list of error results)
    EVENT = "event"  # a ModelEvent
    REPORT = "report"  # a ChallengerReport
    SHADOW = "shadow"  # a shadow challenger's own results, never the answer (a ScoredBatch)
    EXPLANATIONS = "explanations"  # explanations of records of a result batch (flows.core.explanations)


ShardOutput = tuple[Emits, Sequence[ScoredMessage] | ModelEvent | ChallengerReport | list[ExplanationMessage]]


class ShardOutputs:
    """What a shard emits in one call, each output tagged with what it is."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[ShardOutput] = []

    def results(self, batch: Sequence[ScoredMessage]) -> None:
        self.items.append((Emits.RESULTS, batch))

    def event(self, event: ModelEvent) -> None:
        self.items.append((Emits.EVENT, event))

    def report(self, report: ChallengerReport) -> None:
        self.items.append((Emits.REPORT, report))

    def shadow(self, batch: ScoredBatch) -> None:
        self.items.append((Emits.SHADOW, batch))

    def explanations(self, explained: list[ExplanationMessage]) -> None:
        if explained:
            self.items.append((Emits.EXPLANATIONS, explained))
