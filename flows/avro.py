"""Avro encoding of the project's records, with the schemas in `schemas/`.

Messages use Avro single-object encoding (a 2-byte marker, the schema's CRC-64-AVRO fingerprint, then
the binary datum), so a message written with another schema, or bytes that are not Avro at all, are
recognised as such instead of being misread. Decoding never raises: bytes that fail to decode become a
`DecodeFailure` that names the schema and the reason.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from flows.records import (
    ModelDescriptor,
    ModelResultMetadata,
    ModelToServeStats,
    ModelType,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
)

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
# Dependencies first: RecommenderResult refers to the three records before it.
SCHEMA_NAMES = (
    "RecommenderRecord",
    "RecommenderServingOutput",
    "ModelResultMetadata",
    "RecommenderResult",
    "ModelDescriptor",
    "ModelToServeStats",
)
SINGLE_OBJECT_MARKER = b"\xc3\x01"
HEADER_SIZE = len(SINGLE_OBJECT_MARKER) + 8


def _load_schemas(directory: Path) -> dict[str, dict]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in SCHEMA_NAMES:
        with open(directory / f"{name}.avsc", encoding="utf-8") as schema_file:
            parsed[name] = parse_schema(json.load(schema_file), named_schemas=named)
    return parsed


SCHEMAS = _load_schemas(SCHEMAS_DIR)


def _load_history(directory: Path, name: str) -> list[dict]:
    """Earlier versions of schema `name` (schemas/history/NAME-N.avsc) that old messages were written with."""
    history = []
    for path in sorted((directory / "history").glob(f"{name}-*.avsc")):
        with open(path, encoding="utf-8") as schema_file:
            history.append(parse_schema(json.load(schema_file), named_schemas=dict(SCHEMAS)))
    return history


def _fingerprint(schema: dict) -> bytes:
    # Avro single-object encoding writes the 64-bit fingerprint little-endian.
    value = int(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", value)


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Bytes that could not be decoded as `schema`, and why."""

    schema: str
    reason: str
    payload: bytes


T = TypeVar("T")


class AvroCodec(Generic[T]):
    """Encodes and decodes one record type with one of the project's schemas."""

    def __init__(self, name: str, to_avro: Callable[[T], dict], from_avro: Callable[[dict], T]) -> None:
        self.name = name
        self.schema = SCHEMAS[name]
        self.header = SINGLE_OBJECT_MARKER + _fingerprint(self.schema)
        # Messages written with an earlier version of the schema are read through Avro schema resolution.
        self.earlier_writers = {
            SINGLE_OBJECT_MARKER + _fingerprint(writer): writer for writer in _load_history(SCHEMAS_DIR, name)
        }
        self.to_avro = to_avro
        self.from_avro = from_avro

    def encode(self, value: T) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self.header)
        schemaless_writer(buffer, self.schema, self.to_avro(value))
        return buffer.getvalue()

    def decode(self, payload: bytes) -> T | DecodeFailure:
        """The record in `payload`, or a DecodeFailure saying why there is none."""
        if payload is None or len(payload) < HEADER_SIZE:
            size = 0 if payload is None else len(payload)
            return DecodeFailure(
                self.name, f"{size} bytes is shorter than an Avro single-object header", payload
            )
        if payload[:2] != SINGLE_OBJECT_MARKER:
            return DecodeFailure(self.name, "not Avro single-object encoded (no C3 01 marker)", payload)
        writer = self.schema
        if payload[:HEADER_SIZE] != self.header:
            writer = self.earlier_writers.get(payload[:HEADER_SIZE])
        if writer is None:
            found = payload[2:HEADER_SIZE][::-1].hex()
            expected = self.header[2:][::-1].hex()
            return DecodeFailure(
                self.name,
                f"written with schema fingerprint {found}, expected {self.name} {expected}",
                payload,
            )
        buffer = io.BytesIO(payload)
        buffer.seek(HEADER_SIZE)
        try:
            datum = schemaless_reader(buffer, writer, self.schema if writer is not self.schema else None)
            value = self.from_avro(datum)
        except Exception as error:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            return DecodeFailure(
                self.name, f"corrupt {self.name} datum: {type(error).__name__}: {error}", payload
            )
        if buffer.tell() != len(payload):
            trailing = len(payload) - buffer.tell()
            return DecodeFailure(
                self.name, f"{trailing} unexpected bytes after the {self.name} datum", payload
            )
        return value


def _record_to_avro(record: RecommenderRecord) -> dict:
    return {"user": record.user, "products": record.products, "datatype": record.datatype}


def _record_from_avro(datum: dict) -> RecommenderRecord:
    return RecommenderRecord(datum["user"], datum["products"], datum["datatype"])


def _result_to_avro(result: RecommenderResult) -> dict:
    metadata = result.metadata
    return {
        "inputRecord": _record_to_avro(result.input_record),
        "modelResult": {
            "products": result.model_result.products,
            "probabilities": result.model_result.probabilities,
        },
        "modelResultMetadata": {
            "errors": metadata.errors,
            "modelName": metadata.model_name,
            "source": metadata.source,
            "startTime": metadata.start_time,
            "duration": metadata.duration,
        },
    }


def _result_from_avro(datum: dict) -> RecommenderResult:
    output = datum["modelResult"]
    metadata = datum["modelResultMetadata"]
    return RecommenderResult(
        _record_from_avro(datum["inputRecord"]),
        RecommenderServingOutput(output["products"], output["probabilities"]),
        ModelResultMetadata(
            metadata["errors"],
            metadata["modelName"],
            metadata["source"],
            metadata["startTime"],
            metadata["duration"],
        ),
    )


def _descriptor_to_avro(descriptor: ModelDescriptor) -> dict:
    return {
        "modelName": descriptor.model_name,
        "description": descriptor.description,
        "modelType": descriptor.model_type.value,
        "modelBytes": descriptor.model_bytes,
        "modelSourceLocation": descriptor.model_source_location,
    }


def _descriptor_from_avro(datum: dict) -> ModelDescriptor:
    return ModelDescriptor(
        datum["modelName"],
        datum["description"],
        ModelType(datum["modelType"]),
        datum["modelBytes"],
        datum["modelSourceLocation"],
    )


def _stats_to_avro(stats: ModelToServeStats) -> dict:
    return {
        "name": stats.name,
        "description": stats.description,
        "since": stats.since,
        "usage": stats.usage,
        "duration": stats.duration,
        "min": stats.min,
        "max": stats.max,
    }


def _stats_from_avro(datum: dict) -> ModelToServeStats:
    return ModelToServeStats(**datum)


RECORD = AvroCodec("RecommenderRecord", _record_to_avro, _record_from_avro)
RESULT = AvroCodec("RecommenderResult", _result_to_avro, _result_from_avro)
MODEL = AvroCodec("ModelDescriptor", _descriptor_to_avro, _descriptor_from_avro)
STATS = AvroCodec("ModelToServeStats", _stats_to_avro, _stats_from_avro)
