"""No message can crash-loop the flow: poison messages on the topics of a running main job, kill -9,
restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from confluent_kafka import Producer
from support.core_runs import sample_records
from support.jobs import audit_report, encoded, finished_output, start_flow, wait_for, wait_for_model_snapshot

from flows.adapters.kafka.headers import (
    ORIGINAL_SIZE_HEADER,
    REPLACED_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
)
from flows.core.records import RecommenderRecord
from flows.testing.local_broker import consume_all, create_topics
from flows.wire.avro import MODEL, RECORD, RESULT

FLOW_PRODUCER_LIMIT = 100_000  # the flow's producer message.max.bytes in this test, so results can exceed it


def produce_big(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def test_poison_messages_neither_stop_the_flow_nor_lose_an_offset(kafka_bootstrap, model_v1, tmp_path):
    topics = create_topics(kafka_bootstrap, "poison", ["data", "models", "results", "dead"], partitions=2)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    flags = ["-r", str(recovery), "-s", "1", "-b", "0"]
    settings = {
        "SERVING_KAFKA_TAIL": "true",
        "SERVING_KAFKA_PRODUCER_CONFIG": json.dumps({"message.max.bytes": str(FLOW_PRODUCER_LIMIT)}),
    }
    produce_big(kafka_bootstrap, topics["models"], [(b"m", MODEL.encode(model_v1))])
    before, after, later = (
        sample_records(300),
        sample_records(300, offset=300),
        sample_records(300, offset=600),
    )
    too_many = RecommenderRecord(7, [i % 300 for i in range(75_000)])  # over SERVING_MAX_PRODUCTS
    too_large_result = RecommenderRecord(
        8, [i % 300 for i in range(9_000)]
    )  # fits the limit, not the producer
    after_long_name = RecommenderRecord(9, [i % 300 for i in range(1_000)])
    garbage = b"\xc3\x01" + b"\x00" * 999_898

    job = start_flow(kafka_bootstrap, topics, *flags, **settings)
    try:
        produce_big(kafka_bootstrap, topics["data"], encoded(before))
        produce_big(kafka_bootstrap, topics["data"], [(b"7", RECORD.encode(too_many)), (b"g", garbage)])
        produce_big(kafka_bootstrap, topics["data"], [(b"8", RECORD.encode(too_large_result))])
        long_name = MODEL.encode(model_v1.__class__("n" * 990_000, "", model_v1.model_type, b"x"))
        produce_big(kafka_bootstrap, topics["models"], [(b"m", long_name)])
        produce_big(kafka_bootstrap, topics["data"], encoded([after_long_name, *after]))
        wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every offset answered", 120)
        assert job.poll() is None, "the flow died on a poison message"
        wait_for_model_snapshot(recovery / "part-0.sqlite3")
        job.send_signal(signal.SIGKILL)
        first_output, _ = job.communicate(timeout=30)

        job = start_flow(kafka_bootstrap, topics, *flags, **settings)
        produce_big(kafka_bootstrap, topics["data"], encoded(later))
        wait_for(
            lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every offset answered again", 120
        )
        time.sleep(2)
        assert job.poll() is None, "the restarted flow died"
    finally:
        job.send_signal(signal.SIGTERM)
        second_output = finished_output(job)

    report = audit_report(kafka_bootstrap, topics)
    print(f"audit after the faults: {report}")  # the figures the README's fault table quotes
    total = len(before) + len(after) + len(later) + 4
    assert report["data_offsets"] == total and report["lost"] == 0, report
    assert report["duplicates"] <= len(before) + len(after) + 4, report  # at most what the snapshot covered

    results = {}
    for message in consume_all(kafka_bootstrap, topics["results"], total - 1):
        headers = dict(message.headers())
        results[(int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER]))] = (
            RESULT.decode(message.value()),
            headers,
        )
    by_user_products = {
        (r.input_record.user, len(r.input_record.products)): (r, h) for r, h in results.values()
    }
    for record in [*before, *after, *later]:
        result, _ = by_user_products[(record.user, len(record.products))]
        assert result.metadata.errors == "" and result.metadata.model_name == model_v1.model_name
    errors = [r.metadata.errors for r, _ in results.values() if r.metadata.errors]
    assert any("75,000 products, over the limit of 10,000 (SERVING_MAX_PRODUCTS)" in e for e in errors), (
        errors
    )
    replaced = [(r, h) for r, h in results.values() if REPLACED_HEADER in h]
    assert replaced and all(r.input_record.products == [] for r, _ in replaced)
    assert any("9,000 products and their scores are withheld" in r.metadata.errors for r, _ in replaced)
    scored_after_name = [
        r for r, _ in results.values() if r.input_record.user == 9 and len(r.input_record.products) == 1_000
    ]
    assert scored_after_name and not scored_after_name[0].metadata.errors

    dead = consume_all(kafka_bootstrap, topics["dead"], 1)
    garbage_letters = [m for m in dead if dict(m.headers()).get(ORIGINAL_SIZE_HEADER) == b"999900"]
    assert garbage_letters and len(garbage_letters[0].value()) == 1024
    assert "model name is 990,000 characters" in first_output
    assert max(len(line) for line in (first_output + second_output).splitlines()) < 2_000
