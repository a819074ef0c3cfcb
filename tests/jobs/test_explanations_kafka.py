"""Explanations through a broker: a data message with the `serving-explain` header gets an `Explanation` on
the explanations topic, keyed by user, with the source headers of the result it explains; its parts add up
to the score the result carries; a refused record asking for one gets the record's error; records that do
not ask get none (sampling off)."""

from __future__ import annotations

from confluent_kafka import Producer
from support.jobs import finished_output, wait_for
from support.topics import results_by_offset, start_tailing_flow

from flows.adapters.kafka.headers import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, consumed_headers
from flows.adapters.sources.generators import generated_records, shipped_model
from flows.core.explanations import EXPLAIN_HEADER
from flows.core.records import RecommenderRecord
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import consume_all
from flows.wire.avro import EXPLANATION, RECORD

ONNX_V1 = "recommender-v1-onnx"
RECORDS = 400
ASKING = range(0, RECORDS, 25)  # 16 records ask
REFUSED = 100  # asks, with a user past the model's 1,000


def test_a_record_that_asks_is_explained_on_the_explanations_topic_joined_by_its_offset(kafka_bootstrap):
    flow = start_tailing_flow(
        kafka_bootstrap,
        "explained",
        shipped_model(SHIPPED_MODELS_DIR, "1-onnx"),
        SERVING_EXPLAIN_FRACTION="0",
    )
    topics = flow.topics
    try:
        wait_for(lambda: ("accepted", ONNX_V1) in flow.events(), "v1-onnx accepted", timeout=120)
        records = list(generated_records(61, RECORDS))
        records[REFUSED] = RecommenderRecord(5_000, [1, 2, 3])
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for index, record in enumerate(records):
            headers = [(EXPLAIN_HEADER, b"1")] if index in ASKING else None
            producer.produce(
                topics["data"], RECORD.encode(record), str(record.user).encode(), headers=headers
            )
        producer.flush(30)
        results = results_by_offset(kafka_bootstrap, topics["results"], RECORDS)
        messages = consume_all(kafka_bootstrap, topics["explanations"], len(ASKING), timeout=60)
    finally:
        flow.process.terminate()
        finished_output(flow.process)
    assert sorted(results) == list(range(RECORDS))
    explained = {}
    for message in messages:
        headers = consumed_headers(message)
        assert headers[SOURCE_PARTITION_HEADER] == b"0"
        explanation = EXPLANATION.decode(message.value())
        assert message.key() == str(explanation.user).encode()
        explained[int(headers[SOURCE_OFFSET_HEADER])] = explanation
    assert sorted(explained) == list(ASKING)  # each asking record once, and no other
    for offset, explanation in explained.items():
        [result] = results[offset]
        assert explanation.requested and explanation.user == records[offset].user
        if offset == REFUSED:
            assert result.metadata.errors and result.metadata.errors in explanation.errors
            continue
        assert explanation.errors == "" and explanation.model_name == ONNX_V1 and explanation.background == 32
        scores = dict(zip(map(int, result.model_result.products), result.model_result.probabilities))
        for part in explanation.products:
            assert (
                abs(explanation.baseline + part.user_part + part.product_part - scores[part.product]) <= 1e-5
            )
            assert len(part.similar_products) == 3
        assert len(explanation.similar_users) == 3
