"""Typed records of the serving flow.

The Avro records of the original design (see `schemas/`) as dataclasses with snake_case fields, plus
the envelopes the dataflow passes between its steps. `flows.wire.avro` converts them to and from Avro.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import time
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields
from itertools import accumulate
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from flows.core.vocabulary import ClosedBy, Command, EventKind, Mode, Role

MAX_REASON_CHARS = 1_000


def ms_since(epoch_s: float) -> float:
    """Milliseconds from `epoch_s` (time.time()) to now, never negative (clocks of two processes)."""
    return max(0.0, (time.time() - epoch_s) * 1000)


def restore_with_defaults(instance: Any, state: tuple) -> None:
    """Unpickle a slots dataclass (frozen or not) from `state`, its fields' values in order: a recovery
    snapshot written before the class gained fields at its end holds fewer, and those keep their defaults."""
    for index, field_ in enumerate(fields(instance)):
        if index < len(state):
            value = state[index]
        elif field_.default_factory is not MISSING:
            value = field_.default_factory()
        else:
            value = field_.default
        object.__setattr__(instance, field_.name, value)


def cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line, with no control characters and at most `limit` characters: what a reason may
    cost on a console or a topic. A control character (an ANSI escape's ESC, say) is written as its escape
    (`\\x1b`): text from a message must not drive the terminal that shows it. Cutting twice changes
    nothing."""
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # bound the cost of the split below, too
    text = " ".join(text.split())
    if not text.isprintable():  # rare: the check runs at C speed, the escaping below does not
        text = "".join(char if char.isprintable() else _escaped(char) for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_location(location: str) -> str:
    """`location` written one way: a local path (plain or file://) normalised (`.`, `..`, repeated and
    trailing slashes), a URL with its scheme and host in lower case, its default port and trailing slash
    dropped. Syntax only: nothing is looked up, so it costs microseconds on the step."""
    if not location:
        return ""
    parsed = urlsplit(location)
    if not parsed.scheme or parsed.scheme.lower() == "file":
        path = posixpath.normpath(parsed.path if parsed.scheme else location)
        return "/" + path.lstrip("/") if path.startswith("//") else path
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        return location  # not a valid URL: refused later, by the scorer that parses it
    host = (parsed.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parsed.username or parsed.password:
        return location  # credentials in a URL: kept verbatim, never rewritten
    path = posixpath.normpath(parsed.path) if parsed.path not in ("", "/") else ""
    return urlunsplit((scheme, netloc, path, parsed.query, parsed.fragment))


def _escaped(char: str) -> str:
    """A character that is not printable as its Python escape (`\\x1b`, `\\u200b`)."""
    return char.encode("unicode_escape").decode("ascii")


class ModelType(enum.Enum):
    """How a model is served. Symbols and order follow the Avro enum `ModelType`."""

    UNKNOWN = "UNKNOWN"
    TENSORFLOW = "TENSORFLOW"
    TENSORFLOWSAVED = "TENSORFLOWSAVED"
    TENSORFLOWSERVING = "TENSORFLOWSERVING"
    PMML = "PMML"
    H2O = "H2O"
    # Added after the original's symbols (readers on an earlier schema read them as UNKNOWN):
    OPENINFERENCE = "OPENINFERENCE"  # V2 servers (MLServer, KServe, Triton)
    ONNX = "ONNX"  # an ONNX model run in process by ONNX Runtime


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


# The words of an experiment, as the descriptor's fields hold them (see `flows.core.vocabulary`).
CHAMPION, CHALLENGER = Role.CHAMPION, Role.CHALLENGER
SHADOW, CANARY = Mode.SHADOW, Mode.CANARY
PROMOTE, RETIRE = Command.PROMOTE, Command.RETIRE


@dataclass(frozen=True, slots=True)
class ModelDescriptor:
    """A model to serve: inline bytes (a SavedModel or ONNX archive) or a location; or a command about one.

    `role` is `champion` (it answers every record: the default) or `challenger`, run beside the champion in
    `mode` `shadow` (it scores a `fraction` of the records, results keep the champion's scores) or `canary`
    (a `fraction` of users, chosen by a sticky hash, get its results). A descriptor with a `command`
    (`promote`, `retire`) carries no model: it acts on the challenger named `model_name` (see
    `flows.core.challenger`).
    """

    model_name: str
    description: str
    model_type: ModelType
    model_bytes: bytes | None = None
    model_source_location: str | None = None
    signature: bytes = b""  # Ed25519, see flows.core.admission.signing; not part of the digest
    role: str = CHAMPION
    mode: str = ""
    fraction: float = 1.0
    command: str = ""
    # Freshness (signed; see flows.core.admission.freshness): a number that grows with every message a signer
    # publishes (the tools use the issue time in microseconds), and an optional expiry, ms since the epoch.
    sequence: int = 0
    expires_at: int = 0
    # A command's exact target: the digest of the challenger it promotes or retires.
    target_digest: str = ""

    def __setstate__(self, state: tuple) -> None:
        restore_with_defaults(self, state)  # snapshots from before the challenger or freshness fields

    @property
    def digest(self) -> str:
        """Identity of the model's content: equal digests mean the same scorer can be reused. Two spellings
        of one location (`/m/1`, `/m//1/`, `file:///m/x/../1`; `HTTP://Host:80/v2`) are one model."""
        hasher = hashlib.sha256()
        hasher.update(self.model_type.value.encode())
        hasher.update(b"\0")
        hasher.update(self.model_bytes or b"")
        hasher.update(b"\0")
        hasher.update(canonical_location(self.model_source_location or "").encode())
        return hasher.hexdigest()[:16]

    @property
    def is_challenger(self) -> bool:
        return self.role == CHALLENGER and not self.command

    def experiment(self) -> str:
        """How the model is to serve, in words: "champion", "shadow challenger on 50% of records", ..."""
        if self.command:
            return f"{self.command} {self.model_name!r}"
        if not self.is_challenger:
            return CHAMPION
        population = "records" if self.mode == SHADOW else "users"
        return f"{self.mode} challenger on {self.fraction * 100:g}% of {population}"

    def __repr__(self) -> str:
        size = len(self.model_bytes) if self.model_bytes else 0
        role = "" if self.role == CHAMPION and not self.command else f", {self.experiment()}"
        return (
            f"ModelDescriptor({self.model_name!r}, {self.model_type.value}, "
            f"bytes={size}, location={self.model_source_location!r}{role})"
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
        "products",
        "replaced",
        "scores",
        "trace_context",
    )

    def __init__(
        self,
        messages: list[DataMessage],
        counts: list[int],
        scores: np.ndarray,
        metadata: ModelResultMetadata,
        replaced: dict[int, ScoredMessage] | None = None,
        products: np.ndarray | None = None,
    ) -> None:
        self.messages = messages
        self.counts = (
            counts  # pairs of each record; record i's scores are scores[starts[i]:starts[i] + counts[i]]
        )
        self.scores = scores  # empty when every record is replaced
        self.metadata = metadata
        self.replaced = replaced or {}  # by index: records whose result is an error (scores withheld)
        self.trace_context = ""  # the W3C traceparent of the batch's span, carried by every result
        self.products = products  # the product of each pair, as the model was given it (for flows.core.drift)
        # Of `replaced`, the records whose error the model caused (a failed call, a score out of range), not
        # the flow's refusal of ids outside what the model takes (flows.core.probation counts these).
        self.model_errors = 0
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
        return ScoredMessage(
            RecommenderResult(message.record, output, self.metadata),
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
class ChallengerReport:
    """How a challenger did beside the champion over one window of records on one shard
    (`flows.core.challenger`).

    Shadow: `challenger_records` were scored by both models, compared by the mean share of each record's
    top-`top_k` products the two agree on and the mean absolute difference of a pair's two scores. Canary:
    `challenger_records` were answered by the challenger; the comparison fields are 0. Batch times are
    the mean of each model's calls.
    """

    challenger: str
    champion: str
    mode: str
    fraction: float
    shard: str
    window: int
    closed_by: ClosedBy
    records: int
    challenger_records: int
    challenger_errors: int
    compared_records: int
    compared_pairs: int
    top_k: int
    top_k_agreement: float
    mean_abs_diff: float
    champion_batch_ms: float
    challenger_batch_ms: float
    start_time: int
    end_time: int

    def __str__(self) -> str:
        head = (
            f"challenger {self.challenger!r} ({self.mode} of {self.champion!r}) on {self.shard}, "
            f"window {self.window}"
        )
        closed = "" if self.closed_by == ClosedBy.WINDOW else f" ({self.closed_by})"
        if self.mode == Mode.SHADOW:
            body = (
                f"{self.challenger_records:,} of {self.records:,} records compared: "
                f"top-{self.top_k} agreement {self.top_k_agreement:.2f}, "
                f"mean |score difference| {self.mean_abs_diff:.3f}"
            )
        else:
            body = f"answered {self.challenger_records:,} of {self.records:,} records"
        errors = f", {self.challenger_errors:,} challenger errors" if self.challenger_errors else ""
        timing = (
            f"; batch {self.champion_batch_ms:.1f} ms champion, {self.challenger_batch_ms:.1f} ms challenger"
        )
        return f"{head}{closed}: {body}{errors}{timing}"


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Bytes from an input that could not be decoded as `schema`, and why: the flow reports it (a rejected
    model, a dead letter) instead of failing on it. Any wire format produces it; `flows.wire.avro` does."""

    schema: str
    reason: str
    payload: bytes | None  # None for a message without a value (a Kafka tombstone)


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """Something that happened to a model: its `kind` (`flows.core.vocabulary.EventKind` says each one), the
    model, why, and on which shard (empty: flow-wide)."""

    kind: EventKind
    model_name: str
    reason: str = ""
    shard: str = ""
    previous_model: str = ""
    load_ms: float = 0.0
    arrival_ms: float = 0.0  # from the model message's arrival at the flow to this event

    def __post_init__(self) -> None:
        # A kind read from the events topic that this version does not know stays the string it was.
        if not isinstance(self.kind, EventKind) and self.kind in EventKind._value2member_map_:
            object.__setattr__(self, "kind", EventKind(self.kind))
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


@dataclass(frozen=True, slots=True)
class SignedModelEvent:
    """A model event as it travels on the events topic, with who signed it, when, and the signature
    (`flows.core.admission.event_signing`). Only the topic's writer and readers see it: the flow's steps pass
    plain ModelEvents and the Kafka output signs them as it encodes them. Empty signer and signature,
    issued_ms 0: unsigned."""

    event: ModelEvent
    signer: str = ""
    issued_ms: int = 0
    signature: bytes = b""

    def __post_init__(self) -> None:
        # The signer's name comes from the message too, and ends up in the log lines of whoever refuses it.
        object.__setattr__(self, "signer", cut(self.signer, 200))
