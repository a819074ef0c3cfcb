"""A challenger experiment driven through a broker with `serving-publish-model`: a canary on half of the
users, promoted; then a shadow, retired. Results, shadow results, model events and challenger reports on
their topics."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
from support.decoded import decoded
from support.jobs import (
    encoded,
    finished_output,
    start_flow,
    wait_for,
    wait_for_fitted_outlier_snapshot,
    wait_for_model_snapshot,
)
from support.topics import publish, results_by_offset, start_tailing_flow

from flows.adapters.sources.generators import generated_records, shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.challenger import user_buckets
from flows.core.descriptors import CANARY, CHALLENGER
from flows.core.scorer import build_scorer
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import consume_all, create_topics, produce
from flows.wire.avro import EVENT, MODEL, REPORT


def test_a_canary_promoted_then_a_shadow_retired_through_the_models_topic(kafka_bootstrap):
    flow = start_tailing_flow(
        kafka_bootstrap,
        "challenger",
        shipped_model(SHIPPED_MODELS_DIR, "1"),
        SERVING_CHALLENGER_WINDOW="100000",  # one report per shard, when the promotion closes it
    )
    topics, events = flow.topics, flow.events
    try:
        wait_for(lambda: ("accepted", "recommender-v1") in events(), "v1 accepted", timeout=120)
        output = publish(kafka_bootstrap, topics["models"], "--version", "2", "--challenger", "canary",
                         "--fraction", "0.5")  # fmt: skip
        assert "published model 'recommender-v2' as canary challenger on 50% of users" in output
        wait_for(lambda: ("accepted", "recommender-v2") in events(), "the canary accepted", timeout=120)

        first = list(generated_records(21, 2_000))
        produce(kafka_bootstrap, topics["data"], encoded(first))
        answers = results_by_offset(kafka_bootstrap, topics["results"], len(first))
        assert sorted(answers) == list(range(len(first)))
        assert all(len(results) == 1 for results in answers.values())  # none twice
        users = np.array([record.user for record in first])
        in_canary = user_buckets(users, "recommender-v2") < 0.5
        for offset, [result] in answers.items():
            assert result.metadata.errors == ""
            expected = "recommender-v2" if in_canary[offset] else "recommender-v1"
            assert result.metadata.model_name == expected

        assert "published promote 'recommender-v2'" in publish(
            kafka_bootstrap, topics["models"], "--promote", "recommender-v2"
        )
        wait_for(lambda: ("promoted", "recommender-v2") in events(), "the promotion", timeout=60)
        second = list(generated_records(22, 1_000))
        produce(kafka_bootstrap, topics["data"], encoded(second))
        answers = results_by_offset(kafka_bootstrap, topics["results"], len(first) + len(second))
        assert sorted(answers) == list(range(len(first) + len(second)))
        assert all(len(results) == 1 for results in answers.values())
        after = [answers[offset][0].metadata.model_name for offset in range(len(first), len(first) + 1_000)]
        assert set(after) == {"recommender-v2"}

        def promoted() -> list:
            return [report for report in challenger_reports() if report.closed_by == "promoted"]

        def challenger_reports() -> list:
            found = consume_all(kafka_bootstrap, topics["reports"], 10**6, timeout=2)
            return [REPORT.decode(message.value()) for message in found]

        wait_for(lambda: len(promoted()) == 2, "both shards' last canary reports", timeout=60)
        reports = challenger_reports()
        assert {report.challenger for report in reports} == {"recommender-v2"}
        assert {report.mode for report in reports} == {"canary"}
        assert {report.closed_by for report in reports} == {"promoted"}
        answered = sum(report.challenger_records for report in reports)
        assert answered == int(in_canary.sum())  # every canary answer is counted, once
        assert consume_all(kafka_bootstrap, topics["shadow"], 1, timeout=2) == []  # a canary has no shadow

        # v1 back as a shadow: the results stay v2's, v1's own go to the shadow results topic.
        publish(kafka_bootstrap, topics["models"], "--version", "1", "--challenger", "shadow")
        wait_for(
            lambda: events().count(("accepted", "recommender-v1")) == 2, "the shadow accepted", timeout=60
        )
        third = list(generated_records(23, 500))
        produce(kafka_bootstrap, topics["data"], encoded(third))
        start = len(first) + len(second)
        answers = results_by_offset(kafka_bootstrap, topics["results"], start + len(third))
        shadow = results_by_offset(kafka_bootstrap, topics["shadow"], len(third))
        assert sorted(shadow) == list(range(start, start + len(third)))  # every record, once
        v1 = build_scorer(shipped_model(SHIPPED_MODELS_DIR, "1"), AdmissionPolicy())
        for offset, [result] in shadow.items():
            [answer] = answers[offset]
            assert (answer.metadata.model_name, result.metadata.model_name) == (
                "recommender-v2",
                "recommender-v1",
            )
            record = third[offset - start]
            alone = v1.score(np.full(len(record.products), record.user, np.float32),
                             np.asarray(record.products, np.float32))  # fmt: skip
            assert np.allclose(result.model_result.probabilities, alone, atol=1e-5)
        v1.close()
        assert "published retire 'recommender-v1'" in publish(
            kafka_bootstrap, topics["models"], "--retire", "recommender-v1"
        )
        wait_for(lambda: ("retired", "recommender-v1") in events(), "the retirement", timeout=60)
    finally:
        flow.process.terminate()
        finished_output(flow.process)


def test_kill_9_with_a_canary_running_loses_no_record_and_keeps_its_users(kafka_bootstrap, tmp_path):
    topics = create_topics(kafka_bootstrap, "canary-crash", ["data", "models", "results", "dead", "events"])
    canary = replace(shipped_model(SHIPPED_MODELS_DIR, "2"), role=CHALLENGER, mode=CANARY, fraction=0.3)
    produce(
        kafka_bootstrap,
        topics["models"],
        [(b"v1", MODEL.encode(shipped_model(SHIPPED_MODELS_DIR, "1"))), (b"v2", MODEL.encode(canary))],
    )
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    flags = ["-r", str(recovery), "-s", "1", "-b", "0"]
    settings = {"SERVING_KAFKA_EVENTS_TOPIC": topics["events"], "SERVING_SHARDS": "2"}
    records = list(generated_records(31, 6_000))

    first = start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="true", **settings)

    def shards_challenging() -> int:
        events = consume_all(kafka_bootstrap, topics["events"], 10**6, timeout=2)
        return sum(decoded(EVENT, message.value()).kind == "challenging" for message in events)

    wait_for(lambda: shards_challenging() == 2, "the canary on both shards", timeout=120)
    produce(kafka_bootstrap, topics["data"], encoded(records[:3_000]))
    assert len(consume_all(kafka_bootstrap, topics["results"], 1_000, timeout=60)) >= 1_000
    wait_for_model_snapshot(recovery / "part-0.sqlite3", holds=lambda state: state.challenger is not None)
    wait_for_fitted_outlier_snapshot(recovery / "part-0.sqlite3", "recommender-v1")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    produce(kafka_bootstrap, topics["data"], encoded(records[3_000:]))
    output = finished_output(
        start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="false", **settings)
    )
    assert "resent: restored from recovery, canary challenger on 30% of users" in output

    answers = results_by_offset(kafka_bootstrap, topics["results"], len(records))
    assert sorted(answers) == list(range(len(records))), "records without a result"
    in_canary = user_buckets(np.array([record.user for record in records]), "recommender-v2") < 0.3
    for offset, results in answers.items():  # duplicates too: every answer by the user's model
        expected = "recommender-v2" if in_canary[offset] else "recommender-v1"
        assert {result.metadata.model_name for result in results} == {expected}
        assert all(result.metadata.errors == "" for result in results)
    # v1's outlier detector came back fitted: no record after the restart went to a new reference.
    after_restart = [
        results for offset, results in answers.items() if offset >= 3_000 and not in_canary[offset]
    ]
    assert all(result.metadata.outlier_score is not None for results in after_restart for result in results)
    duplicates = sum(len(results) for results in answers.values()) - len(records)
    print(f"kill -9 with a canary running: {len(records)} records, 0 lost, {duplicates} duplicates")
    assert duplicates <= 3_000
