"""Which drift events `serving-retrain` trains on, and why it refuses the others.

A drift event makes retrain train and publish a model, which the flow then serves: so whoever can write
to the events topic could otherwise publish models, as often as they like. The gate passes an event only if
it is trusted (signed by one of the trusted keys, newer than the last event accepted from its signer about
the same model, and not older than the age limit), new (no training after a drift of that model yet: a
drift of `recommender-v2` trains once, a drift of the model it published may train again) and not too soon
(one training per interval at most; a refused event is skipped, not queued).

Replays are judged per signer and model, not per signer: events are keyed by model name, so Kafka orders
one model's events and no more (two models' events may lie in two partitions, read in any interleaving).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.core.event_signing import verify_event
from flows.core.events import ModelEvent, SignedModelEvent
from flows.core.vocabulary import EventKind


@dataclass
class RetrainGate:
    """What retrain has accepted and trained on so far, and its limits (see the module docstring).

    `trusted_keys` empty means unsigned events are accepted (`--insecure-accept-unsigned-events`): only
    the de-duplication and the interval then stand between the topic and the models topic.
    """

    trusted_keys: tuple[bytes, ...]
    min_interval_s: float
    max_age_s: float  # 0: no limit
    model: str | None = None  # drift of this model only; None: any
    _last_issued_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    _trained_after: set[str] = field(default_factory=set)
    _last_training_ms: int | None = None

    def wants(self, event: ModelEvent) -> bool:
        """Whether `event` is one retrain acts on at all (a drift of the followed model): the others pass
        by without a word, unverified."""
        return event.kind == EventKind.DRIFT and self.model in (None, event.model_name)

    def judge(self, signed: SignedModelEvent, now_ms: int) -> str | None:
        """None if retrain trains on this drift event now (and the gate counts that training), else why not.
        A trusted event is remembered as accepted, for the replay check, even if it trains nothing."""
        if self.trusted_keys:
            untrusted = self._untrusted(signed, now_ms)
            if untrusted:
                return untrusted
        name = signed.event.model_name
        if name in self._trained_after:
            return f"duplicate: retrained after a drift of {name!r} already"
        if self._last_training_ms is not None:
            since_s = (now_ms - self._last_training_ms) / 1000
            if since_s < self.min_interval_s:
                return (
                    f"rate limit: the last training began {since_s:.0f} s ago, "
                    f"under --min-interval {self.min_interval_s:g} s"
                )
        self._trained_after.add(name)
        self._last_training_ms = now_ms
        return None

    def _untrusted(self, signed: SignedModelEvent, now_ms: int) -> str | None:
        problem = verify_event(signed, self.trusted_keys)
        if problem:
            return problem
        key = (signed.signer, signed.event.model_name)
        last = self._last_issued_ms.get(key)
        if last is not None and signed.issued_ms <= last:
            return (
                f"replay: issued at {signed.issued_ms} ms, not after the last accepted event of signer "
                f"{signed.signer!r} about {signed.event.model_name!r} ({last} ms)"
            )
        age_s = (now_ms - signed.issued_ms) / 1000
        if self.max_age_s and age_s > self.max_age_s:
            return f"stale: issued {age_s:.0f} s ago, over --max-age {self.max_age_s:g} s"
        self._last_issued_ms[key] = signed.issued_ms
        return None
