"""The main job against a real Kafka-protocol broker: Avro in, results and dead letters out."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, sample_records
from flows.avro import MODEL, RECORD, RESULT, STATS
from flows.kafka import OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER, TOPIC_HEADER
from flows.records import ModelToServeStats
from kafka_broker import consume_all, create_topics, produce


def run_flow_to_end_of_topics(bootstrap: str, topics: dict[str, str], **settings: str) -> str:
    env = dict(os.environ)
    env.update(
        SERVING_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SERVING_KAFKA_DATA_TOPIC=topics["data"],
        SERVING_KAFKA_MODELS_TOPIC=topics["models"],
        SERVING_KAFKA_RESULTS_TOPIC=topics["results"],
        SERVING_KAFKA_DEAD_LETTERS_TOPIC=topics["dead"],
        SERVING_KAFKA_TAIL="false",
        SERVING_CONSOLE_EVERY="0",
    )
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.serving"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_records_are_scored_and_bad_messages_become_dead_letters(kafka_bootstrap, model_v1):
    topics = create_topics(kafka_bootstrap, "e2e", ["data", "models", "results", "dead"])
    records = sample_records(500)
    garbage = b"\x00not avro at all"
    wrong_schema = STATS.encode(ModelToServeStats("not-a-record"))
    truncated = RECORD.encode(records[0])[:-3]
    bad = [garbage, wrong_schema, truncated]
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    produce(
        kafka_bootstrap,
        topics["data"],
        [(str(r.user).encode(), RECORD.encode(r)) for r in records[:250]]
        + [(b"bad", value) for value in bad]
        + [(str(r.user).encode(), RECORD.encode(r)) for r in records[250:]],
    )

    output = run_flow_to_end_of_topics(kafka_bootstrap, topics)
    assert "model 'recommender-v1' accepted" in output

    results = consume_all(kafka_bootstrap, topics["results"], len(records))
    decoded = [RESULT.decode(message.value()) for message in results]
    assert len(decoded) == len(records)
    assert sorted((r.input_record.user, tuple(r.input_record.products)) for r in decoded) == sorted(
        (r.user, tuple(r.products)) for r in records
    )
    assert all(r.metadata.model_name == "recommender-v1" and not r.metadata.errors for r in decoded)
    assert all(message.key() == str(r.input_record.user).encode() for message, r in zip(results, decoded))

    dead = consume_all(kafka_bootstrap, topics["dead"], len(bad))
    assert [message.value() for message in dead] == bad
    reasons = []
    for message, offset in zip(dead, (250, 251, 252)):
        headers = {name: value.decode() for name, value in message.headers()}
        assert headers[TOPIC_HEADER] == topics["data"]
        assert headers[PARTITION_HEADER] == "0" and headers[OFFSET_HEADER] == str(offset)
        reasons.append(headers[REASON_HEADER])
    assert "no C3 01 marker" in reasons[0]
    assert "written with schema fingerprint" in reasons[1]
    assert "corrupt RecommenderRecord datum" in reasons[2]
