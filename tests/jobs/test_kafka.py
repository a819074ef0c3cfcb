"""The main job against a real Kafka-protocol broker: Avro in, results and dead letters out."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import urllib3
from support.core_runs import assert_same_scores, sample_records
from support.decoded import decoded
from support.jobs import (
    finished_output,
    run_flow_to_end_of_topics,
    start_flow,
    wait_for,
    wait_for_model_snapshot,
)

from flows.adapters.kafka.headers import (
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    TOPIC_HEADER,
    consumed_headers,
)
from flows.adapters.scorers import build_scorer
from flows.core.events import ModelToServeStats
from flows.testing.local_broker import consume_all, create_topics, produce
from flows.testing.loopback import free_port, free_ports
from flows.tools.query_state import fetch
from flows.wire.avro import MODEL, RECORD, RESULT, STATS


def test_records_are_scored_and_bad_messages_become_dead_letters(kafka_bootstrap, model_v1):
    topics = create_topics(kafka_bootstrap, "e2e", ["data", "models", "results", "dead"])
    records = sample_records(500)
    garbage = b"\x00not avro at all"
    wrong_schema = STATS.encode(ModelToServeStats("not-a-record"))
    truncated = RECORD.encode(records[0])[:-3]
    bad = [garbage, wrong_schema, truncated]
    bad_model = b"\xc3\x01 not a model descriptor"
    produce(
        kafka_bootstrap, topics["models"], [(b"broken", bad_model), (b"recommender", MODEL.encode(model_v1))]
    )
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
    sources = sorted(int(dict(message.headers())[SOURCE_OFFSET_HEADER]) for message in results)
    assert sources == [offset for offset in range(len(records) + len(bad)) if offset not in (250, 251, 252)]

    dead = consume_all(kafka_bootstrap, topics["dead"], len(bad) + 1)
    dead_models = [m for m in dead if dict(m.headers())[TOPIC_HEADER] == topics["models"].encode()]
    dead_data = [m for m in dead if dict(m.headers())[TOPIC_HEADER] == topics["data"].encode()]
    assert [message.value() for message in dead_models] == [bad_model]
    assert "** model (undecodable, no name) rejected: undecodable ModelDescriptor message" in output
    assert [message.value() for message in dead_data] == bad
    reasons = []
    for message, offset in zip(dead_data, (250, 251, 252)):
        headers = {name: value.decode() for name, value in message.headers()}
        assert headers[TOPIC_HEADER] == topics["data"]
        assert headers[PARTITION_HEADER] == "0" and headers[OFFSET_HEADER] == str(offset)
        reasons.append(headers[REASON_HEADER])
    assert "no C3 01 marker" in reasons[0]
    assert "written with schema fingerprint" in reasons[1]
    assert "corrupt RecommenderRecord datum" in reasons[2]


def result_inputs(bootstrap: str, topic: str, at_least: int) -> Counter:
    messages = consume_all(bootstrap, topic, at_least)
    return Counter(
        (result.input_record.user, tuple(result.input_record.products))
        for result in (decoded(RESULT, message.value()) for message in messages)
    )


def test_sigkill_then_restart_loses_no_record_and_does_not_reread_the_model(
    kafka_bootstrap, model_v1, tmp_path
):
    topics = create_topics(kafka_bootstrap, "crash", ["data", "models", "results", "dead"], partitions=2)
    records = sample_records(6000)
    encoded = [(str(r.user).encode(), RECORD.encode(r)) for r in records]
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    flags = ["-r", str(recovery), "-s", "1", "-b", "0"]

    first = start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="true")
    produce(kafka_bootstrap, topics["data"], encoded[:3000])
    assert len(consume_all(kafka_bootstrap, topics["results"], 1000, timeout=60)) >= 1000
    wait_for_model_snapshot(recovery / "part-0.sqlite3")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    produce(kafka_bootstrap, topics["data"], encoded[3000:])
    second_output = finished_output(start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="false"))
    assert "resent: restored from recovery" in second_output
    assert "accepted" not in second_output  # the model came from recovery, not from the model topic

    seen = result_inputs(kafka_bootstrap, topics["results"], len(records))
    expected = Counter((r.user, tuple(r.products)) for r in records)
    assert not expected - seen, "records without a result"
    duplicates = sum(seen.values()) - len(records)
    print(f"kill -9 and restart: {len(records)} records, 0 lost, {duplicates} duplicates")
    assert duplicates <= 3000, f"{duplicates} duplicates: more than the records of one snapshot interval"


def test_two_processes_consume_every_partition_and_match_one_worker(kafka_bootstrap, model_v1):
    records = sample_records(2000)
    encoded = [(str(r.user).encode(), RECORD.encode(r)) for r in records]
    runs = {}
    for layout, args in {"one-worker": [], "two-processes": None}.items():
        topics = create_topics(kafka_bootstrap, layout, ["data", "models", "results", "dead"], partitions=4)
        produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
        produce(kafka_bootstrap, topics["data"], encoded)
        if args is not None:
            finished_output(start_flow(kafka_bootstrap, topics, SERVING_KAFKA_TAIL="false"))
        else:
            addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(2))
            jobs = [
                start_flow(
                    kafka_bootstrap, topics, "-i", str(index), "-a", addresses, SERVING_KAFKA_TAIL="false"
                )
                for index in range(2)
            ]
            for job in jobs:
                finished_output(job)
        messages = consume_all(kafka_bootstrap, topics["results"], len(records))
        runs[layout] = sorted(
            (
                r.input_record.user,
                tuple(r.input_record.products),
                tuple(r.model_result.probabilities),
            )
            for r in (RESULT.decode(message.value()) for message in messages)
        )
    assert len(runs["one-worker"]) == len(records)
    assert_same_scores(runs["two-processes"], runs["one-worker"])


def models_served(state_port: int) -> set[str]:
    """The models the flow's shards serve, per its /state; none while it is not answering yet."""
    try:
        document = fetch(f"http://127.0.0.1:{state_port}/state", timeout_s=2)
    except urllib3.exceptions.HTTPError:
        return set()
    return set(document["shards"].values())


