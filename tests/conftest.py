"""Fixtures: the shipped models as descriptors (TensorFlow imported once, by the tests that use a model), a
broker for the session; and the markers that let a developer run one layer of the suite.

The suite mirrors the code: `core/`, `wire/`, `adapters/…/`, `runtime/` and `tools/` hold the unit tests of
each layer (no broker, no model server, no real-time schedule). `in_process/` runs the layers together in this
process (Bytewax flows on scheduled inputs, model trials, servers on loopback), `jobs/` runs the main job, the
tools and the benchmark as processes, `k8s/` checks the manifests and `project/` the code, the README and the
package. Each test gets the marker of its directory (`unit` for the layers, else the directory's name) here
and nowhere else, and `kafka` (it uses the session's broker) or `servers` (it starts model servers) from the
fixtures it uses. While editing: `python -m pytest -m unit` (under a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.jobs import reap_started_jobs

from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.adapters.sources.generators import shipped_model
from flows.core.descriptors import ModelDescriptor
from flows.core.shipped import SHIPPED_MODELS_DIR

TESTS = Path(__file__).parent
LAYERS = {"core", "wire", "adapters", "runtime", "tools"}  # the unit layer: one directory per code layer
# Fixtures that start something a test layer needs: the marker each gives its tests.
MARKING_FIXTURES = {"kafka_bootstrap": "kafka", "servers": "servers"}
# Modules that never load a model: they run without TensorFlow (a check in this file's test keeps it true).
WITHOUT_TENSORFLOW = {
    "test_answered_offsets", "test_avro", "test_cluster", "test_code_checks", "test_console_sink",
    "test_event_signing", "test_exactly_once_producer", "test_explanations", "test_generators",
    "test_json_lines_sink", "test_kafka_sink", "test_load_deadline", "test_locations_and_endpoints",
    "test_model_types", "test_outliers", "test_pacing", "test_pmml_guard", "test_readme", "test_record_polls",
    "test_retrain_gate", "test_tensorflow_import", "test_unserved_formats", "test_vocabulary",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The code checks first: a finding there fails fast, before the minutes of the rest.
    items.sort(key=lambda item: item.path.stem != "test_code_checks")
    for item in items:
        layer = layer_marker(item.path)
        item.add_marker(layer)
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in MARKING_FIXTURES:
                if layer == "unit":
                    raise pytest.UsageError(
                        f"{item.nodeid}: a unit test uses `{fixture}`; it belongs in in_process/ or jobs/"
                    )
                item.add_marker(MARKING_FIXTURES[fixture])


def layer_marker(path: Path) -> str:
    """`unit` for a test under a layer's directory, else the name of its directory under tests/."""
    top = path.relative_to(TESTS).parts[0]
    return "unit" if top in LAYERS else top


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
