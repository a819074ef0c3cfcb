"""The exactly-once sink's memory: which data offsets have a committed answer, and the marker that carries it."""

from __future__ import annotations

import pickle
import random

import pytest

from flows.adapters.kafka.answered import AnsweredOffsets, Covered, Marker
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


def test_a_marker_round_trips_and_a_bad_one_is_refused_with_the_reason():
    answered = AnsweredOffsets()
    answered.add(5, 9)
    answered.add(20, 20)
    marker = Marker("records", 3, answered)
    assert Marker.decode(marker.encode()) == marker
    for bad, reason in [
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"topic": "t", "partition": "0", "answered": []}', "no topic"),
        (b'{"topic": "t", "partition": 0, "answered": [[3, 1]]}', "is not a range"),
        (b'{"topic": "t", "partition": 0, "answered": [[-1, 1]]}', "is not a range"),
        (b'{"topic": "t", "partition": 0, "answered": [[0, 1.5]]}', "is not a range"),
        (b'{"topic": "t", "partition": 0, "answered": {"a": 1}}', "expected a list"),
    ]:
        with pytest.raises(ValueError, match=reason):
            Marker.decode(bad)


def test_an_origin_says_which_offsets_its_answer_covers_and_old_snapshots_still_load():
    origin = KafkaOrigin("records", 2, 17, 1_000, (), covers_from=12)
    assert origin.covered == Covered(2, 12, 17)
    assert pickle.loads(pickle.dumps(origin)).covered == Covered(2, 12, 17)
    old = KafkaOrigin.__new__(KafkaOrigin)
    old.__setstate__(("records", 2, 17, 1_000, ()))  # an origin pickled before covers_from existed
    assert old.covered == Covered(2, 17, 17)
