"""Signed model events: the flow vouches for the events it writes to the events topic.

`serving-retrain` trains and publishes a model on a `drift` event, and anyone who can write to the events
topic can write one. With SERVING_EVENTS_SIGNING_KEY set, the flow's Kafka output signs each event as it
encodes it (`EventSigner`), and a reader holding the public key tells the flow's events from forgeries
(`verify_event`). The signature covers every field of the event, the signer's name and the time it was
issued, length-prefixed after a domain string of its own (so no descriptor signature passes for an event
signature, nor the reverse). The issue time is strictly increasing per signer, so a reader can refuse an
event that is not newer than the last one it accepted: a replay.

The signed strings are the ones ModelEvent holds (bounded by `flows.core.text.cut`), which decoding gives
back unchanged.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field

from flows.core.admission.signing import SIGNATURE_BYTES, length_prefixed, load_private_key, signed_by_any
from flows.core.errors import ConfigurationError
from flows.core.events import ModelEvent, SignedModelEvent
from flows.core.sections import Section

EVENT_DOMAIN = b"bytewax-model-serving/ModelEvent/v1"


class EventSettings(Section):
    """Whether the flow signs the model events it writes (`SERVING_EVENTS_*`)."""

    signing_key: Path | None = Field(
        None,
        description=(
            "path of an Ed25519 private key (PKCS#8 PEM, e.g. from `serving-model-keys --name "
            "event-signing`); set, the flow signs every event it writes to the events topic (signer: "
            "host/pid, issue time, signature; see `flows/core/event_signing.py`), and "
            "`serving-retrain --trusted-keys` acts only on events signed with it. Unset: events go unsigned, "
            "as before, and `serving-retrain` needs `--insecure-accept-unsigned-events`"
        ),
    )


def signed_event_message(signed: SignedModelEvent) -> bytes:
    """The bytes an event's signature is over: all of the event, its signer and its issue time."""
    event = signed.event
    return length_prefixed(
        (
            EVENT_DOMAIN,
            signed.signer.encode(),
            b"%d" % signed.issued_ms,
            event.kind.encode(),
            event.model_name.encode(),
            event.reason.encode(),
            event.shard.encode(),
            event.previous_model.encode(),
            repr(float(event.load_ms)).encode(),
            repr(float(event.arrival_ms)).encode(),
        )
    )


def verify_event(signed: SignedModelEvent, trusted_keys: Iterable[bytes]) -> str | None:
    """None if one of the raw public keys signed the event, else why not."""
    if not signed.signature:
        return "the event is not signed"
    if len(signed.signature) != SIGNATURE_BYTES:
        return f"the signature is {len(signed.signature)} bytes, not an Ed25519 signature ({SIGNATURE_BYTES})"
    if signed_by_any(signed.signature, signed_event_message(signed), trusted_keys):
        return None
    return f"the signature (signer {signed.signer!r}) does not verify under any trusted key"


class EventSigner:
    """Signs the events of one flow process. Its name is the host and process id, so that each process's
    issue times, strictly increasing, can be checked on their own; workers of the process share it."""

    def __init__(
        self, private_key: Ed25519PrivateKey, name: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name or f"{socket.gethostname()}/{os.getpid()}"
        self._key = private_key
        self._clock = clock
        self._last_ms = 0
        self._lock = threading.Lock()

    def sign(self, event: ModelEvent) -> SignedModelEvent:
        """`event` with this signer's name, an issue time after any it gave before, and the signature."""
        with self._lock:  # two events in the same millisecond still get two issue times
            self._last_ms = max(int(self._clock() * 1000), self._last_ms + 1)
            issued_ms = self._last_ms
        unsigned = SignedModelEvent(event, self.name, issued_ms)
        return replace(unsigned, signature=self._key.sign(signed_event_message(unsigned)))


def event_signer(settings: EventSettings) -> EventSigner | None:
    """The signer with SERVING_EVENTS_SIGNING_KEY's key (None if unset), or ConfigurationError naming the
    setting and the file."""
    if settings.signing_key is None:
        return None
    try:
        return EventSigner(load_private_key(settings.signing_key))
    except ValueError as error:
        raise ConfigurationError(f"SERVING_EVENTS_SIGNING_KEY: {error}") from error
