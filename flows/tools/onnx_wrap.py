"""Fit a converted model to the contract: `serving-onnx-wrap converted.onnx -o model.onnx`.

Converters write the model they are given, not this flow's contract: `onnxmltools.convert_h2o` turns an H2O
MOJO (GBM, DRF) into a `TreeEnsembleRegressor` that takes one float tensor `[N, features]` and answers
`[N, 1]` under names of its own; skl2onnx and others do the same for scikit-learn pipelines. The wrapper is
one graph around it: `users` and `products` (float `[N, 1]`, the contract's inputs) concatenated into the
model's input, in the order of `--features` (default `users,products`: the order the model was trained on),
and its output reshaped to `predictions` `[N, 1]` float. The model's names are prefixed with `inner_`, its
opsets kept (the default domain and `ai.onnx.ml`); the wrapper adds only `Concat`, `Cast` and `Reshape`, so
the result is admitted like any ONNX model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flows.core.admission.onnx_graph import CONTRACT_INPUTS, CONTRACT_OUTPUT
from flows.core.errors import ServingError

PREFIX = "inner_"
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


class WrapError(ServingError, ValueError):
    """The model cannot be fitted to the contract; the message says why."""


def wrap(
    model: onnx.ModelProto, features: Sequence[str] = CONTRACT_INPUTS, output: str | None = None
) -> onnx.ModelProto:
    """The contract's graph around `model` (see the module docstring); `output` names the model's output
    to answer with when it has several."""
    if sorted(features) != sorted(CONTRACT_INPUTS):
        raise WrapError(f"--features {list(features)}: the order of {list(CONTRACT_INPUTS)}, each once")
    initialized = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initialized]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in FLOAT_TYPES:
        raise WrapError(
            f"the model takes {[value.name for value in inputs]}: one float tensor [N, features] is wrapped"
        )
    [source] = inputs
    answer = _answer(model, output)
    inner = onnx.compose.add_prefix(model, PREFIX)
    column = numpy_helper.from_array(np.array([-1, 1], np.int64), "wrap_column")
    nodes = [
        helper.make_node("Concat", list(features), ["wrap_features"], axis=1),
        helper.make_node(
            "Cast", ["wrap_features"], [PREFIX + source.name], to=source.type.tensor_type.elem_type
        ),
        *inner.graph.node,
        helper.make_node("Cast", [PREFIX + answer], ["wrap_answer"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["wrap_answer", "wrap_column"], [CONTRACT_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        f"wrapped-{model.graph.name}"[:200],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1]) for name in CONTRACT_INPUTS],
        [helper.make_tensor_value_info(CONTRACT_OUTPUT, TensorProto.FLOAT, ["N", 1])],
        [*inner.graph.initializer, column],
    )
    wrapped = helper.make_model(
        graph,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        producer_name="serving-onnx-wrap",
    )
    onnx.checker.check_model(wrapped)
    return wrapped


def _answer(model: onnx.ModelProto, output: str | None) -> str:
    names = [value.name for value in model.graph.output]
    if output is not None:
        if output not in names:
            raise WrapError(f"--output {output!r}: the model's outputs are {names}")
        return output
    if len(names) != 1:
        raise WrapError(f"the model has outputs {names}: name the one to answer with (--output)")
    return names[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving-onnx-wrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the converted ONNX model")
    parser.add_argument(
        "-o", "--output-file", type=Path, required=True, help="where to write the wrapped model"
    )
    parser.add_argument("--features", default=",".join(CONTRACT_INPUTS), help="the model's feature order")
    parser.add_argument("--output", help="the model's output to answer with, when it has several")
    args = parser.parse_args(argv)
    try:
        wrapped = wrap(onnx.load_model(str(args.model)), args.features.split(","), args.output)
    except (WrapError, OSError, onnx.checker.ValidationError) as error:
        print(f"serving-onnx-wrap: {error}", file=sys.stderr)
        return 2
    onnx.save_model(wrapped, str(args.output_file))
    print(f"wrote {args.output_file}: users, products -> {args.model.name} -> predictions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
