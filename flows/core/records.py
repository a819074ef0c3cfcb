"""Typed records of the serving flow.

The Avro records of the original design (see `schemas/`) as dataclasses with snake_case fields, plus
the envelopes the dataflow passes between its steps. `flows.wire.avro` converts them to and from Avro.
Models' descriptors are in `flows.core.descriptors`, events, reports and statistics in `flows.core.events`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate, chain
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from flows import moved


@dataclass(slots=True)
class RecommenderRecord:
    """A user and the products to score for that user."""

    user: int
    products: list[int]
    datatype: str = "recommender"


@dataclass(slots=True)
class RecommenderServingOutput:
    """Scores of one record: `products[i]` has probability `probabilities[i]`."""

    products: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)


@dataclass(slots=True)
class ModelResultMetadata:
    """How a result was produced. `start_time` is ms since the epoch, `duration` ms. `outlier_score`: how
    unlike its model's reference window the record is, 1 or more flagged (`flows.core.outliers`); None when
    no detector scored it."""

    errors: str = ""
    model_name: str = ""
    source: str = ""
    start_time: int = 0
    duration: int = 0
    outlier_score: float | None = None


@dataclass(slots=True)
class RecommenderResult:
    """A scored record: the input, the model's output and how it was produced."""

    input_record: RecommenderRecord
    model_result: RecommenderServingOutput
    metadata: ModelResultMetadata


@dataclass(slots=True)
class DataMessage:
    """A data record on its way through the flow, with when and where it entered.

    `entered_ns` (time.time_ns()) is set by the source; latency is measured from it. `origin` is
    whatever the source wants carried to the output (a Kafka topic/partition/offset, trace context).
    """

    record: RecommenderRecord
    entered_ns: int
    origin: Any = None


@dataclass(slots=True)
class ScoredMessage:
    """A result and the message it came from; `trace_context` is the W3C traceparent to carry onward."""

    result: RecommenderResult
    entered_ns: int
    origin: Any = None
    trace_context: str = ""


