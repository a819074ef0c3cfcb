"""Schema round trips, and bytes that must decode to a DecodeFailure that says why."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import cast

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from flows.adapters.sources.generators import generated_records
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.events import ModelEvent, ModelToServeStats, SignedModelEvent
from flows.core.explanations import Explanation, ProductExplanation
from flows.core.records import (
    DataMessage,
    DecodeFailure,
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredBatch,
)
from flows.core.scoring import unscored
from flows.core.vocabulary import EventKind
from flows.wire import avro

RECORD = RecommenderRecord(17, [3, 299, 0])
RESULT = RecommenderResult(
    RECORD,
    RecommenderServingOutput(["3", "299", "0"], [0.5, 0.25, 0.125]),
    ModelResultMetadata("", "recommender-v1", "embedded:savedmodel", 1_700_000_000_000, 3),
)
EXPLANATION = Explanation(
    17,
    "recommender-v1-onnx",
    "embedded:onnx",
    True,
    baseline=0.53,
    background=32,
    products=[
        ProductExplanation(163, 0.75, 0.15, 0.07, [170, 158]),
        ProductExplanation(3, 0.5, -0.01, -0.02),
    ],
    similar_users=[412, 9],
    start_time=1_700_000_000_000,
    duration=0.4,
)
VALUES = [
    (avro.RECORD, RECORD),
    (avro.RESULT, RESULT),
    (avro.MODEL, ModelDescriptor("m", "inline", ModelType.TENSORFLOWSAVED, b"\x00\x01tar", None)),
    (
        avro.MODEL,
        ModelDescriptor("m", "remote", ModelType.TENSORFLOWSERVING, None, "http://host:8501/v1/models/m"),
    ),
    (avro.STATS, ModelToServeStats("m", "d", 1, 10, 12.5, 1, 4)),
    (avro.EVENT, ModelEvent(EventKind.DRIFT, "m", "PSI 0.3", "", "", 1.5, 2.5)),
    (
        avro.SIGNED_EVENT,
        SignedModelEvent(ModelEvent(EventKind.DRIFT, "m", "PSI 0.3"), "host/1", 1_700_000_000_000, b"s" * 64),
    ),
    (avro.EXPLANATION, EXPLANATION),
    (avro.EXPLANATION, Explanation(17, "m", errors="not explained: user 5000 is outside ...")),
]


@pytest.mark.parametrize("codec,value", VALUES, ids=lambda v: getattr(v, "name", type(v).__name__))
def test_round_trip(codec, value):
    assert codec.decode(codec.encode(value)) == value


def test_every_schema_file_is_loaded():
    assert set(avro.SCHEMAS) == {
        entry.name.removesuffix(".avsc")
        for entry in avro.SCHEMAS_DIR.iterdir()
        if entry.name.endswith(".avsc")
    }


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"", "shorter than an Avro single-object header"),
        (b"hello world, not avro", "no C3 01 marker"),
        (avro.RECORD.encode(RECORD)[:-2], "corrupt RecommenderRecord datum"),
        (avro.RECORD.encode(RECORD) + b"\x00", "unexpected bytes after"),
        (avro.STATS.encode(ModelToServeStats("m")), "written with schema fingerprint"),
    ],
    ids=["empty", "garbage", "truncated", "trailing", "wrong-schema"],
)
def test_bad_bytes_become_a_decode_failure(payload, reason):
    failure = avro.RECORD.decode(payload)
    assert isinstance(failure, DecodeFailure)
    assert failure.schema == "RecommenderRecord"
    assert reason in failure.reason
    assert failure.payload == payload


def test_unknown_enum_symbol_is_a_decode_failure():
    payload = bytearray(avro.MODEL.encode(ModelDescriptor("m", "", ModelType.H2O, b"", None)))
    # The enum index is the byte after "m" (len 1) and "" (len 0); 5 = H2O; 9 is out of range.
    index = payload.index(bytes([2]) + b"m" + bytes([0]) + bytes([10])) + 3
    payload[index] = 2 * 9
    failure = avro.MODEL.decode(bytes(payload))
    assert isinstance(failure, DecodeFailure)


def _earlier_model_schema() -> dict:
    earlier = avro.SCHEMAS_DIR / "history" / "ModelDescriptor-1.avsc"
    return cast(dict, parse_schema(json.loads(earlier.read_text(encoding="utf-8"))))  # a record schema


def test_descriptors_written_with_the_earlier_schema_still_decode():
    earlier = _earlier_model_schema()
    buffer = io.BytesIO()
    buffer.write(avro.SINGLE_OBJECT_MARKER + avro._fingerprint(earlier))
    datum = {"modelName": "m", "description": "", "modelType": "TENSORFLOWSERVING", "modelBytes": None,
             "modelSourceLocation": "grpc://h:8500/models/m"}  # fmt: skip
    schemaless_writer(buffer, earlier, datum)
    assert avro.MODEL.earlier_writers  # the history is loaded
    assert avro.MODEL.decode(buffer.getvalue()) == ModelDescriptor(
        "m", "", ModelType.TENSORFLOWSERVING, None, "grpc://h:8500/models/m"
    )


def test_descriptors_written_before_challengers_existed_decode_as_champions():
    before = parse_schema(
        json.loads((avro.SCHEMAS_DIR / "history" / "ModelDescriptor-3.avsc").read_text(encoding="utf-8"))
    )
    buffer = io.BytesIO()
    buffer.write(avro.SINGLE_OBJECT_MARKER + avro._fingerprint(before))
    datum = {"modelName": "m", "description": "d", "modelType": "TENSORFLOWSAVED", "modelBytes": b"tar",
             "modelSourceLocation": None, "signature": b"s" * 64}  # fmt: skip
    schemaless_writer(buffer, before, datum)
    decoded = avro.MODEL.decode(buffer.getvalue())
    assert decoded == ModelDescriptor("m", "d", ModelType.TENSORFLOWSAVED, b"tar", None, b"s" * 64)
    assert (decoded.role, decoded.mode, decoded.fraction, decoded.command) == ("champion", "", 1.0, "")


def test_events_written_before_events_were_signed_decode_as_unsigned():
    before = parse_schema(
        json.loads((avro.SCHEMAS_DIR / "history" / "ModelEvent-1.avsc").read_text(encoding="utf-8"))
    )
    buffer = io.BytesIO()
    buffer.write(avro.SINGLE_OBJECT_MARKER + avro._fingerprint(before))
    datum = {"kind": "drift", "modelName": "m", "reason": "r", "shard": "", "previousModel": "",
             "loadMs": 0.0, "arrivalMs": 0.0}  # fmt: skip
    schemaless_writer(buffer, before, datum)
    assert avro.EVENT.decode(buffer.getvalue()) == ModelEvent(EventKind.DRIFT, "m", "r")
    assert avro.SIGNED_EVENT.decode(buffer.getvalue()) == SignedModelEvent(
        ModelEvent(EventKind.DRIFT, "m", "r")
    )


def test_a_consumer_on_the_earlier_schema_reads_the_new_symbol_as_unknown():
    encoded = avro.MODEL.encode(
        ModelDescriptor("m", "", ModelType.OPENINFERENCE, None, "grpc://h:1/models/m")
    )
    buffer = io.BytesIO(encoded[avro.HEADER_SIZE :])
    assert schemaless_reader(buffer, avro.MODEL.schema, _earlier_model_schema())["modelType"] == "UNKNOWN"


def _fastavro_encoding(result: RecommenderResult) -> bytes:
    buffer = io.BytesIO()
    buffer.write(avro.RESULT.header)
    schemaless_writer(buffer, avro.RESULT.schema, avro.RESULT.to_avro(result))
    return buffer.getvalue()


# Around the 1- and 2-byte varint boundaries, and the ends of the Avro long range.
_EDGE_LONGS = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, 16383, 16384, 1 << 40, -(1 << 40)]
_EDGE_LONGS += [(1 << 63) - 1, -(1 << 63)]
_EDGE_RESULTS = [
    RESULT,
    RecommenderResult(
        RecommenderRecord(5, []), RecommenderServingOutput(), ModelResultMetadata("no model yet")
    ),
    RecommenderResult(
        RecommenderRecord(-3, _EDGE_LONGS, "dätatype ✓"),
        RecommenderServingOutput(["", "ü", "x" * 300], [float("inf"), -0.0, 5e-324]),
        ModelResultMetadata("error ✗ " * 40, "m" * 200, "", -(1 << 63), (1 << 63) - 1),
    ),
    *(
        replace(RESULT, metadata=replace(RESULT.metadata, outlier_score=score))
        for score in (0.0, 1.0, 3.75, 1e300, float("inf"))
    ),
    *(
        RecommenderResult(
            RecommenderRecord(value, [value]),
            RecommenderServingOutput([str(value)], [value / 7]),
            ModelResultMetadata(),
        )
        for value in _EDGE_LONGS
    ),
]


def test_results_are_encoded_by_hand_while_the_schema_is_the_one_written_for():
    # Fails when RecommenderResult or a record it uses changes: update flows.wire.result_encoder and its
    # fingerprint, or the results are encoded by fastavro again (correct, ~8 us per record slower).
    assert avro.RESULT.fast_path


@pytest.mark.parametrize("result", _EDGE_RESULTS)
def test_hand_written_result_encoding_is_fastavros(result):
    assert avro.RESULT.encode(result) == _fastavro_encoding(result)
    assert avro.RESULT.decode(avro.RESULT.encode(result)) == result


def test_hand_written_result_encoding_is_fastavros_for_generated_records():
    for index, record in enumerate(generated_records(7, 500)):
        products = record.products
        output = RecommenderServingOutput([str(p) for p in products], [1 / (index + p + 1) for p in products])
        metadata = ModelResultMetadata("", "recommender-v1", "embedded:savedmodel", 1_700_000_000_000, index)
        result = RecommenderResult(record, output, metadata)
        assert avro.RESULT.encode(result) == _fastavro_encoding(result)


def test_a_long_out_of_range_is_refused():
    result = RecommenderResult(
        RecommenderRecord(1 << 63, []), RecommenderServingOutput(), ModelResultMetadata()
    )
    with pytest.raises(ValueError, match="does not fit in an Avro long"):
        avro.RESULT.encode(result)


def _before_outlier_scores() -> dict:
    history = avro.SCHEMAS_DIR / "history" / "RecommenderResult-1.avsc"
    return cast(dict, parse_schema(json.loads(history.read_text(encoding="utf-8"))))


def _written_before_outlier_scores(header: bytes) -> bytes:
    buffer = io.BytesIO()
    buffer.write(header)
    datum = avro._result_to_avro(RESULT)
    del datum["modelResultMetadata"]["outlierScore"]
    schemaless_writer(buffer, _before_outlier_scores(), datum)
    return buffer.getvalue()


def test_results_written_with_the_earlier_unexpanded_fingerprint_still_decode():
    """Those were written before outlier scores too: with the schema of that time."""
    legacy = avro.SINGLE_OBJECT_MARKER + avro._unexpanded_fingerprint(avro.RESULT.schema)
    assert legacy != avro.RESULT.header
    assert avro.RESULT.decode(_written_before_outlier_scores(legacy)) == RESULT


def test_results_written_before_outlier_scores_decode_without_one():
    earlier = avro.SINGLE_OBJECT_MARKER + avro._fingerprint(_before_outlier_scores())
    decoded = avro.RESULT.decode(_written_before_outlier_scores(earlier))
    assert decoded == RESULT and decoded.metadata.outlier_score is None


def test_an_outlier_score_travels_in_the_result_and_old_readers_skip_it():
    scored = replace(RESULT, metadata=replace(RESULT.metadata, outlier_score=1.25))
    payload = avro.RESULT.encode(scored)
    assert avro.RESULT.decode(payload) == scored
    buffer = io.BytesIO(payload)
    buffer.seek(avro.HEADER_SIZE)  # a reader that knows only the earlier schema, by Avro schema resolution
    old = schemaless_reader(buffer, avro.RESULT.schema, _before_outlier_scores())
    assert "outlierScore" not in old["modelResultMetadata"] and buffer.tell() == len(payload)


def _scored_batch(records: list[RecommenderRecord], replaced_at: set[int]) -> ScoredBatch:
    messages = [DataMessage(record, index) for index, record in enumerate(records)]
    counts = [len(record.products) for record in records]
    scores = np.linspace(0, 1, sum(counts), dtype=np.float32)
    metadata = ModelResultMetadata("", "recommender-v1", "embedded:savedmodel", 1_700_000_000_000, 3)
    replaced = {index: unscored(messages[index], "withheld", "recommender-v1") for index in replaced_at}
    return ScoredBatch(messages, counts, scores, metadata, replaced)


@pytest.mark.parametrize("outliers", [False, True], ids=["no-outlier-scores", "outlier-scores"])
@pytest.mark.parametrize("replaced_at", [set(), {0}, {1, 4}])
def test_a_scored_batch_is_encoded_from_its_columns_as_each_result_alone(replaced_at, outliers):
    records = [*generated_records(7, 5)]
    records[2] = RecommenderRecord(-3, [], "dätatype ✓")  # no products: empty arrays, no scores
    records[3] = RecommenderRecord(1 << 40, _EDGE_LONGS)
    batch = _scored_batch(records, replaced_at)
    if outliers:
        batch.outlier_scores = np.array([0.5, 1.5, np.nan, 3.25, 1.0])  # NaN: not scored
        batch.outlier_scores[list(replaced_at)] = np.nan  # an error is not scored
    one_by_one = [avro.RESULT.encode(item.result) for item in batch]
    assert avro.encode_results(batch) == one_by_one
    assert [avro.RESULT.decode(value) for value in one_by_one] == [item.result for item in batch]
    assert [bool(item.result.metadata.errors) for item in batch] == [i in replaced_at for i in range(5)]
    expected = [0.5, 1.5, None, 3.25, 1.0] if outliers else [None] * 5
    for index in replaced_at:
        expected[index] = None
    assert [avro.RESULT.decode(value).metadata.outlier_score for value in one_by_one] == expected


def test_a_scored_batch_reads_like_the_list_of_its_results():
    batch = _scored_batch([*generated_records(7, 6)], {2})
    results = list(batch)
    assert len(batch) == 6 and batch == results and results == batch
    assert [batch[index] for index in range(-6, 6)] == results + results
    assert batch[1:5:2] == results[1:5:2]
    with pytest.raises(IndexError):
        batch[6]
    first = batch.counts[0]
    assert results[0].result.model_result.probabilities == batch.scores[:first].tolist()
    assert results[1].result.model_result.products == [str(p) for p in batch.messages[1].record.products]
    assert batch.errors() == ["withheld"]
    batch.trace_context = "00-abc-def-01"
    assert {item.trace_context for item in batch} == {"00-abc-def-01"}


def test_descriptors_written_before_freshness_existed_decode_unsequenced():
    before = parse_schema(
        json.loads((avro.SCHEMAS_DIR / "history" / "ModelDescriptor-4.avsc").read_text(encoding="utf-8"))
    )
    buffer = io.BytesIO()
    buffer.write(avro.SINGLE_OBJECT_MARKER + avro._fingerprint(before))
    datum = {"modelName": "m", "description": "", "modelType": "UNKNOWN", "modelBytes": None,
             "modelSourceLocation": None, "signature": b"s" * 64, "role": "champion", "mode": "",
             "fraction": 1.0, "command": "retire"}  # fmt: skip
    schemaless_writer(buffer, before, datum)
    decoded = avro.MODEL.decode(buffer.getvalue())
    assert decoded.command == "retire" and decoded.signature == b"s" * 64
    assert (decoded.sequence, decoded.expires_at, decoded.target_digest) == (0, 0, "")


def test_freshness_fields_round_trip():
    descriptor = ModelDescriptor("m", "", ModelType.UNKNOWN, command="promote",
                                 sequence=1_764_000_000_000_001, expires_at=1_764_000_000_000,
                                 target_digest="0123456789abcdef")  # fmt: skip
    assert avro.MODEL.decode(avro.MODEL.encode(descriptor)) == descriptor


def test_a_consumer_on_the_schema_before_onnx_reads_an_onnx_descriptor_as_unknown():
    before_onnx = parse_schema(
        json.loads((avro.SCHEMAS_DIR / "history" / "ModelDescriptor-5.avsc").read_text(encoding="utf-8"))
    )
    encoded = avro.MODEL.encode(ModelDescriptor("m", "", ModelType.ONNX, b"archive"))
    assert avro.MODEL.decode(encoded).model_type == ModelType.ONNX
    reader_view = schemaless_reader(io.BytesIO(encoded[avro.HEADER_SIZE :]), avro.MODEL.schema, before_onnx)
    assert reader_view["modelType"] == "UNKNOWN"
    buffer = io.BytesIO()  # and a descriptor its producers wrote still decodes here
    buffer.write(avro.SINGLE_OBJECT_MARKER + avro._fingerprint(before_onnx))
    schemaless_writer(buffer, before_onnx, {**reader_view, "modelType": "TENSORFLOWSAVED"})
    assert avro.MODEL.decode(buffer.getvalue()).model_type == ModelType.TENSORFLOWSAVED


def test_every_explanation_field_but_user_and_model_has_a_default_so_the_schema_can_evolve():
    """The rules of the other schemas: a field is added with a default, and history/ keeps what was written
    before; a reader on this schema reads a writer that has only the two required fields."""
    schema = json.loads((avro.SCHEMAS_DIR / "Explanation.avsc").read_text(encoding="utf-8"))
    assert [field["name"] for field in schema["fields"] if "default" not in field] == ["user", "modelName"]
    minimal = {**schema, "fields": schema["fields"][:2]}
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(minimal), {"user": 5, "modelName": "m"})
    buffer.seek(0)
    datum = schemaless_reader(buffer, parse_schema(minimal), avro.EXPLANATION.schema)
    assert datum["products"] == [] and datum["method"] == "shapley-two-player"


def test_an_explanation_with_a_forged_array_length_is_a_decode_failure():
    encoded = avro.EXPLANATION.encode(Explanation(17, "m"))
    # The first ten zero bytes are the baseline's eight (0.0), background 0 and the empty products array:
    # the array's 0x00 becomes a block that claims about 2**62 items.
    forged = encoded.replace(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"\x00" * 9 + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f", 1
    )
    assert forged != encoded
    failure = avro.EXPLANATION.decode(forged)
    assert isinstance(failure, DecodeFailure) and "corrupt Explanation datum" in failure.reason
