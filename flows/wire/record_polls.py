"""Decoding a whole poll of RecommenderRecord messages at once.

fastavro costs about 4.5 us per message, almost all of it fixed per call (a file object, a walk of the
schema, a dict per record), and a message is 50 bytes. Here the messages a poll has in the usual shape are
decoded together with numpy: the varints of all of them in a handful of array operations, then one list
and one record object per message. The usual shape is the current schema's plain encoding: the header,
then user, products in one block, and the default `datatype` "recommender". Every other message (another
datatype, several blocks, an earlier schema, anything malformed) is decoded by `RECORD.decode`, alone, so
the result is always what `RECORD.decode` gives (the tests compare both on valid, odd and corrupt bytes).

Why the shape check is exact: the varint bytes of a message are its user, the product count c, c products
and the 0 that ends the array. Any valid encoding of the same array that is not one block has more varints
than c + 3, so "c + 3 varints, the last 0, then the datatype to the end" is exactly one parse, fastavro's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flows.core.records import DecodeFailure, RecommenderRecord
from flows.wire.avro import HEADER_SIZE, RECORD, _expanded_fingerprint
from flows.wire.result_encoder import string

# The RecommenderRecord schema whose plain encoding is described above; any other one is left to fastavro.
SHAPE_IS_CURRENT = _expanded_fingerprint(RECORD.schema) == "7913ea33df4c4bda"

DEFAULT_DATATYPE = "recommender"
_TAIL = string(DEFAULT_DATATYPE)  # the datatype as the record's last field: its length, then its bytes
_SHORTEST = HEADER_SIZE + 2 + len(_TAIL)  # a user and an empty array (one byte each), then the datatype
_LONGEST_VARINT = 9  # bytes: up to 63 bits, so the value fits an unsigned 64-bit integer without overflow


def decode_records(payloads: Sequence[bytes | None]) -> list[RecommenderRecord | DecodeFailure]:
    """Each payload decoded as `RECORD.decode` would, the usual ones together (see the module docstring)."""
    if not SHAPE_IS_CURRENT:
        return [RECORD.decode(payload) for payload in payloads]
    header = RECORD.header
    usual = [
        (index, payload)
        for index, payload in enumerate(payloads)
        if payload is not None
        and len(payload) >= _SHORTEST
        and payload.startswith(header)
        and payload.endswith(_TAIL)
        and payload[-len(_TAIL) - 1] < 0x80  # the varints end before the datatype
    ]
    decoded: list[RecommenderRecord | DecodeFailure | None] = [None] * len(payloads)
    if usual:
        for (index, _), record in zip(usual, _decode_usual([payload for _, payload in usual])):
            decoded[index] = record
    return [
        value if value is not None else RECORD.decode(payload) for value, payload in zip(decoded, payloads)
    ]


def _decode_usual(payloads: list[bytes]) -> list[RecommenderRecord | None]:
    """Records from payloads that passed the byte checks of `decode_records`; None where the varints do not
    have the usual shape (that payload is then decoded alone)."""
    varint_bytes = [payload[HEADER_SIZE : -len(_TAIL)] for payload in payloads]
    data = np.frombuffer(b"".join(varint_bytes), np.uint8)
    ends = np.flatnonzero(data < 0x80)  # the last byte of every varint
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    # Each varint's value: 7 bits per byte, least significant group first.
    varint_of_byte = np.repeat(np.arange(len(ends)), lengths)
    shifts = (7 * (np.arange(len(data)) - starts[varint_of_byte])).astype(np.uint64)
    shifts[shifts > 7 * (_LONGEST_VARINT - 1)] = 0  # too long: its message is refused below, keep it defined
    groups = (data & 0x7F).astype(np.uint64) << shifts
    raw = np.bitwise_or.reduceat(groups, starts)
    values = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)  # zig-zag
    # Every message's bytes end on a varint end (checked), so each message starts on a varint start.
    message_starts = np.zeros(len(payloads), np.int64)
    np.cumsum([len(part) for part in varint_bytes[:-1]], out=message_starts[1:])
    first = np.searchsorted(starts, message_starts)
    count = np.append(first[1:], len(starts)) - first
    too_long = np.maximum.reduceat(lengths, first) > _LONGEST_VARINT
    items = values[np.minimum(first + 1, len(values) - 1)]
    last = values[first + count - 1]
    usual = ~too_long & (last == 0) & (((items == 0) & (count == 2)) | ((items > 0) & (count == items + 3)))
    listed = values.tolist()
    return [
        RecommenderRecord(listed[at], listed[at + 2 : at + 2 + products] if products else []) if ok else None
        for at, products, ok in zip(first.tolist(), items.tolist(), usual.tolist())
    ]
