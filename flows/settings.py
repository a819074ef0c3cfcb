"""Every setting of the serving flow, read from `SERVING_*` environment variables.

Each field's default and description are the one source of both: docs/configuration.md's table is generated
from them (`python -m flows.tools.settings_table --write`; a test checks the file is in step), and the
README's table by area names every variable (a test checks that too).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Package data (`flows.models`, the repository's top-level `models/recommender/VERSION/`). TensorFlow loads a SavedModel from a directory, so this is
# a real path: pip installs packages unzipped.
SHIPPED_MODELS_DIR = Path(os.fspath(resources.files("flows.models") / "recommender"))
# A field whose default is a path of this machine says in words what it is (docs/configuration.md).
SHOWN_DEFAULT = "shown_default"


class Settings(BaseSettings):
    """Settings of `python -m bytewax.run flows.serving` (environment variable = SERVING_ + name)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    shards: int = Field(
        8,
        ge=1,
        description="shard keys that batches of records (one per source poll) are spread over, in turn; more keys than workers balances better",
    )
    max_products: int = Field(
        10_000,
        ge=1,
        description="most products a record may ask to score; a record with more gets an error result naming the limit, without its products (a result echoing 10,000 products of any id is under 600 KB, within Kafka's default 1 MB)",
    )
    hold_limit: int = Field(
        10_000,
        ge=0,
        description="records each shard holds while it has no model yet and none is on its way; more get an error result. While a champion loads, or after a restart until the restored one is back, a shard holds every record: the data sources wait for a champion (see the next row), so what arrives meanwhile is bounded by one load",
    )
    data_wait_for_model: float = Field(
        120.0,
        ge=0,
        description='seconds a process\'s data partitions read nothing while none of its shards serves a champion: at a start or restart with a backlog, records wait on the topic instead of becoming "no model yet" errors. Past it (no model on the models topic at all, or a process that owns no shard) the process reads, and the hold limit applies',
    )
    records: int = Field(
        0,
        ge=0,
        description="records the data generator produces before it stops and the run ends (`0`: unbounded)",
    )
    record_rate: float = Field(
        333.0,
        ge=0,
        description="records per second from the data generator, as the original's one per 3 ms (`0`: as fast as possible)",
    )
    generator_partitions: int = Field(
        1, ge=1, description="data generator partitions; each is read by one worker"
    )
    generator_batch: int = Field(500, ge=1, description="most records a generator partition emits at once")
    seed: int = Field(42, description="generator seed: the same seed gives the same records")
    data_shift_after: int = Field(
        10_000,
        ge=0,
        description="generated records (per generator partition) after which the data drifts for as many again: most products then come from a newly popular range (the last sixth of the catalogue), so drift monitoring has something to show (`0`: never)",
    )
    model_interval: float = Field(
        10.0,
        gt=0,
        description="seconds between model updates from the model generator (the original used 120)",
    )
    model_versions: str = Field(
        "1,2:shadow,promote:2,1:canary:0.25,retire:1",
        description="the model generator's schedule, one entry per `SERVING_MODEL_INTERVAL`, round and round: `V` sends shipped version V (a directory under `SERVING_MODELS_DIR`) as champion; `V:shadow` or `V:canary:0.25` as a challenger on that fraction (default 1) of records or users; `promote:V` and `retire:V` act on the challenger `recommender-vV`. `1,2` alternates two champions, as before challengers existed",
    )
    models_dir: Path = Field(
        SHIPPED_MODELS_DIR,
        description="directory with one SavedModel per version",
        json_schema_extra={
            SHOWN_DEFAULT: "the shipped models (`models/recommender` in the repository, package data "
            "`flows.models` when installed)"
        },
    )
    console_every: int = Field(
        100,
        ge=0,
        description="print every Nth result per worker on the console (`0`: none); model events always print",
    )
    output_dir: Path | None = Field(
        None,
        description="also write every result as JSON lines (the Avro schema's JSON shape) to `DIR/results-WORKER.jsonl`",
    )

    kafka_bootstrap_servers: str = Field(
        "",
        description="Kafka bootstrap servers (`host:port,...`); set, the flow reads and writes the topics below instead of the embedded generators",
    )
    kafka_data_topic: str = Field("recommender-records", description="topic of Avro `RecommenderRecord`s")
    kafka_models_topic: str = Field(
        "recommender-models",
        description="topic of Avro `ModelDescriptor`s; read from its beginning when there is no recovery state, and the newest model on it serves first",
    )
    kafka_results_topic: str = Field(
        "recommender-results", description="topic of Avro `RecommenderResult`s, keyed by user"
    )
    kafka_dead_letters_topic: str = Field(
        "recommender-dead-letters",
        description="messages that could not be decoded: original key, value and headers, plus `dead-letter.reason`, `.topic`, `.partition`, `.offset` headers",
    )
    kafka_events_topic: str = Field(
        "",
        description="if set, every model event (accepted, rejected, resent, swapped, restored, failed, drift, recovered) also goes to this topic as an Avro `ModelEvent` (`schemas/ModelEvent.avsc`) keyed by model name; the hook for a retraining job (`serving-retrain`). Unset by default: a flow must not wait on a topic nobody created",
    )
    events_signing_key: Path | None = Field(
        None,
        description="path of an Ed25519 private key (PKCS#8 PEM, e.g. from `serving-model-keys --name event-signing`); set, the flow signs every event it writes to the events topic (signer: host/pid, issue time, signature; see `flows/admission/event_signing.py`), and `serving-retrain --trusted-keys` acts only on events signed with it. Unset: events go unsigned, as before, and `serving-retrain` needs `--insecure-accept-unsigned-events`",
    )
    kafka_challenger_topic: str = Field(
        "",
        description="if set, every challenger report (a window of a shadow or canary challenger on one shard, see [docs/challengers.md](challengers.md)) also goes to this topic as an Avro `ChallengerReport` (`schemas/ChallengerReport.avsc`) keyed by challenger name. Unset by default, like the events topic",
    )
    kafka_shadow_results_topic: str = Field(
        "",
        description="if set, a shadow challenger's own results (what it would have answered for the records it scored) go to this topic as Avro `RecommenderResult`s keyed by user, with the same source headers as the results topic, so the two join by data offset into both models' scores per record. Unset, the flow does not even emit them",
    )
    kafka_data_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a flow without recovery state starts on the data topic (`earliest` or `latest`)",
    )
    kafka_poll_size: int = Field(
        1000,
        ge=1,
        description="most messages a data partition reads per poll; a poll travels through the flow as one batch (decoded in one pass, split by shard, scored, encoded and produced together), so the engine's per-item cost is paid per poll",
    )
    kafka_tail: bool = Field(True, description="`false`: stop at the end of the topics (reprocessing, tests)")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description='librdkafka settings for consumers and producers, as JSON, e.g. `{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", ...}`',
    )
    kafka_consumer_config: dict[str, str] = Field(
        default_factory=dict,
        description="extra consumer-only settings, JSON. The flow's consumers start from `queued.min.messages=1000` and `fetch.queue.backoff.ms=10` (`flows/kafka/config.py`: a read-ahead of about one poll per partition instead of librdkafka's 100,000 messages; harmless against Kafka, and against a broker that answers empty fetches at once it keeps consumers of a pre-loaded topic from spinning at the partition's end); settings here override them",
    )
    kafka_producer_config: dict[str, str] = Field(
        default_factory=dict, description="extra producer-only settings, JSON"
    )
    tf_verbose: bool = Field(
        False, description="`true` shows TensorFlow's start-up logging, which is otherwise muted"
    )
    state_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="port of the HTTP `GET /state` endpoint (`0`: off); two processes on one host need two ports",
    )
    state_host: str = Field(
        "127.0.0.1",
        description="address the `/state` endpoint listens on; `0.0.0.0` for every interface (the Kubernetes manifests set it)",
    )

    # Model admission: what a model message may cost before it is refused (see the README's Security model).
    model_load_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds a new model may take from arrival to ready (unpack, inspect, load, probe); past it, rejected",
    )
    model_max_loads: int = Field(
        2,
        ge=1,
        description="model loads (a thread and an unpacking child each) a process runs at once; the others wait in arrival order, their deadline running, and one that a newer message of its role supersedes while it waits is dropped unloaded",
    )
    model_max_bytes: int = Field(
        100 * 1024**2,
        ge=1,
        description="largest inline model archive (100 MiB), refused before unpacking",
    )
    model_max_unpacked_bytes: int = Field(
        256 * 1024**2,
        ge=1,
        description="largest uncompressed archive (256 MiB, tar headers included); also the per-file size limit of the unpacking child",
    )
    model_max_files: int = Field(1_000, ge=1, description="most files and directories in a model archive")
    model_unpack_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds (wall clock, and CPU) the unpacking child may take before it is killed",
    )
    model_unpack_memory: int = Field(
        512 * 1024**2,
        ge=64 * 1024**2,
        description="address-space limit of the unpacking child (512 MiB)",
    )
    model_output_range: str = Field(
        "0,1",
        description="`LOW,HIGH`: a model whose probe scores are not finite or outside is refused; such a score at scoring time makes that record's result an error",
    )
    model_trusted_keys: str = Field(
        "",
        description="Ed25519 public keys (base64, or PEM file paths), comma-separated; set, only descriptors signed by one of them are accepted",
    )
    model_roots: str = Field(
        str(SHIPPED_MODELS_DIR),
        description="directories local model paths must lie under, comma-separated",
        json_schema_extra={SHOWN_DEFAULT: "the shipped models' directory"},
    )
    model_max_name_chars: int = Field(200, ge=1, description="longest model name accepted")
    model_max_description_chars: int = Field(2_000, ge=0, description="longest model description accepted")
    remote_max_timeout: float = Field(
        10.0, gt=0, description="highest `timeout` a model-server location may ask for, seconds"
    )
    remote_max_retries: int = Field(
        3, ge=0, description="highest `retries` a model-server location may ask for"
    )
    # Drift monitoring (see flows.drift).
    drift_reference: int = Field(
        2_000,
        ge=0,
        description="records a model's drift reference is taken from: its first ones (`0`: no drift monitoring); see [Observability](observability.md#drift)",
    )
    drift_window: int = Field(
        2_000, ge=1, description="records per drift window, each compared with the reference"
    )
    drift_threshold: float = Field(
        0.2,
        gt=0,
        description="population stability index of a feature over which a window is `drift`; the first window under it again is `recovered`",
    )
    drift_sample: int = Field(
        250,
        ge=1,
        description="most records of each scored batch the drift monitor reads (the first ones): bounds its cost per batch; a window then counts sampled records",
    )
    # Challenger models (see flows.challenger).
    challenger_window: int = Field(
        1_000,
        ge=1,
        description="challenger records (shadow: compared; canary: answered) per challenger report on each shard; a promote, retire, new challenger or the end of the input closes a partial one",
    )
    challenger_top_k: int = Field(
        5,
        ge=1,
        description="k of a shadow challenger's top-k agreement: the mean share of each record's k best-scored products that both models rank among their k best",
    )
    bytewax_tracing: bool = Field(
        False,
        description="`true` also exports Bytewax's own traces over OTLP (to `OTEL_EXPORTER_OTLP_ENDPOINT`, as `OTEL_SERVICE_NAME`)",
    )

    @property
    def versions(self) -> list[str]:
        return [version.strip() for version in self.model_versions.split(",") if version.strip()]
