"""Settings: typed sections read from the environment in one place, under the names the flow always had."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.jobs import REPO

from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelType
from flows.runtime.settings import Settings, unknown_variables, variables

# Every variable of release 0.1.0 (a flat class of fields then): sections must not rename one.
NAMES_BEFORE_SECTIONS = [
    "SHARDS",
    "MAX_PRODUCTS",
    "HOLD_LIMIT",
    "DATA_WAIT_FOR_MODEL",
    "DRAIN_TIMEOUT",
    "RECORDS",
    "RECORD_RATE",
    "GENERATOR_PARTITIONS",
    "GENERATOR_BATCH",
    "SEED",
    "DATA_SHIFT_AFTER",
    "MODEL_INTERVAL",
    "MODEL_VERSIONS",
    "MODELS_DIR",
    "CONSOLE_EVERY",
    "OUTPUT_DIR",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_DATA_TOPIC",
    "KAFKA_MODELS_TOPIC",
    "KAFKA_RESULTS_TOPIC",
    "KAFKA_DEAD_LETTERS_TOPIC",
    "KAFKA_EVENTS_TOPIC",
    "EVENTS_SIGNING_KEY",
    "KAFKA_CHALLENGER_TOPIC",
    "KAFKA_SHADOW_RESULTS_TOPIC",
    "KAFKA_DATA_START",
    "KAFKA_POLL_SIZE",
    "KAFKA_TAIL",
    "KAFKA_CONFIG",
    "KAFKA_CONSUMER_CONFIG",
    "KAFKA_PRODUCER_CONFIG",
    "TF_VERBOSE",
    "STATE_PORT",
    "STATE_HOST",
    "MODEL_LOAD_TIMEOUT",
    "MODEL_MAX_LOADS",
    "MODEL_MAX_BYTES",
    "MODEL_MAX_UNPACKED_BYTES",
    "MODEL_MAX_FILES",
    "MODEL_UNPACK_TIMEOUT",
    "MODEL_UNPACK_MEMORY",
    "MODEL_MAX_BATCH_PAIRS",
    "MODEL_MAX_CALL_SECONDS",
    "MODEL_OUTPUT_RANGE",
    "MODEL_TRUSTED_KEYS",
    "MODEL_ROOTS",
    "MODEL_MAX_NAME_CHARS",
    "MODEL_MAX_DESCRIPTION_CHARS",
    "REMOTE_MAX_TIMEOUT",
    "REMOTE_MAX_RETRIES",
    "DRIFT_REFERENCE",
    "DRIFT_WINDOW",
    "DRIFT_THRESHOLD",
    "DRIFT_SAMPLE",
    "CHALLENGER_WINDOW",
    "CHALLENGER_TOP_K",
    "BYTEWAX_TRACING",
]
# Added since, each with the issue that brought it.
NAMES_ADDED = [
    "KAFKA_DELIVERY",  # 21: exactly-once results
    "KAFKA_MARKER_KEY",  # 30: signed markers
    "KAFKA_ANSWERED_WAIT",
    "KAFKA_ANSWERED_TOPIC",
    "KAFKA_TRANSACTIONAL_ID",
    "KAFKA_COMMIT_INTERVAL",  # 34: exactly-once commits between snapshots
    "MODEL_TYPES",  # 35: the model types a deployment serves
    "STATE_PEERS",  # 24: the live page's merged cluster
    "STATE_ALLOWED_HOSTS",  # 30: Host header allow-list
    "ROLLBACK_RECORDS",  # 30: a new champion rolled back in service
    "ROLLBACK_ERROR_RATE",
    "ROLLBACK_SLOW_FACTOR",
    "MODEL_TF_IMPORT_TIMEOUT",  # a SavedModel's trial in the admission child
    "MODEL_TRIAL_MEMORY",
    "OUTLIER_REFERENCE",  # 33: outlier scores
    "OUTLIER_CONTAMINATION",
    "OUTLIER_WINDOW",
    "OUTLIER_THRESHOLD",
    "GENERATOR_EXPLAIN_EVERY",  # 33: explanations
    "EXPLAIN_FRACTION",
    "EXPLAIN_REQUESTS",
    "EXPLAIN_PRODUCTS",
    "EXPLAIN_PER_BATCH",
    "EXPLAIN_BACKGROUND",
    "EXPLAIN_NEIGHBOURS",
    "KAFKA_EXPLANATIONS_TOPIC",
]


def test_the_variable_names_are_the_ones_the_flow_always_had():
    assert set(variables()) == {f"SERVING_{name}" for name in NAMES_BEFORE_SECTIONS + NAMES_ADDED}


def test_each_section_reads_its_variables_typed(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVING_SHARDS", "3")
    monkeypatch.setenv("SERVING_MODEL_ROOTS", f" {tmp_path} , /srv/models ,")
    monkeypatch.setenv("SERVING_MODEL_OUTPUT_RANGE", "-1,1")
    monkeypatch.setenv("SERVING_REMOTE_MAX_RETRIES", "1")
    monkeypatch.setenv("SERVING_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL"}')
    monkeypatch.setenv("SERVING_MODEL_VERSIONS", "1, 2:canary:0.5")
    monkeypatch.setenv("SERVING_DRIFT_REFERENCE", "0")
    monkeypatch.setenv("SERVING_MODEL_TYPES", "onnx,PMML")
    settings = Settings.from_environment()
    assert settings.admission.types == (ModelType.ONNX, ModelType.PMML)
    assert settings.flow.shards == 3
    assert settings.admission.roots == (tmp_path, Path("/srv/models"))
    assert (settings.admission.output_low, settings.admission.output_high) == (-1.0, 1.0)
    assert settings.admission.remote.max_retries == 1
    assert settings.kafka.config == {"security.protocol": "SASL_SSL"}
    assert settings.generator.model_versions == ("1", "2:canary:0.5")
    assert not settings.drift.enabled
    # What is not set keeps the section's own default: one source of it.
    assert settings.admission.max_bytes == AdmissionPolicy().max_bytes
    assert settings.challenger == Settings().challenger


def test_a_value_a_setting_cannot_take_names_the_variable(monkeypatch):
    monkeypatch.setenv("SERVING_SHARDS", "0")
    monkeypatch.setenv("SERVING_MODEL_OUTPUT_RANGE", "1")
    monkeypatch.setenv("SERVING_KAFKA_DATA_START", "middle")
    with pytest.raises(ValueError) as error:
        Settings.from_environment()
    for name in ("SERVING_SHARDS", "SERVING_MODEL_OUTPUT_RANGE", "SERVING_KAFKA_DATA_START"):
        assert name in str(error.value)


def test_a_misspelt_variable_is_named():
    environ = {"SERVING_SHARD": "2", "SERVING_SHARDS": "2", "SERVING_TEST_KAFKA_BOOTSTRAP": "x", "HOME": "/"}
    assert unknown_variables(environ) == ["SERVING_SHARD"]


def test_defaults_read_no_environment(monkeypatch):
    monkeypatch.setenv("SERVING_SHARDS", "5")
    assert Settings().flow.shards == 8
    assert Settings.from_environment().flow.shards == 5


# Only the runtime reads the environment: the settings, the main job and what it starts at process level
# (OpenTelemetry's own OTEL_* variables, Bytewax's process addresses). Tools, benchmarks and test helpers
# are roots of their own processes.
RUNTIME = ("flows/runtime/", "flows/serving.py")
TENSORFLOW_LOG_LEVEL = "flows/core/admission/tensorflow_import.py"  # sets TF's log level before importing it


def test_only_the_runtime_reads_the_environment():
    readers = set()
    for path in (REPO / "flows").rglob("*.py"):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(("flows/tools/", "flows/bench/", "flows/testing/", *RUNTIME)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.add(relative)
    assert readers <= {TENSORFLOW_LOG_LEVEL}, readers


def test_the_call_bound_must_hold_the_largest_record(monkeypatch):
    monkeypatch.setenv("SERVING_MAX_PRODUCTS", "60000")
    with pytest.raises(ValueError, match=r"SERVING_MODEL_MAX_BATCH_PAIRS \(50,000\) must be at least"):
        Settings.from_environment()
    monkeypatch.setenv("SERVING_MODEL_MAX_BATCH_PAIRS", "60000")
    assert Settings.from_environment().admission.max_batch_pairs == 60_000
