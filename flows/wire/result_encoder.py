"""Avro binary encoding by hand, for the one record written once per data record: RecommenderResult.

fastavro's schemaless_writer costs 8-11 us per result, most of it fixed per call (it walks the schema each
time); these functions cost ~4 us and write the same bytes (tests/wire/test_avro.py compares them with
fastavro's). They encode the datum only: `flows.wire.avro` adds the single-object header, and uses
`write_result` only while the schema's fingerprint is still `WRITTEN_FOR`, fastavro otherwise. A
`ScoredBatch` is encoded from its columns (`encode_scored_batch`), without building a result per record.

Values that repeat from record to record (small longs, strings, a batch's metadata) are encoded once and
looked up after; the caches are bounded, since values read from a topic can all differ.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flows.core.errors import ServingError
from flows.core.records import ModelResultMetadata, RecommenderResult, ScoredBatch

# The `_expanded_fingerprint` (flows.wire.avro) of the RecommenderResult schema, with the three records it
# uses, that `write_result` encodes: a change of the schema turns this encoder off.
WRITTEN_FOR = "6563c2bbb67f2358"

_INT64 = range(-(1 << 63), 1 << 63)  # an Avro long
_SMALL = range(-64, 1 << 14)  # user and product ids are small: their encodings are looked up
_MAX_STRINGS = 1 << 16  # entries of each string cache
_MAX_METADATA = 1 << 10  # entries of the metadata cache

# Encodings by value. Longs in _SMALL (filled once, below _varint_long).
_SMALL_LONGS: dict[int, bytes] = {}
# Strings: product ids, model names and sources repeat from record to record.
_STRINGS: dict[str, bytes] = {}
# Metadata: the results of a micro-batch share theirs (and its start time in ms is a 6-byte long, slow to
# encode in Python).
_METADATA: dict[tuple[str, str, str, int, int], bytes] = {}
# Product ids as a result's strings (`str(id)`, encoded), by id.
_ID_STRINGS: dict[int, bytes] = {}
# The metadata's last field, `outlierScore` (a union of null and double): branch 0, null; branch 1, a double.
_NO_OUTLIER_SCORE = b"\x00"
_OUTLIER_SCORE = b"\x02"


class NotEncodable(ServingError, ValueError):
    """A value the RecommenderResult schema cannot hold."""


def _varint_long(value: int) -> bytes:
    """An Avro long: zig-zag, then base-128 varint, least significant group first."""
    if value not in _INT64:
        raise NotEncodable(f"{value} does not fit in an Avro long")
    number = (value << 1) ^ (value >> 63)
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_SMALL_LONGS.update((value, _varint_long(value)) for value in _SMALL)


def _long(value: int) -> bytes:
    encoded = _SMALL_LONGS.get(value)
    return encoded if encoded is not None else _varint_long(value)


def _array(values: Sequence[Any], cache: dict[Any, bytes], encode: Callable[[Any], bytes]) -> bytes:
    """An Avro array in one block: each item's encoding looked up in `cache`, or made by `encode` if one
    is missing there."""
    if not values:
        return b"\x00"
    try:
        items = b"".join(map(cache.__getitem__, values))
    except KeyError:
        items = b"".join(map(encode, values))
    return _long(len(values)) + items + b"\x00"


def _remember(cache: dict[Any, bytes], key: Any, encoded: bytes, limit: int) -> bytes:
    """Keep `encoded` in `cache` under `key`; a full cache is emptied first (values from a topic can all
    differ, so the caches are bounded)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = encoded
    return encoded


def _long_array(values: Sequence[int]) -> bytes:
    return _array(values, _SMALL_LONGS, _long)


def string(value: str) -> bytes:
    """An Avro string: the UTF-8 length as a long, then the UTF-8 bytes."""
    encoded = _STRINGS.get(value)
    if encoded is None:
        utf8 = value.encode()
        encoded = _remember(_STRINGS, value, _long(len(utf8)) + utf8, _MAX_STRINGS)
    return encoded


