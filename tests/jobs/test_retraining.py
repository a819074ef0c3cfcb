"""The retraining loop through a broker: drifting data makes the flow write a signed `drift` event to the
events topic, `serving-retrain` trains and publishes a signed new version on it, and the flow accepts that
version; forged, replayed and repeated events train nothing."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from support.jobs import REPO, announced_imports, encoded, finished_output, start_flow, wait_for
from support.topics import flow_events

from flows.adapters.sources.generators import generated_records, shipped_model
from flows.core.admission.signing import (
    load_private_key,
    new_private_key,
    parse_trusted_keys,
    private_key_pem,
    public_key_pem,
    sign,
    verify,
)
from flows.core.event_signing import EventSigner, verify_event
from flows.core.events import ModelEvent
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import consume_all, create_topics, produce
from flows.tools import retrain
from flows.wire.avro import EVENT, MODEL, SIGNED_EVENT

# Every record of a poll read (a pre-loaded topic gives polls of 1,000; the default reads 250 of each).
DRIFT = {"SERVING_DRIFT_REFERENCE": "1000", "SERVING_DRIFT_WINDOW": "1000", "SERVING_DRIFT_SAMPLE": "1000"}


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair as PEM files (private, public), as serving-model-keys writes them."""
    key = new_private_key()
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(private_key_pem(key))
    public.write_bytes(public_key_pem(key.public_key()))
    return private, public


