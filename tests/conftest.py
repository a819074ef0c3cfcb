"""Fixtures: TensorFlow imported once, the shipped models as descriptors, a broker for the session."""

from __future__ import annotations

import pytest

from flows.records import ModelDescriptor
from flows.settings import SHIPPED_MODELS_DIR
from flows.sources.generators import shipped_model
from flows.tensorflow_runtime import tensorflow


@pytest.fixture(scope="session", autouse=True)
def tensorflow_imported():
    """Import TensorFlow once up front, so model loads inside timed flows take milliseconds, not seconds."""
    return tensorflow()


@pytest.fixture(scope="session")
def model_v1() -> ModelDescriptor:
    return shipped_model(SHIPPED_MODELS_DIR, "1")


@pytest.fixture(scope="session")
def model_v2() -> ModelDescriptor:
    return shipped_model(SHIPPED_MODELS_DIR, "2")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap servers of a broker for the whole session (`flows.testing.local_broker`: noida-db on loopback)."""
    from flows.testing.local_broker import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap
