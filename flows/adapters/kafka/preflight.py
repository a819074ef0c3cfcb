"""What a Kafka deployment must provide, checked once at start, before the dataflow is built.

Bytewax builds sources and sinks inside its Rust workers, where a Python exception (a topic that does not
exist, an answered topic missing for exactly-once delivery) became an 80-line panic trace, printed after the
model had loaded, with the one useful sentence buried in it. These checks run first, in the main thread, from
one metadata request: each problem is one line naming the topic, the setting that names it and the command
that creates it. The metadata request lists every topic rather than asking for some by name, because asking
by name lets a broker with `auto.create.topics.enable` create them, with its defaults, as a side effect.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from flows.adapters.kafka.config import client_config, consumer_config
from flows.adapters.kafka.settings import KafkaSettings

LOOKUP_TIMEOUT_S = 15.0


def needed_topics(settings: KafkaSettings) -> dict[str, str]:
    """The topics the flow reads or writes with these settings, each with the variable that names it."""
    topics = {
        "SERVING_KAFKA_DATA_TOPIC": settings.data_topic,
        "SERVING_KAFKA_MODELS_TOPIC": settings.models_topic,
        "SERVING_KAFKA_RESULTS_TOPIC": settings.results_topic,
        "SERVING_KAFKA_DEAD_LETTERS_TOPIC": settings.dead_letters_topic,
        "SERVING_KAFKA_EVENTS_TOPIC": settings.events_topic,
        "SERVING_KAFKA_CHALLENGER_TOPIC": settings.challenger_topic,
        "SERVING_KAFKA_SHADOW_RESULTS_TOPIC": settings.shadow_results_topic,
    }
    if settings.exactly_once:
        topics["SERVING_KAFKA_ANSWERED_TOPIC"] = settings.answered_topic
    return {variable: topic for variable, topic in topics.items() if topic}


def kafka_problems(settings: KafkaSettings) -> list[str]:
    """One line per thing the brokers lack for these settings (none: the flow can start)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            **consumer_config(settings),
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=LOOKUP_TIMEOUT_S)
    except KafkaException as error:
        unreachable = (
            f"cannot read the topics of the Kafka brokers {settings.bootstrap_servers} within "
            f"{LOOKUP_TIMEOUT_S:g} s (SERVING_KAFKA_BOOTSTRAP_SERVERS): {error.args[0].str()}"
        )
        return [unreachable]
    finally:
        consumer.close()
    data = metadata.topics.get(settings.data_topic)
    partitions = len(data.partitions) if data is not None and data.partitions else 1
    problems = []
    for variable, topic in needed_topics(settings).items():
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            continue
        why = "does not exist" if found is None or not found.partitions else found.error.str()
        compacted = variable == "SERVING_KAFKA_ANSWERED_TOPIC"
        problems.append(
            f"Kafka topic {topic!r} ({variable}) {why} on {settings.bootstrap_servers}"
            + (" (exactly-once delivery keeps its answered markers there)" if compacted else "")
            + f"; create it: {create_command(settings.bootstrap_servers, topic, partitions, compacted)}"
        )
    if settings.exactly_once and not problems:
        problems += _answered_topic_problems(settings)
    return problems


def _answered_topic_problems(settings: KafkaSettings) -> list[str]:
    """The answered topic must be compacted: deleted by age instead, the markers of partitions idle past its
    `retention.ms` go, and a restart answers again what they covered. A broker that does not let the flow
    read the topic's configuration (no DescribeConfigs right) leaves it unchecked."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, **client_config(settings, {})})
    topic = settings.answered_topic
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    try:
        policy = future.result(timeout=LOOKUP_TIMEOUT_S).get("cleanup.policy")
    except (KafkaException, TimeoutError):
        return []
    if policy is None or "compact" in str(policy.value):
        return []
    wrong = (
        f"Kafka topic {topic!r} (SERVING_KAFKA_ANSWERED_TOPIC) has cleanup.policy={policy.value}: "
        f"exactly-once delivery needs its markers kept (compacted), not deleted by age; change it: "
        f"kafka-configs.sh --bootstrap-server {settings.bootstrap_servers} --alter --entity-type topics "
        f"--entity-name {topic} --add-config cleanup.policy=compact"
    )
    return [wrong]


def create_command(bootstrap: str, topic: str, partitions: int, compacted: bool) -> str:
    """Kafka's own command that creates `topic` (as many partitions as the data topic)."""
    config = " --config cleanup.policy=compact" if compacted else ""
    return (
        f"kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} "
        f"--partitions {partitions}{config}"
    )
