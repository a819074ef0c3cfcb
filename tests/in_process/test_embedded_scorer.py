"""The shipped models, the embedded scorer, and descriptors that must be refused."""

from __future__ import annotations

import numpy as np
import pytest
from support.bad_models import bad_models

from flows.adapters.scorers import InputBounds, ModelLoadError, ScorerCache, build_scorer
from flows.adapters.scorers.tensorflow_runtime import tensorflow
from flows.adapters.scorers.tensorflow_saved import SavedModelScorer
from flows.adapters.sources.generators import shipped_model
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR

USERS = np.array([0, 1, 17, 500, 999, 999], np.float32)
PRODUCTS = np.array([0, 299, 42, 150, 7, 8], np.float32)


def tensorflow_predictions(version: str) -> np.ndarray:
    """Scores straight from TensorFlow, without any project code in between."""
    tf = tensorflow()
    signature = tf.saved_model.load(str(SHIPPED_MODELS_DIR / version)).signatures["serving_default"]
    outputs = signature(
        users=tf.constant(USERS.reshape(-1, 1)), products=tf.constant(PRODUCTS.reshape(-1, 1))
    )
    return outputs["predictions"].numpy().reshape(-1)


@pytest.mark.parametrize("version", ["1", "2"])
def test_shipped_model_from_bytes_scores_like_tensorflow(version):
    scorer = build_scorer(shipped_model(SHIPPED_MODELS_DIR, version))
    np.testing.assert_allclose(scorer.score(USERS, PRODUCTS), tensorflow_predictions(version), rtol=1e-6)


@pytest.mark.parametrize("location", ["path", "url"])
def test_shipped_model_from_local_location(location):
    directory = SHIPPED_MODELS_DIR / "1"
    where = str(directory) if location == "path" else directory.as_uri()
    scorer = build_scorer(ModelDescriptor("v1", "", ModelType.TENSORFLOWSAVED, None, where))
    np.testing.assert_allclose(scorer.score(USERS, PRODUCTS), tensorflow_predictions("1"), rtol=1e-6)


def test_versions_score_differently():
    assert np.abs(tensorflow_predictions("1") - tensorflow_predictions("2")).max() > 0.05


def test_bad_models_are_refused_with_name_and_reason(model_v1, tmp_path):
    for descriptor, reason in bad_models(model_v1, tmp_path):
        with pytest.raises(ModelLoadError) as raised:
            build_scorer(descriptor)
        assert raised.value.model_name == descriptor.model_name
        assert reason in str(raised.value), (descriptor.model_name, str(raised.value))
        assert descriptor.model_name in str(raised.value)


def test_unsafe_archive_writes_nothing_outside(model_v1, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for descriptor, _ in bad_models(model_v1, tmp_path):
        if descriptor.model_name.startswith("escape"):
            with pytest.raises(ModelLoadError):
                build_scorer(descriptor)
    assert not (tmp_path.parent / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_cache_loads_a_model_once_and_closes_it_after_the_last_release(model_v1):
    cache = ScorerCache()
    first, first_ms = cache.acquire(model_v1)
    second, second_ms = cache.acquire(model_v1)
    assert first is second and cache.builds == 1 and first_ms > 0 and second_ms == first_ms
    cache.release(model_v1.digest)
    assert cache.loaded() == [model_v1.digest]
    cache.release(model_v1.digest)
    assert cache.loaded() == []


def test_cache_remembers_failures(tmp_path):
    cache = ScorerCache()
    bad = ModelDescriptor("bad", "", ModelType.TENSORFLOWSAVED, b"nope")
    for _ in range(3):
        with pytest.raises(ModelLoadError):
            cache.acquire(bad)
    assert cache.builds == 1 and cache.loaded() == []  # judged once, then refused from memory


def saved_model(directory, products_rows: int | None, users_rows: int | None):
    """A SavedModel whose products table is made before its users table (a table of None rows: that input
    is used as a number, not an index), scoring the sum of the two tables' looked-up values."""
    tf = tensorflow()

    class Model(tf.Module):  # type: ignore[name-defined]  # a base from TensorFlow, imported at run time
        def __init__(self) -> None:
            super().__init__()
            self.products_table = tf.Variable(tf.fill([products_rows or 1, 1], 0.25))
            self.users_table = tf.Variable(tf.fill([users_rows or 1, 1], 0.25))

        def looked_up(self, table, ids, rows):
            return tf.gather(table, tf.cast(ids[:, 0], tf.int32)) if rows else ids * 0.0 + 0.25

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 1], tf.float32, "users"),
                tf.TensorSpec([None, 1], tf.float32, "products"),
            ]
        )
        def serve(self, users, products):
            users_part = self.looked_up(self.users_table, users, users_rows)
            return {"predictions": users_part + self.looked_up(self.products_table, products, products_rows)}

    module = Model()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return SavedModelScorer("traced", directory)


def test_which_table_an_input_indexes_is_traced_in_the_graph_not_taken_from_the_order(tmp_path):
    scorer = saved_model(tmp_path, products_rows=7, users_rows=5)
    assert scorer.input_bounds == InputBounds(users=5, products=7)
    np.testing.assert_allclose(scorer.score(np.array([4.0], np.float32), np.array([6.0], np.float32)), [0.5])


def test_a_model_whose_input_indexes_no_table_has_no_bounds(tmp_path):
    assert saved_model(tmp_path, products_rows=7, users_rows=None).input_bounds is None
