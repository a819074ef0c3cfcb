"""The exactly-once sink's memory: which data offsets have a committed answer, and the marker that carries
it."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import random

import pytest

from flows.adapters.kafka.answered import SIGNATURE_PREFIX, AnsweredOffsets, Covered, Marker, marker_key
from flows.adapters.kafka.data_source import KafkaOrigin


def test_answers_in_any_order_make_the_same_set_as_a_plain_set_of_offsets():
    rng = random.Random(7)
    for _ in range(200):
        ranges = []
        offset = 0
        for _ in range(rng.randint(1, 40)):
            first = offset + rng.randint(0, 3)  # gaps: offsets that are no data message, or not answered yet
            last = first + rng.randint(0, 5)
            ranges.append((first, last))
            offset = last + 1
        rng.shuffle(ranges)  # held records are answered after later ones
        answered = AnsweredOffsets()
        plain: set[int] = set()
        for first, last in ranges:
            answered.add(first, last)
            plain.update(range(first, last + 1))
        assert [o for o in range(offset + 3) if answered.covers(o)] == sorted(plain)
        assert all(end + 1 < start for end, start in zip(answered.ends, answered.starts[1:]))  # merged


def test_a_record_held_while_later_ones_were_answered_leaves_a_gap_until_it_is_answered():
    answered = AnsweredOffsets()
    answered.add(0, 99)
    answered.add(101, 200)  # offset 100 is still held by a shard
    assert len(answered) == 2 and not answered.covers(100) and answered.covers(150)
    answered.add(100, 100)
    assert answered.to_json() == [[0, 200]]


KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def signed(content: bytes, key: bytes = KEY) -> bytes:
    """`content` signed as the flow signs a marker (to show what the checks after the signature refuse)."""
    return SIGNATURE_PREFIX + hmac.new(key, content, hashlib.sha256).hexdigest().encode() + b"\n" + content


def test_a_marker_round_trips_and_a_bad_one_is_refused_with_the_reason():
    answered = AnsweredOffsets()
    answered.add(5, 9)
    answered.add(20, 20)
    marker = Marker("serving.results.records.3", "records", 3, answered)
    assert Marker.decode(marker.encode(KEY), KEY) == marker
    for bad, reason in [
        (signed(b"\xff not json"), "not JSON"),
        (signed(b"[1, 2]"), "not a JSON object"),
        (signed(b'{"id": "i", "topic": "t", "partition": "0", "answered": []}'), "no id and topic"),
        (signed(b'{"id": "i", "topic": "t", "partition": 0, "answered": [[3, 1]]}'), "is not a range"),
        (signed(b'{"id": "i", "topic": "t", "partition": 0, "answered": [[-1, 1]]}'), "is not a range"),
        (signed(b'{"id": "i", "topic": "t", "partition": 0, "answered": [[0, 1.5]]}'), "is not a range"),
        (signed(b'{"id": "i", "topic": "t", "partition": 0, "answered": {"a": 1}}'), "expected a list"),
        (signed(b"[" * 100_000 + b"]" * 100_000), "not JSON: RecursionError"),
    ]:
        with pytest.raises(ValueError, match=reason):
            Marker.decode(bad, KEY)


def test_a_marker_the_flow_did_not_sign_is_refused_before_its_content_is_read():
    """Forged: plain JSON claiming offsets 0 to 10**15 (what dropped 300 of 300 records), another key's
    signature, a signature over other content, a nested array of 100 KB, a message of 0.9 MB."""
    forged = b'{"id": "i", "topic": "records", "partition": 0, "answered": [[0, 1000000000000000]]}'
    honest = Marker("i", "records", 0, AnsweredOffsets([0], [10])).encode(KEY)
    for bad, reason in [
        (forged, "not signed"),
        (signed(forged, OTHER_KEY), "signature does not match"),
        (honest.replace(b"10", b"99"), "signature does not match"),
        (b"[" * 50_000 + b"]" * 50_000, "not signed"),
        (b"x" * 900_000, "over the 262,144 bytes a marker takes"),
    ]:
        with pytest.raises(ValueError, match=reason):
            Marker.decode(bad, KEY)


def test_the_marker_key_comes_from_its_own_secret_or_the_events_key_and_is_required():
    assert marker_key("a secret of 16 bytes+", None) != marker_key("another secret here!", None)
    assert marker_key(None, b"-----BEGIN PRIVATE KEY-----...") != b"-----BEGIN PRIVATE KEY-----..."
    with pytest.raises(ValueError, match="at least 16 bytes"):
        marker_key("short", None)
    with pytest.raises(ValueError, match="SERVING_KAFKA_MARKER_KEY .* or SERVING_EVENTS_SIGNING_KEY"):
        marker_key(None, None)


def test_forgetting_the_oldest_ranges_keeps_the_newest():
    answered = AnsweredOffsets()
    for first in range(0, 5_000, 2):
        answered.add(first, first)
    assert answered.forget_oldest(1_000) == 1_500
    assert len(answered) == 1_000 and answered.last == 4_998
    assert not answered.covers(0) and answered.covers(4_998)


def test_an_origin_says_which_offsets_its_answer_covers_and_old_snapshots_still_load():
    origin = KafkaOrigin("records", 2, 17, 1_000, (), covers_from=12)
    assert origin.covered == Covered(2, 12, 17)
    assert pickle.loads(pickle.dumps(origin)).covered == Covered(2, 12, 17)
    old = KafkaOrigin.__new__(KafkaOrigin)
    old.__setstate__(("records", 2, 17, 1_000, ()))  # an origin pickled before covers_from existed
    assert old.covered == Covered(2, 17, 17)
