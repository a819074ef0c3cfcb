"""What the deployment must provide is checked before the dataflow starts: a missing topic or unreachable
brokers stop the main job in one line per problem, naming the topic, its setting and the command that
creates it, with status 2, before a model is loaded and without a panic trace from inside a Bytewax worker;
so do a key file or an exporter that only the build reads, and a recovery directory the cluster could not
resume from."""

from __future__ import annotations

import os

from bytewax.recovery import init_db_dir
from support.jobs import start_flow, start_job

from flows.testing.local_broker import create_topics
from flows.testing.loopback import free_ports

MARKER_KEY = "preflight tests' marker key"


def stopped_with_status_2(job) -> str:
    """The output of a job that must stop by itself with status 2, one line naming the problem."""
    output, _ = job.communicate(timeout=180)
    assert job.returncode == 2, output[-3000:]
    assert "panicked" not in output and "Traceback" not in output, output[-3000:]
    assert "accepted" not in output  # stopped before any model was judged
    return output


def refused(bootstrap: str, topics: dict[str, str], **settings: str) -> str:
    """The main job's output, once it has stopped with status 2."""
    job = start_flow(bootstrap, topics, **settings)  # type: ignore[arg-type]  # SERVING_* names only
    return stopped_with_status_2(job)


def refused_exactly_once(bootstrap: str, topics: dict[str, str], answered: str) -> str:
    """`refused` with exactly-once delivery, its markers on `answered`."""
    return refused(
        bootstrap,
        topics,
        SERVING_KAFKA_DELIVERY="exactly-once",
        SERVING_KAFKA_ANSWERED_TOPIC=answered,
        SERVING_KAFKA_MARKER_KEY=MARKER_KEY,
    )


def test_exactly_once_without_its_answered_topic_names_it_and_how_to_create_it(kafka_bootstrap):
    names = ["data", "models", "results", "dead"]
    topics = create_topics(kafka_bootstrap, "no-answered", names, partitions=3)
    answered = f"{topics['data']}-answered-never-created"
    output = refused_exactly_once(kafka_bootstrap, topics, answered)
    assert (
        f"cannot start: Kafka topic '{answered}' (SERVING_KAFKA_ANSWERED_TOPIC) does not exist on "
        f"{kafka_bootstrap} (exactly-once delivery keeps its answered markers there); create it: "
        f"kafka-topics.sh --bootstrap-server {kafka_bootstrap} --create --topic {answered} --partitions 3 "
        "--config cleanup.policy=compact"
    ) in output, output[-3000:]


def test_exactly_once_on_an_answered_topic_deleted_by_age_names_the_command_that_compacts_it(kafka_bootstrap):
    topics = create_topics(kafka_bootstrap, "uncompacted", ["data", "models", "results", "dead"])
    answered = create_topics(kafka_bootstrap, "uncompacted", ["markers"])["markers"]  # cleanup.policy=delete
    output = refused_exactly_once(kafka_bootstrap, topics, answered)
    assert (
        f"cannot start: Kafka topic '{answered}' (SERVING_KAFKA_ANSWERED_TOPIC) has cleanup.policy=delete"
    ) in output, output[-3000:]
    assert (
        f"kafka-configs.sh --bootstrap-server {kafka_bootstrap} --alter --entity-type topics --entity-name "
        f"{answered} --add-config cleanup.policy=compact"
    ) in output, output[-3000:]


def test_every_missing_topic_is_named_with_its_setting(kafka_bootstrap):
    topics = create_topics(kafka_bootstrap, "missing", ["models", "results"])
    topics["data"] = "data-topic-never-created"
    topics["dead"] = "dead-letters-never-created"
    output = refused(kafka_bootstrap, topics, SERVING_KAFKA_EVENTS_TOPIC="events-never-created")
    for topic, variable in (
        ("data-topic-never-created", "SERVING_KAFKA_DATA_TOPIC"),
        ("dead-letters-never-created", "SERVING_KAFKA_DEAD_LETTERS_TOPIC"),
        ("events-never-created", "SERVING_KAFKA_EVENTS_TOPIC"),
    ):
        assert f"Kafka topic '{topic}' ({variable}) does not exist" in output, output[-3000:]
    assert output.count("cannot start:") == 3, output[-3000:]


def test_brokers_that_cannot_be_reached_are_named() -> None:
    [port] = free_ports(1)  # nothing listens there
    bootstrap = f"127.0.0.1:{port}"
    topics = {name: f"{name}-topic" for name in ("data", "models", "results", "dead")}
    output = refused(bootstrap, topics)
    assert f"cannot start: cannot read the topics of the Kafka brokers {bootstrap} within 15 s" in output


def test_a_signing_key_that_cannot_be_read_is_named_in_one_line(kafka_bootstrap, tmp_path):
    topics = create_topics(kafka_bootstrap, "bad-key", ["data", "models", "results", "dead", "events"])
    key = tmp_path / "signing-key.pem"
    key.write_text("not a key\n")
    output = refused(
        kafka_bootstrap,
        topics,
        SERVING_KAFKA_EVENTS_TOPIC=topics["events"],
        SERVING_EVENTS_SIGNING_KEY=str(key),
    )
    assert f"cannot start: SERVING_EVENTS_SIGNING_KEY: {key}: not an unencrypted PEM private key" in output


def test_an_unknown_trace_exporter_is_named_in_one_line():
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkin-over-carrier-pigeon", "SERVING_RECORDS": "10"}
    job = start_job(env)
    output, _ = job.communicate(timeout=180)
    assert job.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (
        "cannot start: OTEL_TRACES_EXPORTER='zipkin-over-carrier-pigeon': use otlp, console or none" in output
    )


def test_a_recovery_directory_without_partitions_stops_the_job_with_the_command_that_creates_them(tmp_path):
    """Before: Bytewax's `NoPartitionsError`, a panic in each worker and a traceback."""
    bounded = {**os.environ, "SERVING_RECORDS": "100", "SERVING_RECORD_RATE": "0"}
    output = stopped_with_status_2(start_job(bounded, "-r", str(tmp_path), "-s", "1", "-b", "0"))
    assert f"recovery store refused: {tmp_path}: no recovery partition" in output, output[-3000:]
    assert f"serving-recovery-store init {tmp_path} --partitions N" in output, output[-3000:]


def test_a_recovery_directory_missing_a_partition_stops_the_job_naming_it(tmp_path):
    """Before: Bytewax's `MissingPartitionsError`, a panic in the worker and a traceback."""
    init_db_dir(tmp_path, 2)
    (tmp_path / "part-1.sqlite3").unlink()
    bounded = {**os.environ, "SERVING_RECORDS": "100", "SERVING_RECORD_RATE": "0"}
    output = stopped_with_status_2(start_job(bounded, "-r", str(tmp_path), "-s", "1", "-b", "0"))
    assert "partitions missing [1], found twice [], of 2: the cluster cannot resume" in output, output[-3000:]
