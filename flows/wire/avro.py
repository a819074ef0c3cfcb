"""Avro encoding of the project's records, with the schemas in `schemas/`.

Messages use Avro single-object encoding (a 2-byte marker, the schema's CRC-64-AVRO fingerprint, then
the binary datum), so a message written with another schema, or bytes that are not Avro at all, are
recognised as such instead of being misread. Decoding never raises: bytes that fail to decode become a
`DecodeFailure` that names the schema and the reason.

fastavro encodes and decodes, except RecommenderResult, written once per data record: it is encoded by
hand (`flows.wire.result_encoder`) while its schema is the one that encoder was written for.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Generic, TypeVar, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema, fingerprint, parse_schema, to_parsing_canonical_form

from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.events import ChallengerReport, ModelEvent, ModelToServeStats, SignedModelEvent
from flows.core.explanations import Explanation, ProductExplanation
from flows.core.records import (
    DecodeFailure,
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredBatch,
    ScoredMessage,
)
from flows.wire.result_encoder import WRITTEN_FOR, encode_scored_batch, write_result

# Package data (`flows.schemas`, the repository's top-level `schemas/`), read through importlib.resources so
# an installed wheel finds them too.
SCHEMAS_DIR: Traversable = resources.files("flows.schemas")
# Dependencies first: RecommenderResult refers to the three records before it.
SCHEMA_NAMES = (
    "RecommenderRecord",
    "RecommenderServingOutput",
    "ModelResultMetadata",
    "RecommenderResult",
    "ModelDescriptor",
    "ModelToServeStats",
    "ModelEvent",
    "ChallengerReport",
    "Explanation",
)
SINGLE_OBJECT_MARKER = b"\xc3\x01"
HEADER_SIZE = len(SINGLE_OBJECT_MARKER) + 8


def _parse_record(schema: dict, named: dict[str, Any]) -> dict:
    """fastavro's parse_schema of a record schema (every schema here is one), which is a dict again."""
    return cast(dict, parse_schema(schema, named_schemas=named))


def _load_schemas(directory: Traversable) -> dict[str, dict]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in SCHEMA_NAMES:
        schema = json.loads((directory / f"{name}.avsc").read_text(encoding="utf-8"))
        parsed[name] = _parse_record(schema, named)
    return parsed


SCHEMAS = _load_schemas(SCHEMAS_DIR)


def _load_history(directory: Traversable, name: str) -> list[dict]:
    """Earlier versions of schema `name` (schemas/history/NAME-N.avsc) that old messages were written with."""
    files = (entry for entry in (directory / "history").iterdir() if _is_version_of(entry.name, name))
    return [
        _parse_record(json.loads(entry.read_text(encoding="utf-8")), dict(SCHEMAS))
        for entry in sorted(files, key=lambda entry: entry.name)
    ]


def _is_version_of(file_name: str, name: str) -> bool:
    return file_name.startswith(f"{name}-") and file_name.endswith(".avsc")


def _expanded_fingerprint(schema: dict) -> str:
    """CRC-64-AVRO of the schema with every named type it uses written out, as other Avro libraries compute
    it.

    (Without the expansion, a schema that refers to records defined in other files would get a fingerprint
    that ignores them and that no other implementation computes.)
    """
    return fingerprint(to_parsing_canonical_form(expand_schema(schema)), "CRC-64-AVRO")


def _fingerprint(schema: dict) -> bytes:
    # Avro single-object encoding writes the 64-bit fingerprint little-endian.
    return struct.pack("<Q", int(_expanded_fingerprint(schema), 16))


def _unexpanded_fingerprint(schema: dict) -> bytes:
    """The fingerprint this project wrote before 2026-11-24, with nested records referred to by name only."""
    return struct.pack("<Q", int(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16))


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DatumWriter(Generic[T]):
    """A hand-written binary encoder, and the `_expanded_fingerprint` of the schema it encodes."""

    write: Callable[[T], bytes]
    schema_fingerprint: str


