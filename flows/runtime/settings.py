"""Every setting of the serving flow: typed sections, read from `SERVING_*` environment variables here only.

Each section lives beside the code it configures (`AdmissionPolicy` in `flows.core.admission.policy`,
`KafkaSettings` in `flows.adapters.kafka.settings`, ...) and carries its fields' defaults and descriptions:
the one source of both. `Settings` composes them, and `Settings.from_environment()`, called by the composition
roots (the main job, the tools' command lines), is the one place the environment is read. A variable is named
SERVING_ + its section's prefix + the field's name (`ENVIRONMENT` below); the names are the ones the flow
always had. The two tables of docs/configuration.md are generated from the sections
(`python -m flows.tools.settings_table --write`; a test checks both are in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.observability.state_server import StateServerSettings
from flows.adapters.sources.generator_settings import GeneratorSettings
from flows.core.admission.policy import AdmissionPolicy
from flows.core.challenger import ChallengerSettings
from flows.core.drift import DriftSettings
from flows.core.errors import ConfigurationError
from flows.core.event_signing import EventSettings
from flows.core.explanations import ExplainSettings
from flows.core.outliers import OutlierSettings
from flows.core.probation import RollbackSettings
from flows.core.sections import Section


class FlowSettings(Section):
    """How the flow spreads, bounds and holds records."""

    shards: int = Field(
        8,
        ge=1,
        description=(
            "shard keys that batches of records (one per source poll) are spread over, in turn; more keys "
            "than workers balances better"
        ),
    )
    max_products: int = Field(
        10_000,
        ge=1,
        description=(
            "most products a record may ask to score; a record with more gets an error result naming the "
            "limit, without its products (a result echoing 10,000 products of any id is under 600 KB, within "
            "Kafka's default 1 MB)"
        ),
    )
    hold_limit: int = Field(
        10_000,
        ge=0,
        description=(
            "records each shard holds while it has no model yet and none is on its way; more get an error "
            "result. While a champion loads, or after a restart until the restored one is back, a shard "
            "holds every record: the data sources wait for a champion (see the next row), so what arrives "
            "meanwhile is bounded by one load"
        ),
    )
    data_wait_for_model: float = Field(
        120.0,
        ge=0,
        description=(
            "seconds a process's data partitions read nothing while none of its shards serves a champion: at "
            'a start or restart with a backlog, records wait on the topic instead of becoming "no model yet" '
            "errors. Past it (no model on the models topic at all, or a process that owns no shard) the "
            "process reads, and the hold limit applies"
        ),
    )

    drain_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "seconds a single process may take to drain after SIGTERM or Ctrl-C; past it (a model call or a "
            "sink that does not return) it exits at once with status 5, and a restart resumes from the last "
            "snapshot"
        ),
    )


class OutputSettings(Section):
    """What the flow prints and exports besides Kafka."""

    console_every: int = Field(
        100,
        ge=0,
        description=(
            "print every Nth result per worker on the console, and every explanation (`0`: neither); model "
            "events always print"
        ),
    )
    output_dir: Path | None = Field(
        None,
        description=(
            "also write every result as JSON lines (the Avro schema's JSON shape) to "
            "`DIR/results-WORKER.jsonl`"
        ),
    )
    tf_verbose: bool = Field(
        False, description="`true` shows TensorFlow's start-up logging, which is otherwise muted"
    )
    bytewax_tracing: bool = Field(
        False,
        description=(
            "`true` also exports Bytewax's own traces over OTLP (to `OTEL_EXPORTER_OTLP_ENDPOINT`, as "
            "`OTEL_SERVICE_NAME`)"
        ),
    )


class Settings(BaseModel):
    """Settings of `python -m bytewax.run flows.serving`, by section; `Settings()` is every default."""

    model_config = ConfigDict(frozen=True)

    flow: FlowSettings = Field(FlowSettings(), title="shards")
    generator: GeneratorSettings = Field(GeneratorSettings(), title="embedded default")
    output: OutputSettings = Field(OutputSettings(), title="output")
    kafka: KafkaSettings = Field(KafkaSettings(), title="Kafka")
    events: EventSettings = Field(EventSettings(), title="model events")
    admission: AdmissionPolicy = Field(AdmissionPolicy(), title="model admission")
    drift: DriftSettings = Field(DriftSettings(), title="drift")
    outliers: OutlierSettings = Field(OutlierSettings(), title="outliers")
    explain: ExplainSettings = Field(ExplainSettings(), title="explanations")
    challenger: ChallengerSettings = Field(ChallengerSettings(), title="challengers")
    rollback: RollbackSettings = Field(RollbackSettings(), title="rollback")
    state: StateServerSettings = Field(StateServerSettings(), title="state endpoint")

    @model_validator(mode="after")
    def _one_record_fits_one_call(self) -> Settings:
        """A record is scored in one call, so the call bound must hold the largest record."""
        if self.admission.max_batch_pairs < self.flow.max_products:
            raise ConfigurationError(
                f"SERVING_MODEL_MAX_BATCH_PAIRS ({self.admission.max_batch_pairs:,}) must be at least "
                f"SERVING_MAX_PRODUCTS ({self.flow.max_products:,}): a record is scored in one call"
            )
        return self

    @model_validator(mode="after")
    def _exactly_once_signs_its_markers(self) -> Settings:
        """Said at start, before a model loads: the exactly-once sink cannot write a marker without a key."""
        kafka = self.kafka
        if (
            kafka.brokers
            and kafka.exactly_once
            and kafka.marker_key is None
            and self.events.signing_key is None
        ):
            raise ConfigurationError(
                "SERVING_KAFKA_DELIVERY=exactly-once signs its answered markers: set "
                "SERVING_KAFKA_MARKER_KEY (a secret of 16 bytes or more, the same for every process) or "
                "SERVING_EVENTS_SIGNING_KEY"
            )
        return self

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings this process's `SERVING_*` variables give, or ValueError naming each variable that
        does not hold what its setting takes."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for path, prefix in ENVIRONMENT.items():
            section = section_model(path)
            read, wrong = _read_section(section, prefix)
            problems += wrong
            target = values
            for name in path[:-1]:
                target = target.setdefault(name, {})
            target.setdefault(path[-1], {}).update(read)
        if problems:
            raise ConfigurationError("settings: " + "; ".join(problems))
        return cls.model_validate(values)


# Where each section's variables come from: SERVING_ + prefix + FIELD (upper case).
ENVIRONMENT: dict[tuple[str, ...], str] = {
    ("flow",): "SERVING_",
    ("generator",): "SERVING_",
    ("output",): "SERVING_",
    ("kafka",): "SERVING_KAFKA_",
    ("events",): "SERVING_EVENTS_",
    ("admission",): "SERVING_MODEL_",
    ("admission", "remote"): "SERVING_REMOTE_",
    ("drift",): "SERVING_DRIFT_",
    ("outliers",): "SERVING_OUTLIER_",
    ("explain",): "SERVING_EXPLAIN_",
    ("challenger",): "SERVING_CHALLENGER_",
    ("rollback",): "SERVING_ROLLBACK_",
    ("state",): "SERVING_STATE_",
}


class Variable(NamedTuple):
    """One environment variable the settings read, and the field it sets."""

    name: str
    path: tuple[str, ...]  # the section's place in `Settings`, e.g. ("admission", "remote")
    section: type[Section]
    field: str


def variables() -> dict[str, Variable]:
    """Every variable the settings read, by name, in `ENVIRONMENT`'s order."""
    found: dict[str, Variable] = {}
    for path, prefix in ENVIRONMENT.items():
        section = section_model(path)
        for field in _leaf_fields(section):
            name = f"{prefix}{field.upper()}"
            found[name] = Variable(name, path, section, field)
    return found


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """`SERVING_*` variables of `environ` that no setting reads: a misspelt name would otherwise do nothing.
    (`SERVING_TEST_*` are the test suite's own.)"""
    environ = os.environ if environ is None else environ
    known = variables()
    return sorted(
        name
        for name in environ
        if name.startswith("SERVING_") and not name.startswith("SERVING_TEST_") and name not in known
    )


def section_model(path: tuple[str, ...]) -> type[Section]:
    """The section model at `path` in `Settings`."""
    model: type[BaseModel] = Settings
    for name in path:
        model = model.model_fields[name].annotation  # type: ignore[assignment]
    return model  # type: ignore[return-value]


def _leaf_fields(section: type[Section]) -> list[str]:
    """The section's own settings: its fields that are not sections of their own."""
    return [
        name
        for name, field in section.model_fields.items()
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, Section))
    ]


def _read_section(section: type[Section], prefix: str) -> tuple[dict[str, Any], list[str]]:
    """The fields of `section` that the environment sets (read by pydantic-settings: JSON for dicts, the
    section's own parsing for comma-separated lists), and what was wrong, by variable."""
    given = {name for name in _leaf_fields(section) if f"{prefix}{name.upper()}" in os.environ}
    if not given:
        return {}, []
    reader = type(
        f"{section.__name__}FromEnvironment",
        (BaseSettings, section),
        {"model_config": SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)},
    )
    try:
        read = reader()
    except ValidationError as error:
        return {}, [
            f"{prefix}{str(problem['loc'][0]).upper()}: {problem['msg']}" for problem in error.errors()
        ]
    return {name: getattr(read, name) for name in given}, []
