"""The recommender network written as an ONNX graph, from its trained weights.

The graph is written with the `onnx` package's helpers rather than converted by tf2onnx: the network is
six tensors and seven ops, and `onnx` is already a dependency (admission checks ONNX models with it), where
a converter would pull in its own pinned TensorFlow and protobuf ranges. The same weights give the same
scores as the SavedModel within float32 rounding (`tests/in_process/test_onnx_scorer.py` holds it to 1e-5).

Weights, in the order `keras.Model.weights` lists them (and the SavedModel's checkpoint numbers them):
user embedding [USERS, E], product embedding [PRODUCTS, E], hidden kernel [2E, H], hidden bias [H],
output kernel [H, 1], output bias [1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flows.core.errors import ServingError

OPSET = 17  # supported by every ONNX Runtime since 1.13
IR_VERSION = 8
FILE_NAME = "model.onnx"
WEIGHT_NAMES = (
    "user_embedding",
    "product_embedding",
    "hidden_kernel",
    "hidden_bias",
    "output_kernel",
    "output_bias",
)


def recommender_graph(weights: Sequence[np.ndarray], name: str = "recommender") -> onnx.ModelProto:
    """The network as an ONNX model: float32 `users` and `products` of [N, 1] in, `predictions` [N, 1] out.

    Ids are cast to int64 by truncation, as Keras' Embedding casts float ids, then gathered.
    """
    if len(weights) != len(WEIGHT_NAMES):
        raise ServingError(
            f"expected {len(WEIGHT_NAMES)} weight tensors ({', '.join(WEIGHT_NAMES)}), got {len(weights)}"
        )
    initializers = [
        numpy_helper.from_array(np.asarray(value, dtype=np.float32), weight_name)
        for weight_name, value in zip(WEIGHT_NAMES, weights, strict=True)
    ]
    nodes = []
    for side, embedding in (("users", "user_embedding"), ("products", "product_embedding")):
        nodes += [
            helper.make_node("Cast", [side], [f"{side}_ids"], to=TensorProto.INT64),
            helper.make_node("Gather", [embedding, f"{side}_ids"], [f"{side}_vectors"], axis=0),
            helper.make_node("Flatten", [f"{side}_vectors"], [f"{side}_flat"], axis=1),
        ]
    nodes += [
        helper.make_node("Concat", ["users_flat", "products_flat"], ["joined"], axis=1),
        helper.make_node("Gemm", ["joined", "hidden_kernel", "hidden_bias"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "output_kernel", "output_bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[
            helper.make_tensor_value_info(side, TensorProto.FLOAT, ["N", 1]) for side in ("users", "products")
        ],
        outputs=[helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["N", 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="serving-train-model"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def saved_model_weights(directory: Path) -> list[np.ndarray]:
    """The six weights of a recommender SavedModel written by `serving-train-model`, read from its
    checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(directory / "variables" / "variables"))
    return [
        reader.get_tensor(f"weights/{index}/.ATTRIBUTES/VARIABLE_VALUE") for index in range(len(WEIGHT_NAMES))
    ]


def write_onnx(weights: Sequence[np.ndarray], directory: Path, name: str = "recommender") -> Path:
    """Write `directory/model.onnx` (the directory is created); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    onnx.save(recommender_graph(weights, name), str(path))
    return path
