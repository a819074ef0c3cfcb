"""Every setting of the serving flow, read from `SERVING_*` environment variables.

The README's configuration table lists the same settings; keep the two in step.
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


class Settings(BaseSettings):
    """Settings of `python -m bytewax.run flows.serving` (environment variable = SERVING_ + name)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    shards: int = Field(
        8, ge=1, description="Shard keys batches of records (one per source poll) are spread over, in turn."
    )
    max_products: int = Field(
        10_000,
        ge=1,
        description="Most products a record may ask to score; more get an error result (keeps a result under ~1 MB).",
    )
    hold_limit: int = Field(
        10_000, ge=0, description="Records a shard holds while it has no model yet; more get an error result."
    )
    data_wait_for_model: float = Field(
        120.0,
        ge=0,
        description="Seconds a process waits for a champion before it reads data anyway (back-pressure at start-up: a backlog waits on the topic instead of filling the hold buffers).",
    )
    records: int = Field(
        0, ge=0, description="Records the data generator produces, then stops (0: unbounded)."
    )
    record_rate: float = Field(
        333.0, ge=0, description="Records per second from the data generator (0: as fast as possible)."
    )
    generator_partitions: int = Field(
        1, ge=1, description="Data generator partitions (workers that generate)."
    )
    generator_batch: int = Field(500, ge=1, description="Most records one generator partition emits at once.")
    seed: int = Field(42, description="Seed of the data generator: the same seed gives the same records.")
    data_shift_after: int = Field(
        10_000,
        ge=0,
        description="Generated records (per partition) after which the data drifts for as many again (0: never).",
    )
    model_interval: float = Field(
        10.0, gt=0, description="Seconds between model updates from the model generator."
    )
    model_versions: str = Field(
        "1,2:shadow,promote:2,1:canary:0.25,retire:1",
        description="The model generator's schedule, one entry per interval, in turn: VERSION (a shipped model as champion), VERSION:shadow|canary[:FRACTION] (as challenger), promote:VERSION, retire:VERSION.",
    )
    models_dir: Path = Field(SHIPPED_MODELS_DIR, description="Directory holding one SavedModel per version.")
    console_every: int = Field(
        100, ge=0, description="Print every Nth result on the console (0: none); model events always print."
    )
    output_dir: Path | None = Field(
        None, description="If set, also write every result as JSON lines, one file per worker, into it."
    )

    kafka_bootstrap_servers: str = Field(
        "",
        description="Kafka bootstrap servers (host:port,...). Set: read and write Kafka; unset: embedded default.",
    )
    kafka_data_topic: str = Field("recommender-records", description="Topic of RecommenderRecords to score.")
    kafka_models_topic: str = Field("recommender-models", description="Topic of ModelDescriptors.")
    kafka_results_topic: str = Field("recommender-results", description="Topic the RecommenderResults go to.")
    kafka_dead_letters_topic: str = Field(
        "recommender-dead-letters",
        description="Topic of messages that could not be decoded, with the reason.",
    )
    kafka_events_topic: str = Field(
        "",
        description="If set, model events (accepted, rejected, drift, recovered, ...) also go to this topic, Avro `ModelEvent`s keyed by model name.",
    )
    events_signing_key: Path | None = Field(
        None,
        description="Ed25519 private key (PKCS#8 PEM file) the flow signs the events it writes to SERVING_KAFKA_EVENTS_TOPIC with, so that serving-retrain --trusted-keys acts on the flow's events only (unset: unsigned).",
    )
    kafka_challenger_topic: str = Field(
        "",
        description="If set, challenger reports (shadow and canary comparisons per window) also go to this topic, Avro `ChallengerReport`s keyed by challenger name.",
    )
    kafka_shadow_results_topic: str = Field(
        "",
        description="If set, a shadow challenger's results (what it would have answered) also go to this topic, Avro `RecommenderResult`s with the results topic's headers, to join with the champion's by data offset.",
    )
    kafka_data_start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a flow without recovery state starts reading the data topic."
    )
    kafka_poll_size: int = Field(
        1000,
        ge=1,
        description="Most messages a data partition reads per poll; a poll travels the flow as one batch.",
    )
    kafka_tail: bool = Field(
        True, description="Keep waiting for messages; false: stop at the end of the topics."
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka settings for consumers and producers, as JSON (TLS, SASL).",
    )
    kafka_consumer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra consumer settings, JSON."
    )
    kafka_producer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra producer settings, JSON."
    )
    tf_verbose: bool = Field(False, description="Show TensorFlow's start-up logging, otherwise muted.")
    state_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="Port of the HTTP `GET /state` endpoint (0: off). Each process needs its own.",
    )
    state_host: str = Field(
        "127.0.0.1",
        description="Address the /state endpoint listens on (0.0.0.0: every interface, as in Kubernetes).",
    )

    # Model admission: what a model message may cost before it is refused (see the README's Security model).
    model_load_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a new model may take from arrival to ready (unpack, check, load, probe).",
    )
    model_max_loads: int = Field(
        2,
        ge=1,
        description="Most model loads a process runs at once; the others wait their turn (a waiting model that a newer one of its role supersedes is never loaded).",
    )
    model_max_bytes: int = Field(
        100 * 1024**2,
        ge=1,
        description="Largest inline model archive accepted, bytes (refused before unpacking).",
    )
    model_max_unpacked_bytes: int = Field(
        256 * 1024**2, ge=1, description="Largest uncompressed archive (tar stream, headers included), bytes."
    )
    model_max_files: int = Field(1_000, ge=1, description="Most files and directories in a model archive.")
    model_unpack_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds the unpacking child process may run (wall clock and CPU) before it is killed.",
    )
    model_unpack_memory: int = Field(
        512 * 1024**2,
        ge=64 * 1024**2,
        description="Address-space limit of the unpacking child process, bytes.",
    )
    model_output_range: str = Field(
        "0,1",
        description="LOW,HIGH: scores outside it (or not finite) refuse a model and mark a result as an error.",
    )
    model_trusted_keys: str = Field(
        "",
        description="Ed25519 public keys (base64 or PEM file paths, comma-separated); set: only signed models are accepted.",
    )
    model_roots: str = Field(
        str(SHIPPED_MODELS_DIR),
        description="Directories local model paths must lie under (comma-separated); other paths are refused.",
    )
    model_max_name_chars: int = Field(200, ge=1, description="Longest model name accepted.")
    model_max_description_chars: int = Field(2_000, ge=0, description="Longest model description accepted.")
    remote_max_timeout: float = Field(
        10.0, gt=0, description="Highest per-request `timeout` a model-server location may ask for, seconds."
    )
    remote_max_retries: int = Field(
        3, ge=0, description="Highest `retries` a model-server location may ask for."
    )
    # Drift monitoring (see flows.drift).
    drift_reference: int = Field(
        2_000,
        ge=0,
        description="Records a model's drift reference is taken from (its first ones); 0: no drift monitoring.",
    )
    drift_window: int = Field(
        2_000, ge=1, description="Records per drift window, compared with the reference."
    )
    drift_threshold: float = Field(
        0.2,
        gt=0,
        description="Population stability index over which a window is `drift` (under it again: `recovered`).",
    )
    drift_sample: int = Field(
        250, ge=1, description="Most records of each scored batch the drift monitor reads (the first ones)."
    )
    # Challenger models (see flows.challenger).
    challenger_window: int = Field(
        1_000, ge=1, description="Challenger records per challenger report, on each shard."
    )
    challenger_top_k: int = Field(
        5, ge=1, description="k of a shadow challenger's top-k agreement with the champion."
    )
    bytewax_tracing: bool = Field(
        False,
        description="Also export Bytewax's own traces over OTLP, to OTEL_EXPORTER_OTLP_ENDPOINT as OTEL_SERVICE_NAME.",
    )

    @property
    def versions(self) -> list[str]:
        return [version.strip() for version in self.model_versions.split(",") if version.strip()]