def _string_array(values: Sequence[str]) -> bytes:
    return _array(values, _STRINGS, string)


def _double_array(values: Sequence[float]) -> bytes:
    if not values:
        return b"\x00"
    doubles = array("d", values)  # IEEE 754 binary64 in the machine's byte order; Avro's is little-endian.
    if sys.byteorder != "little":
        doubles.byteswap()
    return _long(len(values)) + doubles.tobytes() + b"\x00"


def _metadata(metadata: ModelResultMetadata) -> bytes:
    key = (metadata.errors, metadata.model_name, metadata.source, metadata.start_time, metadata.duration)
    encoded = _METADATA.get(key)
    if encoded is None:
        errors, model_name, source, start_time, duration = key
        fields = (string(errors), string(model_name), string(source), _long(start_time), _long(duration))
        encoded = _remember(_METADATA, key, b"".join(fields), _MAX_METADATA)
    return encoded


def _outlier_score(score: float | None) -> bytes:
    if score is None:
        return _NO_OUTLIER_SCORE
    return _OUTLIER_SCORE + struct.pack("<d", score)


def _id_string(product: int) -> bytes:
    encoded = _ID_STRINGS.get(product)
    if encoded is None:
        encoded = _remember(_ID_STRINGS, product, string(str(product)), _MAX_STRINGS)
    return encoded


def _id_string_array(products: Sequence[int]) -> bytes:
    """The array of strings a result gives for `products`: what _string_array writes for their `str`s."""
    return _array(products, _ID_STRINGS, _id_string)


def write_result(result: RecommenderResult) -> bytes:
    """The Avro datum of `result` (no header), as fastavro writes it with the schema of `WRITTEN_FOR`."""
    record, output = result.input_record, result.model_result
    return b"".join(
        (
            _long(record.user),
            _long_array(record.products),
            string(record.datatype),
            _string_array(output.products),
            _double_array(output.probabilities),
            _metadata(result.metadata),
            _outlier_score(result.metadata.outlier_score),
        )
    )


def encode_scored_batch(
    batch: ScoredBatch, header: bytes, encode: Callable[[RecommenderResult], bytes]
) -> list[bytes]:
    """Every result of `batch`, each after `header`, as `write_result` writes it; `encode` writes a whole
    message for the results the batch replaced (errors).

    The batch is read in columns: its scores are converted to Avro doubles once for the whole batch and
    sliced per record, and no result object is built (about half the cost of encoding a result).
    """
    doubles = batch.scores.astype("<f8").tobytes()  # IEEE 754 binary64, little-endian, as Avro writes them
    metadata = _metadata(batch.metadata)
    if batch.outlier_scores is None:
        outliers = [_NO_OUTLIER_SCORE] * len(batch.messages)
    else:  # each record's union branch and double, from one conversion of the batch's scores; NaN: none
        packed = batch.outlier_scores.astype("<f8").tobytes()
        unscored = np.isnan(batch.outlier_scores).tolist()
        outliers = [
            _NO_OUTLIER_SCORE if unscored[index] else _OUTLIER_SCORE + packed[8 * index : 8 * index + 8]
            for index in range(len(unscored))
        ]
    replaced = batch.replaced
    encoded = []
    for index, (message, start, count) in enumerate(zip(batch.messages, batch.starts, batch.counts)):
        if index in replaced:
            encoded.append(encode(replaced[index].result))
            continue
        record = message.record
        scores = _long(count) + doubles[8 * start : 8 * (start + count)] + b"\x00" if count else b"\x00"
        encoded.append(
            b"".join(
                (
                    header,
                    _long(record.user),
                    _long_array(record.products),
                    string(record.datatype),
                    _id_string_array(record.products),
                    scores,
                    metadata,
                    outliers[index],
                )
            )
        )
    return encoded
