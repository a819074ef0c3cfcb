"""The retraining loop through a broker: drifting data makes the flow write a `drift` event to the events
topic, `serving-retrain` trains and publishes a new version on it, and the flow accepts that version."""

from __future__ import annotations

import subprocess
import sys

from support.jobs import REPO, encoded, finished_output, start_flow, wait_for

from flows.avro import EVENT, MODEL
from flows.settings import SHIPPED_MODELS_DIR
from flows.sources.generators import generated_records, shipped_model
from flows.testing.local_broker import consume_all, create_topics, produce

# Every record of a poll read (a pre-loaded topic gives polls of 1,000; the default reads 250 of each).
DRIFT = {"SERVING_DRIFT_REFERENCE": "1000", "SERVING_DRIFT_WINDOW": "1000", "SERVING_DRIFT_SAMPLE": "1000"}


def test_drift_on_the_events_topic_retrains_and_publishes_a_version_the_flow_accepts(kafka_bootstrap):
    topics = create_topics(kafka_bootstrap, "retrain", ["data", "models", "results", "dead", "events"])
    produce(
        kafka_bootstrap, topics["models"], [(b"v1", MODEL.encode(shipped_model(SHIPPED_MODELS_DIR, "1")))]
    )
    retrain = subprocess.Popen(
        [sys.executable, "-m", "flows.tools.retrain", "--version", "3", "--once", "--from-beginning",
         "--timeout", "240", "--bootstrap-servers", kafka_bootstrap, "--events-topic", topics["events"],
         "--models-topic", topics["models"]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    flow = start_flow(
        kafka_bootstrap,
        topics,
        SERVING_KAFKA_EVENTS_TOPIC=topics["events"],
        SERVING_KAFKA_TAIL="true",
        **DRIFT,
    )
    try:
        records = list(generated_records(5, 4_000, shift_after=2_000))  # drifts from the 2,000th record
        produce(kafka_bootstrap, topics["data"], encoded(records))
        output, _ = retrain.communicate(timeout=300)
        assert retrain.returncode == 0, output
        assert "drift of 'recommender-v1'" in output and "published model 'recommender-v3'" in output
        wait_for(
            lambda: ("accepted", "recommender-v3") in flow_events(kafka_bootstrap, topics["events"]),
            "the flow to accept the retrained model",
            timeout=120,
        )
        events = flow_events(kafka_bootstrap, topics["events"])
        assert events.index(("accepted", "recommender-v1")) < events.index(("drift", "recommender-v1"))
    finally:
        flow.terminate()
        finished_output(flow)


def flow_events(bootstrap: str, topic: str) -> list[tuple[str, str]]:
    """(kind, model) of the flow-wide events on `topic` so far (per-shard ones left out)."""
    messages = consume_all(bootstrap, topic, 1_000_000, timeout=2)
    return [
        (event.kind, event.model_name)
        for event in map(EVENT.decode, (m.value() for m in messages))
        if not event.shard
    ]
