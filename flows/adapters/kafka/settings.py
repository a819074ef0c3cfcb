"""The Kafka section of the settings (`SERVING_KAFKA_*`): brokers, topics, reading and client options.

A frozen, typed model whose fields carry their defaults and descriptions (see `flows.core.sections`); the
runtime reads it from the environment, and the Kafka adapters and the tools take it as it is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from flows.core.sections import Section


class KafkaSettings(Section):
    """Where the flow reads and writes when Kafka is configured (`bootstrap_servers` set)."""

    bootstrap_servers: str = Field(
        "",
        description=(
            "Kafka bootstrap servers (`host:port,...`); set, the flow reads and writes the topics below "
            "instead of the embedded generators"
        ),
    )
    data_topic: str = Field("recommender-records", description="topic of Avro `RecommenderRecord`s")
    models_topic: str = Field(
        "recommender-models",
        description=(
            "topic of Avro `ModelDescriptor`s; read from its beginning when there is no recovery state, and "
            "the newest model on it serves first"
        ),
    )
    results_topic: str = Field(
        "recommender-results", description="topic of Avro `RecommenderResult`s, keyed by user"
    )
    dead_letters_topic: str = Field(
        "recommender-dead-letters",
        description=(
            "messages that could not be decoded: original key, value and headers, plus `dead-letter.reason`, "
            "`.topic`, `.partition`, `.offset` headers"
        ),
    )
    events_topic: str = Field(
        "",
        description=(
            "if set, every model event (accepted, rejected, resent, swapped, restored, failed, drift, "
            "recovered) also goes to this topic as an Avro `ModelEvent` (`schemas/ModelEvent.avsc`) keyed by "
            "model name; the hook for a retraining job (`serving-retrain`). Unset by default: a flow must "
            "not wait on a topic nobody created"
        ),
    )
    challenger_topic: str = Field(
        "",
        description=(
            "if set, every challenger report (a window of a shadow or canary challenger on one shard, see "
            "[docs/challengers.md](challengers.md)) also goes to this topic as an Avro `ChallengerReport` "
            "(`schemas/ChallengerReport.avsc`) keyed by challenger name. Unset by default, like the events "
            "topic"
        ),
    )
    shadow_results_topic: str = Field(
        "",
        description=(
            "if set, a shadow challenger's own results (what it would have answered for the records it "
            "scored) go to this topic as Avro `RecommenderResult`s keyed by user, with the same source "
            "headers as the results topic, so the two join by data offset into both models' scores per "
            "record. Unset, the flow does not even emit them"
        ),
    )
    explanations_topic: str = Field(
        "",
        description=(
            "if set, explanations (the sampled records' and those whose message has the `serving-explain` "
            "header; see [Observability](observability.md#explanations)) go to this topic as Avro "
            "`Explanation`s (`schemas/Explanation.avsc`) keyed by user, with the result's source headers, at "
            "least once. Unset, they show on the console and `/state` only"
        ),
    )
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description=(
            "`exactly-once`: results, data dead letters and shadow results are written in Kafka "
            "transactions, one per data partition, committed every SERVING_KAFKA_COMMIT_INTERVAL seconds "
            "and at each snapshot, so a `read_committed` consumer sees one answer per data offset whatever "
            "happens to the flow; results become visible at each commit. The default, `at-least-once`, "
            "makes results visible at once and needs no "
            "transaction support, but a crash or restart repeats up to a snapshot interval's answers (see "
            "[docs/kafka.md](kafka.md#exactly-once))"
        ),
    )
    commit_interval: float = Field(
        0.1,
        gt=0,
        description=(
            "with `exactly-once`: seconds a transaction stays open at most (it is also committed at every "
            "snapshot): about how long results wait before a `read_committed` consumer sees them. With "
            "SERVING_KAFKA_SHADOW_RESULTS_TOPIC set, transactions are committed at snapshots only (a shadow "
            "result must share its record's answer's transaction). Shorter "
            "costs throughput: the worker waits while a commit flushes the transaction's messages and makes "
            "a round trip to the broker, and each commit writes a marker "
            "(see [docs/kafka.md](kafka.md#commit-interval))"
        ),
    )
    answered_topic: str = Field(
        "recommender-answered",
        description=(
            "with `exactly-once`: the compacted topic where each transaction records which data offsets it "
            "answered (a JSON marker keyed by transactional id); a restarted flow reads it to drop answers "
            "committed before"
        ),
    )
    marker_key: SecretStr | None = Field(
        None,
        description=(
            "with `exactly-once`: a secret (16 bytes or more, the same for every process, kept across "
            "restarts) that signs the answered markers, so that no other writer of the answered topic can "
            "make the flow drop records; unset, a key derived from SERVING_EVENTS_SIGNING_KEY, and "
            "exactly-once refuses to start without either"
        ),
    )
    answered_wait: float = Field(
        60.0,
        gt=0,
        description=(
            "with `exactly-once`: seconds a starting partition waits for a transaction another producer left "
            "open on its answered partition (it hides the markers behind it); past it, the partition starts "
            "from the markers it read, which can repeat answers, never drop one"
        ),
    )
    transactional_id: str = Field(
        "",
        description=(
            "with `exactly-once`: the prefix of the transactional ids, one per data partition "
            "(`PREFIX.TOPIC.PARTITION`); unset: `serving.` and the results topic. Two deployments must not "
            "share it, and a deployment must keep it across restarts: it is what fences a stale process"
        ),
    )
    data_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a flow without recovery state starts on the data topic (`earliest` or `latest`)",
    )
    poll_size: int = Field(
        1000,
        ge=1,
        description=(
            "most messages a data partition reads per poll; a poll travels through the flow as one batch "
            "(decoded in one pass, split by shard, scored, encoded and produced together), so the engine's "
            "per-item cost is paid per poll"
        ),
    )
    tail: bool = Field(True, description="`false`: stop at the end of the topics (reprocessing, tests)")
    config: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'librdkafka settings for consumers and producers, as JSON, e.g. `{"security.protocol": '
            '"SASL_SSL", "sasl.mechanism": "PLAIN", ...}`'
        ),
    )
    consumer_config: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "extra consumer-only settings, JSON. The flow's consumers start from `queued.min.messages=1000` "
            "and `fetch.queue.backoff.ms=10` (`flows/adapters/kafka/config.py`: a read-ahead of about one "
            "poll per partition instead of librdkafka's 100,000 messages; harmless against Kafka, and "
            "against a broker that answers empty fetches at once it keeps consumers of a pre-loaded topic "
            "from spinning at the partition's end); settings here override them"
        ),
    )
    producer_config: dict[str, str] = Field(
        default_factory=dict, description="extra producer-only settings, JSON"
    )

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"

    @property
    def transactional_prefix(self) -> str:
        """What each data partition's transactional id starts with."""
        return self.transactional_id or f"serving.{self.results_topic}"

    @property
    def brokers(self) -> list[str]:
        """The bootstrap servers as a list (empty: Kafka is not configured)."""
        return [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]
