"""A poll decoded at once gives, message for message, what decoding each message alone gives: on generated
records, on valid encodings of unusual shapes, and on corrupt bytes mixed into the same poll."""

from __future__ import annotations

import random

import pytest

from flows.adapters.sources.generators import generated_records
from flows.core.records import DecodeFailure, RecommenderRecord
from flows.wire.avro import RECORD
from flows.wire.record_polls import SHAPE_IS_CURRENT, decode_records

EDGE_LONGS = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, -(1 << 63)]


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def _varint(number: int, padding: int = 0) -> bytes:
    """An unsigned varint, written with `padding` needless extra bytes (still valid Avro)."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    for _ in range(padding):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _long(value: int, padding: int = 0) -> bytes:
    return _varint(_zigzag(value), padding)


def _string(text: str) -> bytes:
    return _long(len(text.encode())) + text.encode()


def _message(user: bytes, blocks: list[bytes], datatype: str = "recommender") -> bytes:
    return RECORD.header + user + b"".join(blocks) + b"\x00" + _string(datatype)


def _unusual_but_valid() -> list[bytes]:
    """Valid encodings that are not the plain one: several blocks, sized blocks, padded varints."""
    products = [3, 299, 0]
    items = b"".join(_long(p) for p in products)
    return [
        _message(_long(5), [_long(1) + _long(3), _long(2) + _long(299) + _long(0)]),  # two blocks
        _message(_long(5), [_long(-3) + _long(len(items)) + items]),  # a block with its byte size
        _message(_long(5, padding=2), [_long(3) + items]),  # a padded user
        _message(_long(5), [_long(3, padding=1) + items]),  # a padded count
        _message(_long(5), [_long(3) + _long(3, padding=3) + _long(299) + _long(0)]),  # a padded product
        _message(_long(5, padding=8), [_long(3) + items]),  # a 10-byte varint
        _message(_long(5), [_long(3) + items], datatype="other"),
        _message(_long(5), [_long(3) + items], datatype="recommendér"),
        _message(_long(5), [], datatype=""),
    ]


def _corrupt(valid: list[bytes], rng: random.Random) -> list[bytes | None]:
    sample = valid[:3]
    broken: list[bytes | None] = [None, b"", RECORD.header, b"\xc3\x01" + b"\x00" * 8 + b"\x02"]
    broken += [payload[:cut] for payload in sample for cut in range(len(payload))]  # every truncation
    broken += [payload + extra for payload in sample for extra in (b"\x00", b"\x16recommender")]
    for _ in range(400):  # flipped bytes, anywhere
        payload = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        broken.append(bytes(payload))
    return broken


def test_the_plain_shape_is_the_current_schemas():
    # Fails when RecommenderRecord changes: update flows.wire.record_polls (its shape and fingerprint), or
    # every message is decoded alone again (correct, ~3 us per record slower).
    assert SHAPE_IS_CURRENT


def test_generated_records_decode_together_as_alone():
    payloads = [RECORD.encode(record) for record in generated_records(11, 2000)]
    decoded = decode_records(payloads)
    assert decoded == [RECORD.decode(payload) for payload in payloads]
    assert all(isinstance(record, RecommenderRecord) for record in decoded)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_odd_valid_and_corrupt_messages_in_one_poll_decode_as_alone(seed):
    rng = random.Random(seed)
    edges = [RecommenderRecord(user, [user, 1, user]) for user in EDGE_LONGS]
    edges += [RecommenderRecord(user, []) for user in EDGE_LONGS]
    valid = [RECORD.encode(record) for record in [*edges, *generated_records(seed, 200)]]
    poll = valid + _unusual_but_valid() + _corrupt(valid, rng)
    rng.shuffle(poll)
    together = decode_records(poll)
    alone = [RECORD.decode(payload) for payload in poll]
    assert together == alone
    # The poll had every kind: records decoded together, records decoded alone, and failures.
    assert sum(isinstance(value, DecodeFailure) for value in alone) > 100
    assert decode_records(_unusual_but_valid()) == [RECORD.decode(p) for p in _unusual_but_valid()]
    assert all(isinstance(value, RecommenderRecord) for value in decode_records(_unusual_but_valid()))