class AvroCodec(Generic[T]):
    """Encodes and decodes one record type with one of the project's schemas.

    `writer`, if given, encodes instead of fastavro while the schema is still the one it was written for
    (`fast_path` says whether it is in use); otherwise, or once the schema changes, fastavro encodes.
    """

    def __init__(
        self,
        name: str,
        to_avro: Callable[[T], dict],
        from_avro: Callable[[dict], T],
        writer: DatumWriter[T] | None = None,
    ) -> None:
        self.name = name
        self.schema = SCHEMAS[name]
        self.header = SINGLE_OBJECT_MARKER + _fingerprint(self.schema)
        # Messages written with an earlier version of the schema are read through Avro schema resolution.
        self.earlier_writers = {
            SINGLE_OBJECT_MARKER + _fingerprint(writer): writer for writer in _load_history(SCHEMAS_DIR, name)
        }
        unexpanded = SINGLE_OBJECT_MARKER + _unexpanded_fingerprint(self.schema)
        if unexpanded != self.header:  # RecommenderResults written before the fingerprint fix still decode,
            # with the schema of that time: the oldest in the history, or this one if it never changed.
            history = list(self.earlier_writers.values())
            self.earlier_writers[unexpanded] = history[0] if history else self.schema
        self.to_avro = to_avro
        self.from_avro = from_avro
        matches = writer is not None and writer.schema_fingerprint == _expanded_fingerprint(self.schema)
        self._write = writer.write if writer is not None and matches else None

    @property
    def fast_path(self) -> bool:
        """Whether a hand-written writer encodes (see DatumWriter), not fastavro."""
        return self._write is not None

    def encode(self, value: T) -> bytes:
        if self._write is not None:
            return self.header + self._write(value)
        buffer = io.BytesIO()
        buffer.write(self.header)
        schemaless_writer(buffer, self.schema, self.to_avro(value))
        return buffer.getvalue()

    def decode(self, payload: bytes | None) -> T | DecodeFailure:
        """The record in `payload`, or a DecodeFailure saying why there is none."""
        if payload is None or len(payload) < HEADER_SIZE:
            size = 0 if payload is None else len(payload)
            return DecodeFailure(
                self.name, f"{size} bytes is shorter than an Avro single-object header", payload
            )
        if payload[:2] != SINGLE_OBJECT_MARKER:
            return DecodeFailure(self.name, "not Avro single-object encoded (no C3 01 marker)", payload)
        writer: dict | None = self.schema
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
            value = self.from_avro(cast(dict, datum))  # a record schema reads as a dict
        except Exception as error:  # noqa: BLE001 (fastavro raises EOFError, ValueError, UnicodeDecodeError, ...)
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
            "outlierScore": metadata.outlier_score,
        },
    }


def encode_results(batch: Sequence[ScoredMessage]) -> list[bytes]:
    """Every result of `batch`, as `RESULT.encode` writes it: a ScoredBatch from its columns while the
    hand-written encoder is in use (flows.wire.result_encoder), each result alone otherwise."""
    if not isinstance(batch, ScoredBatch) or not RESULT.fast_path:
        return [RESULT.encode(item.result) for item in batch]
    return encode_scored_batch(batch, RESULT.header, RESULT.encode)


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
            metadata["outlierScore"],
        ),
    )


