"""A converted tree ensemble fitted to the contract (`serving-onnx-wrap`): the graph `onnxmltools.convert_h2o`
writes for an H2O GBM (a `TreeEnsembleRegressor` over one float tensor [N, 2], answering `variable`), built
here by hand (no JVM in the tests), wrapped, admitted like any ONNX model and answering as its trees say."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from flows.adapters.scorers import build_scorer
from flows.adapters.scorers.archive import pack_file
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.tools import onnx_wrap
from flows.tools.onnx_wrap import WrapError, wrap


def tree_ensemble(base: float = 0.1) -> onnx.ModelProto:
    """Two trees over features [users, products]: users < 500 adds 0.1 else 0.3; products < 150 adds 0.2
    else 0.4; plus `base`."""
    node: dict[str, Any] = {
        "nodes_treeids": [0, 0, 0, 1, 1, 1],
        "nodes_nodeids": [0, 1, 2, 0, 1, 2],
        "nodes_featureids": [0, 0, 0, 1, 0, 0],
        "nodes_modes": ["BRANCH_LT", "LEAF", "LEAF"] * 2,
        "nodes_values": [500.0, 0.0, 0.0, 150.0, 0.0, 0.0],
        "nodes_truenodeids": [1, 0, 0, 1, 0, 0],
        "nodes_falsenodeids": [2, 0, 0, 2, 0, 0],
        "target_treeids": [0, 0, 1, 1],
        "target_nodeids": [1, 2, 1, 2],
        "target_ids": [0, 0, 0, 0],
        "target_weights": [0.1, 0.3, 0.2, 0.4],
        "base_values": [base],
        "n_targets": 1,
        "post_transform": "NONE",
    }
    graph = helper.make_graph(
        [helper.make_node("TreeEnsembleRegressor", ["input"], ["variable"], domain="ai.onnx.ml", **node)],
        "h2o-gbm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8
    )


def expected(users: np.ndarray, products: np.ndarray, base: float = 0.1) -> np.ndarray:
    return base + np.where(users < 500, 0.1, 0.3) + np.where(products < 150, 0.2, 0.4)


def test_a_wrapped_tree_ensemble_is_admitted_and_answers_as_its_trees_say(tmp_path):
    converted, wrapped = tmp_path / "converted.onnx", tmp_path / "model.onnx"
    onnx.save_model(tree_ensemble(), str(converted))
    assert onnx_wrap.main([str(converted), "-o", str(wrapped)]) == 0
    scorer = build_scorer(ModelDescriptor("h2o-gbm", "", ModelType.ONNX, pack_file(wrapped, "model.onnx")))
    rng = np.random.default_rng(3)
    users = rng.integers(0, 1000, 1_000).astype(np.float32)
    products = rng.integers(0, 300, 1_000).astype(np.float32)
    assert np.abs(scorer.score(users, products) - expected(users, products)).max() < 1e-6


def test_the_feature_order_is_the_one_the_model_was_trained_on():
    swapped = wrap(tree_ensemble(), features=("products", "users"))
    session = onnxruntime.InferenceSession(swapped.SerializeToString())
    users, products = np.array([[100.0]], np.float32), np.array([[600.0]], np.float32)
    [answer] = session.run(["predictions"], {"users": users, "products": products})
    # Fed as [products, users]: the first tree splits products 600 (>= 500), the second users 100 (< 150).
    assert answer.item() == pytest.approx(0.1 + 0.3 + 0.2)


def test_a_model_that_cannot_be_fitted_is_refused_naming_why():
    two_inputs = tree_ensemble()
    two_inputs.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [None, 1]))
    with pytest.raises(WrapError, match="one float tensor"):
        wrap(two_inputs)
    with pytest.raises(WrapError, match="each once"):
        wrap(tree_ensemble(), features=("users", "users"))
    with pytest.raises(WrapError, match="the model's outputs are"):
        wrap(tree_ensemble(), output="probabilities")
