"""Freshness of signed model messages: no replay, no downgrade (as The Update Framework does for software).

A signature over content alone lets anyone with produce rights re-send an old, validly signed message: the
bytes of last month's v1 descriptor make v1 the champion again, an old `retire` ends a new experiment. So
every signed message carries a signed `sequence` that grows with each message its signer publishes (`sign`
stamps the issue time in microseconds), and may carry an expiry. The model holder keeps, per signing key,
the newest sequence it has taken in, in its recovery state, and refuses any message not newer than that
mark, with the reason. A deliberate rollback is a new message signed now (`serving-publish-model --version 1
--sign KEY`): it is newer than everything before it.

The mark moves as soon as a message passes its signature and freshness checks, before it is loaded: a
replay of a message still loading, or of one that failed for another reason, is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from flows.core.admission.signing import key_id, signer
from flows.core.descriptors import ModelDescriptor


@dataclass
class FreshnessMarks:
    """The newest sequence taken in from each signing key (by `key_id`)."""

    newest: dict[str, int] = field(default_factory=dict)

    @classmethod
    def restored(cls, marks: tuple[tuple[str, int], ...]) -> FreshnessMarks:
        return cls(dict(marks))

    def snapshot(self) -> tuple[tuple[str, int], ...]:
        return tuple(self.newest.items())

    def admit(self, descriptor: ModelDescriptor, trusted_keys: tuple[bytes, ...], now_ms: int) -> str | None:
        """None if a trusted key signed `descriptor` and it is newer than anything taken in from that key
        (the mark then moves to it); else why it is refused (the mark stays)."""
        signing_key, problem = signer(descriptor, trusted_keys)
        if problem:
            return problem
        key = key_id(signing_key)
        if descriptor.sequence <= 0:
            return (
                f"signed by key {key} but carries no sequence, so a replay could not be told apart: "
                "sign it again (serving-publish-model --sign stamps one)"
            )
        if descriptor.expires_at and now_ms >= descriptor.expires_at:
            expired = datetime.fromtimestamp(descriptor.expires_at / 1000, timezone.utc)
            return f"signed message expired at {expired:%Y-%m-%d %H:%M:%S} UTC"
        newest = self.newest.get(key, 0)
        if descriptor.sequence <= newest:
            return (
                f"replay or downgrade refused: sequence {descriptor.sequence} is not newer than {newest}, "
                f"the last message taken in from key {key} (a rollback is a new message signed now)"
            )
        self.newest[key] = descriptor.sequence
        return None