def forged_event(model_name: str, reason: str) -> bytes:
    """An unsigned drift event written as a forger would, around ModelEvent (which would escape control
    characters before they reach the wire)."""
    datum = {"kind": "drift", "modelName": model_name, "reason": reason, "shard": "", "previousModel": "",
             "loadMs": 0.0, "arrivalMs": 0.0, "signer": "", "issuedMs": 0, "signature": b""}  # fmt: skip
    buffer = io.BytesIO(EVENT.header)
    buffer.seek(0, io.SEEK_END)
    schemaless_writer(buffer, EVENT.schema, datum)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("model_format", "version", "suffix"), [("savedmodel", "1", ""), ("onnx", "1-onnx", "-onnx")]
)
def test_drift_on_the_events_topic_retrains_and_publishes_a_version_the_flow_accepts(
    kafka_bootstrap, tmp_path, model_format, version, suffix
):
    """With a TensorFlow champion, and with an ONNX one, retrained as ONNX: then the flow, watched
    (`support.watched_imports`), never imports TensorFlow."""
    v1, v3 = f"recommender-v1{suffix}", f"recommender-v3{suffix}"
    topics = create_topics(
        kafka_bootstrap, f"retrain-{model_format}", ["data", "models", "results", "dead", "events"]
    )
    events_key, events_public = write_key_pair(tmp_path, "events")
    models_key, models_public = write_key_pair(tmp_path, "models")
    signed_v1 = sign(shipped_model(SHIPPED_MODELS_DIR, version), load_private_key(models_key))
    produce(kafka_bootstrap, topics["models"], [(b"v1", MODEL.encode(signed_v1))])
    # A forged drift event of the model that will drift, there before the flow's own: retrain ignores it.
    forged = forged_event(v1, "forged \x1b[2J\r\n")
    produce(kafka_bootstrap, topics["events"], [(v1.encode(), forged)])
    retrain_job = subprocess.Popen(
        [sys.executable, "-m", "flows.tools.retrain", "--version", "3", "--once", "--from-beginning",
         "--format", model_format,
         "--timeout", "240", "--bootstrap-servers", kafka_bootstrap, "--events-topic", topics["events"],
         "--models-topic", topics["models"], "--trusted-keys", str(events_public), "--sign", str(models_key)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    imports = tmp_path / "imports.log"
    flow = start_flow(
        kafka_bootstrap,
        topics,
        module="support.watched_imports",
        SERVING_TEST_IMPORT_LOG=str(imports),
        SERVING_TEST_TENSORFLOW_GATE=str(tmp_path / "tensorflow-may-import"),
        SERVING_KAFKA_EVENTS_TOPIC=topics["events"],
        SERVING_KAFKA_TAIL="true",
        SERVING_EVENTS_SIGNING_KEY=str(events_key),
        SERVING_MODEL_TRUSTED_KEYS=str(models_public),
        **DRIFT,
    )
    if model_format == "savedmodel":
        (tmp_path / "tensorflow-may-import").touch()
    try:
        records = list(generated_records(5, 4_000, shift_after=2_000))  # drifts from the 2,000th record
        produce(kafka_bootstrap, topics["data"], encoded(records))
        output, _ = retrain_job.communicate(timeout=300)
        assert retrain_job.returncode == 0, output
        lines = output.splitlines()
        assert any(line.startswith(f"ignored drift of '{v1}' at topic") for line in lines), output
        assert "the event is not signed" in output and "\x1b" not in output
        assert any(line.startswith(f"drift of '{v1}' at topic") for line in lines), output
        assert f"published model '{v3}'" in output and "signed)" in output
        wait_for(
            lambda: ("accepted", v3) in flow_events(kafka_bootstrap, topics["events"], signed=True),
            "the flow to accept the retrained (signed) model",
            timeout=120,
        )
        events = flow_events(kafka_bootstrap, topics["events"], signed=True)
        assert events.index(("accepted", v1)) < events.index(("drift", v1))
        # Every event on the topic but the forged one is the flow's, and verifies.
        written = consume_all(kafka_bootstrap, topics["events"], 1_000_000, timeout=2)
        trusted = parse_trusted_keys(str(events_public))
        verdicts = [verify_event(SIGNED_EVENT.decode(m.value()), trusted) for m in written]
        assert verdicts[0] == "the event is not signed" and verdicts[1:] == [None] * (len(written) - 1)
        imported = {package for _, package in announced_imports(imports)}
        assert ("tensorflow" in imported) == (model_format == "savedmodel"), imported
    finally:
        flow.terminate()
        finished_output(flow)


def run_retrain(kafka_bootstrap: str, topics: dict[str, str], *options: str) -> int:
    """`serving-retrain` in this process over the whole events topic, until 3 s pass without an event."""
    return retrain.main(
        ["--version", "3", "--from-beginning", "--timeout", "3", "--bootstrap-servers", kafka_bootstrap,
         "--events-topic", topics["events"], "--models-topic", topics["models"], *options]
    )  # fmt: skip


def test_forged_events_train_nothing(kafka_bootstrap, tmp_path, capsys):
    topics = create_topics(kafka_bootstrap, "forged", ["events", "models"])
    _, public = write_key_pair(tmp_path, "events")
    stranger = EventSigner(new_private_key(), "host/1")
    forged = [
        forged_event("recommender-v1\x1b[2J\r\n", "unsigned \x1b]0;title\x07"),
        SIGNED_EVENT.encode(stranger.sign(ModelEvent("drift", "recommender-v2", "signed by a stranger"))),
    ]
    produce(kafka_bootstrap, topics["events"], [(None, value) for value in forged])
    assert run_retrain(kafka_bootstrap, topics, "--trusted-keys", str(public)) == 0
    assert consume_all(kafka_bootstrap, topics["models"], 1, timeout=3) == []
    printed = capsys.readouterr()
    assert all(line.isprintable() for line in (printed.out + printed.err).splitlines())
    assert printed.err.splitlines() == [
        (
            f"ignored drift of 'recommender-v1\\\\x1b[2J' at topic {topics['events']} partition 0 offset 0: "
            "the event is not signed"
        ),
        (
            f"ignored drift of 'recommender-v2' at topic {topics['events']} partition 0 offset 1: "
            "the signature (signer 'host/1') does not verify under any trusted key"
        ),
    ]


def test_replayed_and_repeated_signed_events_train_once_and_the_model_is_signed(
    kafka_bootstrap, tmp_path, capsys
):
    topics = create_topics(kafka_bootstrap, "repeated", ["events", "models"])
    events_key, events_public = write_key_pair(tmp_path, "events")
    models_key, models_public = write_key_pair(tmp_path, "models")
    flow = EventSigner(load_private_key(events_key))
    first = SIGNED_EVENT.encode(flow.sign(ModelEvent("drift", "recommender-v2", "PSI \x1b[2J\r\n0.9")))
    again = [SIGNED_EVENT.encode(flow.sign(ModelEvent("drift", "recommender-v2", str(n)))) for n in range(4)]
    # The first event twice (a replay: the same bytes), then four more drift events of the same model.
    produce(kafka_bootstrap, topics["events"], [(None, value) for value in [first, first, *again]])
    options = ["--trusted-keys", str(events_public), "--sign", str(models_key), "--min-interval", "0"]
    assert run_retrain(kafka_bootstrap, topics, *options) == 0
    published = consume_all(kafka_bootstrap, topics["models"], 2, timeout=3)
    assert len(published) == 1
    descriptor = MODEL.decode(published[0].value())
    assert descriptor.model_name == "recommender-v3"
    assert verify(descriptor, parse_trusted_keys(str(models_public))) is None
    printed = capsys.readouterr()
    assert all(line.isprintable() for line in (printed.out + printed.err).splitlines())
    assert "drift of 'recommender-v2' at topic" in printed.out and "PSI \\x1b[2J 0.9" in printed.out
    refusals = printed.err.splitlines()
    assert len(refusals) == 5 and "offset 1: replay: issued at" in refusals[0]
    duplicate = "duplicate: retrained after a drift of 'recommender-v2' already"
    assert all(line.endswith(duplicate) for line in refusals[1:])
