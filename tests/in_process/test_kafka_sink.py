"""The Kafka sink against a real broker: messages refused for themselves are replaced, a broker that is away
is waited for, and nothing is lost either way."""

from __future__ import annotations

import threading
import time

from confluent_kafka.admin import AdminClient, NewTopic

from flows.adapters.kafka.headers import ORIGINAL_SIZE_HEADER, REPLACED_HEADER
from flows.adapters.kafka.outputs import smaller_dead_letter, smaller_result
from flows.adapters.kafka.sink import ResilientKafkaSink, SinkMessage
from flows.core.records import (
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
)
from flows.testing.local_broker import consume_all, create_topics, kafka_broker
from flows.testing.loopback import free_port
from flows.wire.avro import RESULT


def big_result(products: int) -> SinkMessage:
    record = RecommenderRecord(5, list(range(products)))
    output = RecommenderServingOutput([str(p) for p in range(products)], [0.5] * products)
    result = RecommenderResult(record, output, ModelResultMetadata("", "m", "embedded:savedmodel", 1, 2))
    return SinkMessage(b"5", RESULT.encode(result), headers=[("source.offset", b"42")])


def test_a_result_over_the_producer_limit_goes_out_in_its_smaller_form(kafka_bootstrap):
    topic = create_topics(kafka_bootstrap, "sink", ["results"])["results"]
    sink = ResilientKafkaSink([kafka_bootstrap], topic, {"message.max.bytes": "50000"}, smaller_result)
    sink = sink.build("s", 0, 1)
    sink.write_batch([[big_result(10_000)], [big_result(3)]])
    messages = consume_all(kafka_bootstrap, topic, 2)
    assert len(messages) == 2 and sink.replaced == 1
    replaced = [m for m in messages if REPLACED_HEADER in dict(m.headers())]
    result = RESULT.decode(replaced[0].value())
    assert result.input_record.user == 5 and result.input_record.products == []
    assert "over the producer's message.max.bytes of 50,000" in result.metadata.errors
    assert "10,000 products and their scores are withheld" in result.metadata.errors
    assert dict(replaced[0].headers())["source.offset"] == b"42"  # still says which record it answers


def test_a_dead_letter_the_topic_refuses_goes_out_cut_to_a_kibibyte(kafka_bootstrap):
    topic = f"small-dead-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "5000"})]).values():
        future.result(30)
    sink = ResilientKafkaSink([kafka_bootstrap], topic, {}, smaller_dead_letter).build("s", 0, 1)
    letter = SinkMessage(
        b"k", b"v" * 20_000, headers=[("dead-letter.reason", b"why"), ("theirs", b"x" * 3000)]
    )
    sink.write_batch([[letter]])
    (message,) = consume_all(kafka_bootstrap, topic, 1)
    headers = dict(message.headers())
    assert len(message.value()) == 1024 and headers[ORIGINAL_SIZE_HEADER] == b"20000"
    assert b"MSG_SIZE_TOO_LARGE" in headers[REPLACED_HEADER] and "theirs" not in headers


def test_a_broker_that_goes_away_is_waited_for_and_nothing_is_lost(tmp_path):
    port, data = free_port(), str(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    with kafka_broker(port, data) as bootstrap:
        topic = create_topics(bootstrap, "away", ["results"])["results"]
        # Short delivery timeouts, so the retry path (not only librdkafka's own) is taken while it is away.
        config = {"message.timeout.ms": "3000", "reconnect.backoff.max.ms": "500"}
        sink = ResilientKafkaSink([bootstrap], topic, config, smaller_result).build("s", 0, 1)
        sink.write_batch([[big_result(3)]])
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (sink.write_batch([[big_result(4)]]), done.set()),
        daemon=True,
    )
    writer.start()  # the broker is down now
    time.sleep(8)
    assert not done.is_set(), "the sink gave up on a message while the broker was away"
    with kafka_broker(port, data) as bootstrap:
        assert done.wait(60), "the sink did not deliver once the broker was back"
        messages = consume_all(bootstrap, topic, 2)
    products = sorted(len(RESULT.decode(m.value()).input_record.products) for m in messages)
    assert products[:2] == [3, 4] and sink.replaced == 0


def test_a_message_without_headers_is_produced(kafka_bootstrap):
    topic = create_topics(kafka_bootstrap, "bare", ["out"])["out"]
    sink = ResilientKafkaSink([kafka_bootstrap], topic, {}, smaller_dead_letter).build("s", 0, 1)
    sink.write_batch([[SinkMessage(b"k", b"v")]])
    (message,) = consume_all(kafka_bootstrap, topic, 1)
    assert (message.key(), message.value(), message.headers()) == (b"k", b"v", None)
