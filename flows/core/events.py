"""What the flow reports about its models: events (accepted, refused, rolled back, ...), as published and
signed, a challenger's report over a window, and a model's serving statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flows.core.text import cut
from flows.core.vocabulary import ClosedBy, EventKind, Mode


def ms_since(epoch_s: float) -> float:
    """Milliseconds from `epoch_s` (time.time()) to now, never negative (clocks of two processes)."""
    return max(0.0, (time.time() - epoch_s) * 1000)


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
    (`flows.core.event_signing`). Only the topic's writer and readers see it: the flow's steps pass
    plain ModelEvents and the Kafka output signs them as it encodes them. Empty signer and signature,
    issued_ms 0: unsigned."""

    event: ModelEvent
    signer: str = ""
    issued_ms: int = 0
    signature: bytes = b""

    def __post_init__(self) -> None:
        # The signer's name comes from the message too, and ends up in the log lines of whoever refuses it.
        object.__setattr__(self, "signer", cut(self.signer, 200))