def _camel(name: str) -> str:
    """A snake_case field name as the schemas spell it: model_source_location -> modelSourceLocation."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _field_map(record_type: type) -> dict[str, str]:
    """Avro field name -> dataclass field name, for a flat record whose schema spells each field in
    camelCase."""
    return {_camel(field_.name): field_.name for field_ in fields(record_type)}


def _flat_to_avro(value: Any, field_map: dict[str, str]) -> dict:
    return {avro_name: getattr(value, name) for avro_name, name in field_map.items()}


def _flat_from_avro(record_type: type[T], datum: dict, field_map: dict[str, str]) -> T:
    return record_type(**{name: datum[avro_name] for avro_name, name in field_map.items()})


_DESCRIPTOR_FIELDS = _field_map(ModelDescriptor)
_STATS_FIELDS = _field_map(ModelToServeStats)
_EVENT_FIELDS = _field_map(ModelEvent)
_REPORT_FIELDS = _field_map(ChallengerReport)


def _descriptor_to_avro(descriptor: ModelDescriptor) -> dict:
    return {**_flat_to_avro(descriptor, _DESCRIPTOR_FIELDS), "modelType": descriptor.model_type.value}


def _descriptor_from_avro(datum: dict) -> ModelDescriptor:
    datum = {
        **datum,
        "modelType": ModelType(datum["modelType"]),
        "signature": _bytes_field(datum.get("signature") or b""),
    }
    return _flat_from_avro(ModelDescriptor, datum, _DESCRIPTOR_FIELDS)


def _bytes_field(value: bytes | str) -> bytes:
    """A bytes field; fastavro hands a field filled from its JSON default ("" for bytes) over as str."""
    return value.encode("latin-1") if isinstance(value, str) else value


def _stats_to_avro(stats: ModelToServeStats) -> dict:
    return _flat_to_avro(stats, _STATS_FIELDS)


def _stats_from_avro(datum: dict) -> ModelToServeStats:
    return _flat_from_avro(ModelToServeStats, datum, _STATS_FIELDS)


RECORD = AvroCodec("RecommenderRecord", _record_to_avro, _record_from_avro)
# Encoded by hand (flows.wire.result_encoder) while the schema is the one that encoder was written for.
_RESULT_WRITER = DatumWriter(write_result, schema_fingerprint=WRITTEN_FOR)
RESULT = AvroCodec("RecommenderResult", _result_to_avro, _result_from_avro, _RESULT_WRITER)
MODEL = AvroCodec("ModelDescriptor", _descriptor_to_avro, _descriptor_from_avro)
STATS = AvroCodec("ModelToServeStats", _stats_to_avro, _stats_from_avro)


def _event_to_avro(event: ModelEvent) -> dict:
    return _signed_event_to_avro(SignedModelEvent(event))


def _signed_event_to_avro(signed: SignedModelEvent) -> dict:
    return {
        **_flat_to_avro(signed.event, _EVENT_FIELDS),
        "signer": signed.signer,
        "issuedMs": signed.issued_ms,
        "signature": signed.signature,
    }


def _event_from_avro(datum: dict) -> ModelEvent:
    return _flat_from_avro(ModelEvent, datum, _EVENT_FIELDS)


def _signed_event_from_avro(datum: dict) -> SignedModelEvent:
    return SignedModelEvent(
        _event_from_avro(datum), datum["signer"], datum["issuedMs"], _bytes_field(datum["signature"])
    )


# The same schema read two ways: EVENT for what happened (unsigned when encoded), SIGNED_EVENT for the
# signed message on the events topic (`flows.core.event_signing`).
EVENT = AvroCodec("ModelEvent", _event_to_avro, _event_from_avro)
SIGNED_EVENT = AvroCodec("ModelEvent", _signed_event_to_avro, _signed_event_from_avro)


def _report_to_avro(report: ChallengerReport) -> dict:
    return _flat_to_avro(report, _REPORT_FIELDS)


def _report_from_avro(datum: dict) -> ChallengerReport:
    return _flat_from_avro(ChallengerReport, datum, _REPORT_FIELDS)


REPORT = AvroCodec("ChallengerReport", _report_to_avro, _report_from_avro)


_EXPLANATION_FIELDS = {name: field for name, field in _field_map(Explanation).items() if field != "products"}
_PRODUCT_FIELDS = _field_map(ProductExplanation)


def _explanation_to_avro(explanation: Explanation) -> dict:
    return {
        **_flat_to_avro(explanation, _EXPLANATION_FIELDS),
        "products": [_flat_to_avro(part, _PRODUCT_FIELDS) for part in explanation.products],
    }


def _explanation_from_avro(datum: dict) -> Explanation:
    explanation = _flat_from_avro(Explanation, datum, _EXPLANATION_FIELDS)
    explanation.products = [
        _flat_from_avro(ProductExplanation, part, _PRODUCT_FIELDS) for part in datum["products"]
    ]
    return explanation


EXPLANATION = AvroCodec("Explanation", _explanation_to_avro, _explanation_from_avro)