def test_a_model_switch_over_kafka_reaches_every_worker(kafka_bootstrap, model_v1, model_v2):
    topics = create_topics(kafka_bootstrap, "switch", ["data", "models", "results", "dead"], partitions=4)
    before, after = sample_records(400), sample_records(400, offset=400)
    state_port = free_port()
    flow = start_flow(
        kafka_bootstrap, topics, "-w", "2", SERVING_KAFKA_TAIL="true", SERVING_STATE_PORT=str(state_port)
    )
    try:
        produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
        produce(kafka_bootstrap, topics["data"], [(str(r.user).encode(), RECORD.encode(r)) for r in before])
        assert len(consume_all(kafka_bootstrap, topics["results"], len(before))) == len(before)
        produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v2))])
        # The data and model topics are read independently: send the next records once every shard has v2.
        wait_for(lambda: models_served(state_port) == {model_v2.model_name}, "v2 on every shard")
        produce(kafka_bootstrap, topics["data"], [(str(r.user).encode(), RECORD.encode(r)) for r in after])
        results = consume_all(kafka_bootstrap, topics["results"], len(before) + len(after))
    finally:
        flow.send_signal(signal.SIGTERM)
        output = finished_output(flow)
    assert "model 'recommender-v2' accepted (replacing 'recommender-v1')" in output
    model_of = {}
    for message in results:
        result = RESULT.decode(message.value())
        assert result.metadata.errors == ""
        model_of[(result.input_record.user, tuple(result.input_record.products))] = result.metadata.model_name
    assert {model_of[(r.user, tuple(r.products))] for r in before} == {"recommender-v1"}
    assert {model_of[(r.user, tuple(r.products))] for r in after} == {"recommender-v2"}
    partitions = {int(dict(m.headers())[SOURCE_PARTITION_HEADER]) for m in results}
    assert partitions == {0, 1, 2, 3}  # every partition was consumed


def scored_results(bootstrap: str, topic: str, expected: int) -> list[tuple]:
    """(partition, offset, user, products, scores) of every result on `topic`."""
    rows = []
    for message in consume_all(bootstrap, topic, expected):
        headers, result = consumed_headers(message), decoded(RESULT, message.value())
        assert not result.metadata.errors, result.metadata.errors
        rows.append(
            (
                int(headers[SOURCE_PARTITION_HEADER]),
                int(headers[SOURCE_OFFSET_HEADER]),
                result.input_record.user,
                tuple(result.input_record.products),
                tuple(result.model_result.probabilities),
            )
        )
    return rows


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_results_do_not_depend_on_the_poll_size_or_the_partitions(kafka_bootstrap, model_v1, partitions):
    """Polls of 1 and of 500 messages give the same results, coordinates included; and with any number of
    partitions every record gets the score the model gives it alone."""
    records = sample_records(600)
    topics = create_topics(
        kafka_bootstrap, "polls", ["data", "models", "results", "results500", "dead"], partitions
    )
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    produce(kafka_bootstrap, topics["data"], [(str(r.user).encode(), RECORD.encode(r)) for r in records])
    run_flow_to_end_of_topics(kafka_bootstrap, topics, SERVING_KAFKA_POLL_SIZE="1")
    run_flow_to_end_of_topics(
        kafka_bootstrap, {**topics, "results": topics["results500"]}, SERVING_KAFKA_POLL_SIZE="500"
    )
    by_one = scored_results(kafka_bootstrap, topics["results"], len(records))
    by_500 = scored_results(kafka_bootstrap, topics["results500"], len(records))
    assert len(by_one) == len(by_500) == len(records)
    assert_same_scores(by_one, by_500)
    assert len({(partition, offset) for partition, offset, *_ in by_one}) == len(records)
    assert {partition for partition, *_ in by_one} == set(range(partitions))
    scorer = build_scorer(model_v1)
    for _, _, user, products, scores in by_500:
        alone = scorer.score(np.full(len(products), user, np.float32), np.asarray(products, np.float32))
        assert np.allclose(scores, alone, atol=1e-5)