class ScoredBatch(Sequence[ScoredMessage]):
    """The results of one model call, kept in columns: the input messages, the pairs each record had, the
    scores of all pairs in one array, the batch's metadata, and the records whose result is an error.

    It is a sequence of ScoredMessage, built on demand, so any sink reads it like a list. A sink that
    writes bytes (`flows.wire.avro.encode_results`) reads the columns instead: one conversion of the scores
    for the whole batch rather than three objects and two lists per record, which was a fifth of the Kafka
    flow's time.
    """

    __slots__ = (
        "_starts",
        "counts",
        "messages",
        "metadata",
        "model_errors",
        "outlier_scores",
        "products",
        "replaced",
        "scores",
        "trace_context",
        "users",
    )

    def __init__(
        self,
        messages: list[DataMessage],
        counts: list[int],
        scores: np.ndarray,
        metadata: ModelResultMetadata,
        replaced: dict[int, ScoredMessage] | None = None,
        products: np.ndarray | None = None,
        users: np.ndarray | None = None,
    ) -> None:
        self.messages = messages
        self.counts = (
            counts  # pairs of each record; record i's scores are scores[starts[i]:starts[i] + counts[i]]
        )
        self.scores = scores  # empty when every record is replaced
        self.metadata = metadata
        self.replaced = replaced or {}  # by index: records whose result is an error (scores withheld)
        self.trace_context = ""  # the W3C traceparent of the batch's span, carried by every result
        # The product and the user of each pair, as the model was given them (flows.core.drift and outliers
        # read them instead of walking the records).
        self.products = products
        self.users = users
        # Of `replaced`, the records whose error the model caused (a failed call, a score out of range), not
        # the flow's refusal of ids outside what the model takes (flows.core.probation counts these).
        self.model_errors = 0
        # One per record once the model's outlier detector has scored the batch (flows.core.outliers); a
        # record it did not score (an error, a record of its reference) has NaN. None before, or without
        # outlier scoring.
        self.outlier_scores: np.ndarray | None = None
        self._starts: list[int] | None = None

    @classmethod
    def of_results(cls, messages: list[DataMessage], results: Sequence[ScoredMessage]) -> ScoredBatch:
        """A batch whose results were made one by one (a batch that failed whole, a canary's kept results)."""
        counts = [len(message.record.products) for message in messages]
        return cls(messages, counts, np.empty(0, np.float32), ModelResultMetadata(), dict(enumerate(results)))

    @property
    def starts(self) -> list[int]:
        """Where each record's scores begin in `scores`."""
        if self._starts is None:
            self._starts = [0, *accumulate(self.counts)][:-1]
        return self._starts

    def answered(self) -> np.ndarray:
        """Per record, whether the model answered it with scores (False for a result that is an error)."""
        answered = np.ones(len(self.messages), bool)
        answered[list(self.replaced)] = False
        return answered

    def pair_products(self) -> np.ndarray:
        """The product of each pair (float64): the column the model was given, else read from the records."""
        if self.products is not None:
            return self.products.astype(np.float64)
        return np.fromiter(chain.from_iterable(m.record.products for m in self.messages), np.float64)

    def record_users(self) -> np.ndarray:
        """Each record's user (float64): from the pairs' column where the batch has it (a record without
        products has no pair: from its message), else from the messages."""
        if self.users is None:
            return np.fromiter((m.record.user for m in self.messages), np.float64, len(self.messages))
        counts = np.asarray(self.counts, np.int64)
        users = np.empty(counts.size)
        filled = counts > 0
        users[filled] = self.users[(np.cumsum(counts) - counts)[filled]]
        for index in np.flatnonzero(~filled):
            users[index] = self.messages[index].record.user
        return users

    def errors(self) -> list[str]:
        """The error of every result that has one."""
        return [item.result.metadata.errors for item in self.replaced.values() if item.result.metadata.errors]

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, index: int) -> ScoredMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ScoredMessage]: ...

    def __getitem__(self, index: int | slice) -> ScoredMessage | list[ScoredMessage]:
        if isinstance(index, slice):
            return [self._result(position) for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"result {index} of a batch of {len(self)}")
        return self._result(index)

    def __iter__(self) -> Iterator[ScoredMessage]:
        values = self.scores.tolist()
        for index, (start, count) in enumerate(zip(self.starts, self.counts)):
            yield self._result(index, values[start : start + count])

    def _result(self, index: int, scores: list[float] | None = None) -> ScoredMessage:
        replaced = self.replaced.get(index)
        if replaced is not None:
            replaced.trace_context = self.trace_context or replaced.trace_context
            return replaced
        message = self.messages[index]
        if scores is None:
            start = self.starts[index]
            scores = self.scores[start : start + self.counts[index]].tolist()
        output = RecommenderServingOutput(list(map(str, message.record.products)), scores)
        metadata = self.metadata
        if self.outlier_scores is not None and not np.isnan(self.outlier_scores[index]):
            metadata = replace(metadata, outlier_score=float(self.outlier_scores[index]))
        return ScoredMessage(
            RecommenderResult(message.record, output, metadata),
            message.entered_ns,
            message.origin,
            self.trace_context,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # unhashable: mutable, like the list it stands for

    def __repr__(self) -> str:
        return (
            f"ScoredBatch({len(self)} results, {len(self.replaced)} errors, "
            f"model {self.metadata.model_name!r})"
        )


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Bytes from an input that could not be decoded as `schema`, and why: the flow reports it (a rejected
    model, a dead letter) instead of failing on it. Any wire format produces it; `flows.wire.avro` does."""

    schema: str
    reason: str
    payload: bytes | None  # None for a message without a value (a Kafka tombstone)


if not TYPE_CHECKING:  # the code imports each class from its module; only old pickles name it here

    def __getattr__(name: str) -> object:
        """The classes that moved to `flows.core.descriptors` and `flows.core.events`, for recovery
        snapshots that name them here (see `flows.moved.MOVED_NAMES`)."""
        return moved.moved_attribute(__name__, name)
