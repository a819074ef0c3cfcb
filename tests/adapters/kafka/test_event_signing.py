"""Signed model events (`flows.core.event_signing`): what the flow's Kafka output writes to the
events topic with SERVING_EVENTS_SIGNING_KEY set verifies under the public key, and nothing else does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flows.adapters.kafka.outputs import event_message, smaller_event
from flows.adapters.kafka.settings import KafkaSettings
from flows.core.admission.signing import new_private_key, private_key_pem, raw_public_key, sign
from flows.core.context import ServingContext
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.event_signing import EventSettings, EventSigner, event_signer, verify_event
from flows.core.events import ModelEvent
from flows.core.vocabulary import EventKind
from flows.runtime.app import build_flow
from flows.runtime.settings import Settings
from flows.wire.avro import EVENT, SIGNED_EVENT

KEY = new_private_key()
TRUSTED = (raw_public_key(KEY.public_key()),)
DRIFT = ModelEvent(EventKind.DRIFT, "recommender-v2", "PSI of product 0.9 over 0.2", load_ms=1.5)


def test_a_signed_event_verifies_after_the_round_trip_through_avro():
    signed = SIGNED_EVENT.decode(SIGNED_EVENT.encode(EventSigner(KEY, "host/7").sign(DRIFT)))
    assert signed.event == DRIFT and signed.signer == "host/7" and signed.issued_ms > 0
    assert verify_event(signed, TRUSTED) is None


@pytest.mark.parametrize(
    "change",
    [
        lambda s: replace(s, event=replace(s.event, kind="recovered")),
        lambda s: replace(s, event=replace(s.event, model_name="recommender-v3")),
        lambda s: replace(s, event=replace(s.event, reason="PSI of product 0.9 over 0.1")),
        lambda s: replace(s, event=replace(s.event, shard="shard-1")),
        lambda s: replace(s, event=replace(s.event, load_ms=2.5)),
        lambda s: replace(s, signer="host/8"),
        lambda s: replace(s, issued_ms=s.issued_ms + 1),
    ],
    ids=["kind", "model", "reason", "shard", "load", "signer", "issued"],
)
def test_every_field_is_signed(change):
    signed = EventSigner(KEY, "host/7").sign(DRIFT)
    assert "does not verify" in verify_event(change(signed), TRUSTED)


def test_unsigned_wrongly_signed_and_descriptor_signatures_are_refused():
    assert verify_event(SIGNED_EVENT.decode(EVENT.encode(DRIFT)), TRUSTED) == "the event is not signed"
    other = EventSigner(new_private_key(), "host/7").sign(DRIFT)
    assert "does not verify under any trusted key" in verify_event(other, TRUSTED)
    assert "2 bytes" in verify_event(replace(other, signature=b"ab"), TRUSTED)
    # A descriptor's signature never passes for an event's: the domains differ.
    descriptor = sign(ModelDescriptor("recommender-v2", "", ModelType.UNKNOWN, None, "x"), KEY)
    forged = replace(EventSigner(KEY, "host/7").sign(DRIFT), signature=descriptor.signature)
    assert verify_event(forged, TRUSTED) is not None


def test_issue_times_strictly_increase_within_a_millisecond_and_when_the_clock_steps_back():
    times = iter([5.0, 5.0, 4.0, 6.0])
    signer = EventSigner(KEY, "host/7", clock=lambda: next(times))
    assert [signer.sign(DRIFT).issued_ms for _ in range(4)] == [5000, 5001, 5002, 6000]


def test_the_kafka_output_signs_events_and_their_smaller_forms():
    signer = EventSigner(KEY)
    [message] = event_message(DRIFT, signer)
    signed = SIGNED_EVENT.decode(message.value)
    assert message.key == b"recommender-v2" and verify_event(signed, TRUSTED) is None
    smaller = SIGNED_EVENT.decode(smaller_event(message, "too large", signer).value)
    assert "(cut: too large)" in smaller.event.reason and verify_event(smaller, TRUSTED) is None
    assert smaller.issued_ms > signed.issued_ms
    [unsigned] = event_message(DRIFT)
    assert SIGNED_EVENT.decode(unsigned.value).signature == b""


def test_the_signing_key_setting_names_itself_and_the_file_when_it_is_bad(tmp_path):
    assert event_signer(EventSettings()) is None
    good = tmp_path / "events.key"
    good.write_bytes(private_key_pem(KEY))
    assert verify_event(event_signer(EventSettings(signing_key=good)).sign(DRIFT), TRUSTED) is None
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(ValueError, match=f"SERVING_EVENTS_SIGNING_KEY: {bad}: not an unencrypted PEM"):
        event_signer(EventSettings(signing_key=bad))


def test_the_signing_key_is_read_only_where_events_are_written(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    no_events = Settings(kafka=kafka, events=EventSettings(signing_key=bad))
    build_flow(no_events, ServingContext.create())  # no events topic: the key is never needed
    with_events = no_events.model_copy(update={"kafka": kafka.model_copy(update={"events_topic": "events"})})
    with pytest.raises(ValueError, match="SERVING_EVENTS_SIGNING_KEY"):
        build_flow(with_events, ServingContext.create())
