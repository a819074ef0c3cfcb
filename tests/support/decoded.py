"""Decoding in tests, where a message that does not decode fails the test."""

from __future__ import annotations

from typing import TypeVar

from flows.core.records import DecodeFailure
from flows.wire.avro import AvroCodec

T = TypeVar("T")


def decoded(codec: AvroCodec[T], payload: bytes | None) -> T:
    """`payload` as `codec` decodes it; an AssertionError naming the DecodeFailure if it does not."""
    value = codec.decode(payload)
    assert not isinstance(value, DecodeFailure), value
    return value
