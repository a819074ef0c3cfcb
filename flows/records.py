"""Typed records of the serving flow.

The Avro records of the original design (see `schemas/`) as dataclasses with snake_case fields, plus
the envelopes the dataflow passes between its steps. `flows.avro` converts them to and from Avro.
"""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

MAX_REASON_CHARS = 1_000


def ms_since(epoch_s: float) -> float:
    """Milliseconds from `epoch_s` (time.time()) to now, never negative (clocks of two processes)."""
    return max(0.0, (time.time() - epoch_s) * 1000)


def cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line and at most `limit` characters: what a reason may cost on a console or a topic."""
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # bound the cost of the split below, too
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ModelType(enum.Enum):
    """How a model is served. Symbols and order follow the Avro enum `ModelType`."""

    UNKNOWN = "UNKNOWN"
    TENSORFLOW = "TENSORFLOW"
    TENSORFLOWSAVED = "TENSORFLOWSAVED"
    TENSORFLOWSERVING = "TENSORFLOWSERVING"
    PMML = "PMML"
    H2O = "H2O"
    OPENINFERENCE = (
        "OPENINFERENCE"  # Added after the original's symbols: V2 servers (MLServer, KServe, Triton).
    )


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
    """How a result was produced. `start_time` is ms since the epoch, `duration` ms."""

    errors: str = ""
    model_name: str = ""
    source: str = ""
    start_time: int = 0
    duration: int = 0


@dataclass(slots=True)
class RecommenderResult:
    """A scored record: the input, the model's output and how it was produced."""

    input_record: RecommenderRecord
    model_result: RecommenderServingOutput
    metadata: ModelResultMetadata


@dataclass(frozen=True, slots=True)
class ModelDescriptor:
    """A model to serve: inline bytes (a SavedModel archive) or a location."""

    model_name: str
    description: str
    model_type: ModelType
    model_bytes: bytes | None = None
    model_source_location: str | None = None
    signature: bytes = b""  # Ed25519, see flows.admission.signing; not part of the digest

    @property
    def digest(self) -> str:
        """Identity of the model's content: equal digests mean the same scorer can be reused."""
        hasher = hashlib.sha256()
        hasher.update(self.model_type.value.encode())
        hasher.update(b"\0")
        hasher.update(self.model_bytes or b"")
        hasher.update(b"\0")
        hasher.update((self.model_source_location or "").encode())
        return hasher.hexdigest()[:16]

    def __repr__(self) -> str:
        size = len(self.model_bytes) if self.model_bytes else 0
        return (
            f"ModelDescriptor({self.model_name!r}, {self.model_type.value}, "
            f"bytes={size}, location={self.model_source_location!r})"
        )


@dataclass(slots=True)
class ModelToServeStats:
    """Serving statistics of one model since it was loaded (durations in ms)."""

    name: str
    description: str = ""
    since: int = 0
    usage: int = 0
    duration: float = 0.0
    min: int = 0
    max: int = 0

    @property
    def average(self) -> float:
        """Mean scoring time per record, ms."""
        return self.duration / self.usage if self.usage else 0.0

    def record_batch(self, records: int, batch_ms: float) -> None:
        """Count a micro-batch of `records` that took `batch_ms` to score."""
        whole_ms = int(batch_ms)
        self.min = whole_ms if self.usage == 0 else min(self.min, whole_ms)
        self.max = max(self.max, whole_ms)
        self.usage += records
        self.duration += batch_ms


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


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Bytes from an input that could not be decoded as `schema`, and why: the flow reports it (a rejected
    model, a dead letter) instead of failing on it. Any wire format produces it; `flows.avro` does."""

    schema: str
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """Something that happened to a model: accepted or rejected by the flow, or swapped in on a shard.

    Flow-wide (empty `shard`): "accepted", "rejected" (with the reason; the previous model keeps serving),
    "resent" (the holder re-sent its model after a restart). Per shard: "swapped", "restored" (the model
    the shard had before a restart is back, statistics kept), "failed" (the shard could not build a model
    the flow had accepted; its previous model keeps serving).
    """

    kind: str
    model_name: str
    reason: str = ""
    shard: str = ""
    previous_model: str = ""
    load_ms: float = 0.0
    arrival_ms: float = 0.0  # from the model message's arrival at the flow to this event

    def __post_init__(self) -> None:
        # Names and reasons can come from a hostile message: bounded before they reach any output.
        object.__setattr__(self, "reason", cut(self.reason))
        object.__setattr__(self, "model_name", cut(self.model_name, 300))
        object.__setattr__(self, "previous_model", cut(self.previous_model, 300))

    def __str__(self) -> str:
        where = f" on {self.shard}" if self.shard else ""
        name = repr(self.model_name) if self.model_name else "(undecodable, no name)"
        text = f"model {name} {self.kind}{where}"
        if self.previous_model:
            text += f" (replacing {self.previous_model!r})"
        if self.load_ms:
            text += f" in {self.load_ms:.0f} ms"
        if self.arrival_ms:
            text += f" ({self.arrival_ms:.0f} ms after it arrived)"
        if self.reason:
            text += f": {self.reason}"
        return text
