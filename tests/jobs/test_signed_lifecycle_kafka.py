"""Signing across the lifecycle, through a broker and the publishing tool (issue 19, item 2 and 3): signed
v1, a signed canary v2, a signed promote, kill -9 and restart: the promoted v2 answers; the bytes of the old
signed v1 descriptor produced again are refused as a replay; a fresh deployment on the same topic history
ends on v2 as well."""

from __future__ import annotations

import signal
import subprocess
import sys

from support.core_runs import sample_records
from support.decoded import decoded
from support.jobs import audit_report, encoded, finished_output, start_flow, wait_for, wait_for_model_snapshot
from support.topics import flow_events, publish

from flows.testing.local_broker import consume_all, create_topics, produce
from flows.tools import model_keys
from flows.wire.avro import EVENT, RESULT


def event_reasons(bootstrap: str, topic: str, kind: str) -> list[str]:
    messages = consume_all(bootstrap, topic, 1_000_000, timeout=2)
    return [event.reason for event in (decoded(EVENT, m.value()) for m in messages) if event.kind == kind]


def test_a_signed_promote_survives_kill_9_and_an_old_signed_descriptor_cannot_be_replayed(
    kafka_bootstrap, tmp_path
):
    assert model_keys.main(["--out", str(tmp_path / "keys")]) == 0
    key = str(tmp_path / "keys" / "model-signing.key")
    trusted = str(tmp_path / "keys" / "model-signing.pub")
    topics = create_topics(kafka_bootstrap, "signed", ["data", "models", "results", "dead", "events"])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    settings = {
        "SERVING_MODEL_TRUSTED_KEYS": trusted,
        "SERVING_KAFKA_EVENTS_TOPIC": topics["events"],
        "SERVING_STATE_PORT": "0",
    }
    flags = ["-r", str(recovery), "-s", "1", "-b", "0"]

    def events() -> list[tuple[str, str]]:
        return flow_events(kafka_bootstrap, topics["events"])

    publish(kafka_bootstrap, topics["models"], "--version", "1", "--sign", key)
    first = start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="true", **settings)
    try:
        wait_for(lambda: ("accepted", "recommender-v1") in events(), "v1 accepted", timeout=120)
        publish(kafka_bootstrap, topics["models"], "--version", "2", "--challenger", "canary", "--fraction",
                "0.3", "--sign", key)  # fmt: skip
        wait_for(lambda: ("accepted", "recommender-v2") in events(), "the canary accepted", timeout=120)
        assert "published promote 'recommender-v2', signed" in publish(
            kafka_bootstrap, topics["models"], "--promote", "recommender-v2", "--sign", key
        )
        wait_for(lambda: ("promoted", "recommender-v2") in events(), "the promotion", timeout=60)
        wait_for_model_snapshot(
            recovery / "part-0.sqlite3", holds=lambda state: state.champion.model_name == "recommender-v2"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)

    # The old signed v1 descriptor, its bytes produced again by someone with produce rights.
    [v1_message] = consume_all(kafka_bootstrap, topics["models"], 1, timeout=10)[:1]
    produce(kafka_bootstrap, topics["models"], [(v1_message.key(), v1_message.value())])
    records = sample_records(200)
    produce(kafka_bootstrap, topics["data"], encoded(records))
    finished_output(start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="false", **settings))

    report = audit_report(kafka_bootstrap, topics)
    assert report["lost"] == 0 and report["errors_by_reason"] == {}, report
    results = consume_all(kafka_bootstrap, topics["results"], len(records), timeout=30)
    answered_by = {RESULT.decode(message.value()).metadata.model_name for message in results}
    assert answered_by == {"recommender-v2"}
    assert any("replay or downgrade refused" in reason for reason in event_reasons(
        kafka_bootstrap, topics["events"], "rejected"))  # fmt: skip

    # A fresh deployment (no recovery store) on the same history ends on the promoted champion too.
    fresh = finished_output(start_flow(kafka_bootstrap, topics, SERVING_KAFKA_TAIL="false", **settings))
    assert "model 'recommender-v2' accepted" in fresh and "model 'recommender-v1' accepted" not in fresh
