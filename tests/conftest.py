"""Fixtures: the shipped models as descriptors (TensorFlow imported once, by the tests that use a model), a
broker for the session; and the markers that let a developer run one layer of the suite.

Markers, set here from what a test uses: `kafka` (it needs the session's broker), `servers` (it starts model
servers), `k8s` (the Kubernetes manifests), `slow` (it runs the main job, a tool or the benchmark as a
process). The fast unit layer: `python -m pytest -m "not kafka and not servers and not k8s and not slow"`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from support.jobs import reap_started_jobs

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.adapters.sources.generators import shipped_model
from flows.core.descriptors import ModelDescriptor
from flows.core.shipped import SHIPPED_MODELS_DIR

# Modules whose tests run the main job, a tool or the benchmark as a process of its own.
PROCESS_MODULES = {
    "test_exactly_once",
    "test_admission_kafka", "test_backlog", "test_bench", "test_challenger_kafka", "test_kafka",
    "test_main_job", "test_no_crash_loop", "test_package", "test_retraining", "test_shutdown",
    "test_signed_lifecycle_kafka", "test_layers", "test_onnx_kafka", "test_preflight",
}  # fmt: skip
SERVER_MODULES = {"test_remote_scorers"}
# Modules that check the Kubernetes manifests and what they deploy (the Grafana dashboard).
K8S_MODULES = {"test_k8s", "test_grafana_dashboard"}
# Modules that never load a model: they run without TensorFlow (a check in this file's test keeps it true).
WITHOUT_TENSORFLOW = {
    "test_answered_offsets", "test_cluster", "test_code_checks", "test_exactly_once_producer", "test_avro",
    "test_event_signing", "test_generators", "test_json_lines_sink", "test_kafka_sink",
    "test_locations_and_endpoints", "test_readme", "test_record_polls", "test_retrain_gate",
    "test_vocabulary",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The code checks first: a finding there fails fast, before the minutes of the rest.
    items.sort(key=lambda item: item.path.stem != "test_code_checks")
    for item in items:
        test = cast(pytest.Function, item)  # every item collected here is a test function
        module = test.module.__name__.rsplit(".", 1)[-1]
        fixtures = getattr(item, "fixturenames", ())
        if "kafka_bootstrap" in fixtures:
            item.add_marker(pytest.mark.kafka)
        if module in SERVER_MODULES:
            item.add_marker(pytest.mark.servers)
        if module in K8S_MODULES:
            item.add_marker(pytest.mark.k8s)
        if module in PROCESS_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test() -> Iterator[None]:
    """Every job a test started (`support.jobs.start_job`) is ended after it, passed or failed."""
    yield
    reap_started_jobs()


@pytest.fixture(scope="session")
def tensorflow_imported():
    """Import TensorFlow once, in the main thread, before a test loads a model: a model load inside a flow
    then takes milliseconds, not seconds, and TensorFlow is never first imported on a loader thread."""
    return tensorflow()


@pytest.fixture(autouse=True)
def _tensorflow_unless_not_needed(request: pytest.FixtureRequest) -> None:
    """Every module but those that never load a model gets TensorFlow imported first."""
    if request.module.__name__.rsplit(".", 1)[-1] not in WITHOUT_TENSORFLOW:
        request.getfixturevalue("tensorflow_imported")


@pytest.fixture(scope="session")
def model_v1() -> ModelDescriptor:
    return shipped_model(SHIPPED_MODELS_DIR, "1")


@pytest.fixture(scope="session")
def model_v2() -> ModelDescriptor:
    return shipped_model(SHIPPED_MODELS_DIR, "2")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap servers of a broker for the whole session (`flows.testing.local_broker`: noida-db on
    loopback)."""
    from flows.testing.local_broker import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap
