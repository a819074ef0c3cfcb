"""Ensembles as one model: `serving-onnx-ensemble A.onnx B.onnx ... -o ensemble.onnx [--weights 1,3]`.

The members are ONNX models of the contract (`users`, `products` in, `predictions` out); the ensemble is one
ONNX graph that feeds both inputs to every member and answers their weighted mean (the plain mean without
`--weights`). This is the ensemble node of Seldon's and KServe's inference graphs, inside the flow: one
model to publish, admit and swap, and one call per micro-batch instead of one per member (ONNX Runtime runs
the members' ops in one session). The result is admitted like any ONNX model (`flows.core.admission`): the
composition adds only `Identity`, `Reshape`, `Mul` and `Sum`.

Each member's names are prefixed with `memberN_` (`onnx.compose.add_prefix`), so two copies of one model
compose too. Members must declare the same input types and import the same opset of the default domain
(a model is not silently moved to another opset: converting it can change what an op computes).
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


class EnsembleError(ServingError, ValueError):
    """The members cannot be composed; the message names the member and why."""


def compose(members: Sequence[onnx.ModelProto], weights: Sequence[float] | None = None) -> onnx.ModelProto:
    """One model answering the weighted mean of the members' `predictions` (see the module docstring)."""
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs two members or more, not {len(members)}")
    weights = list(weights) if weights is not None else [1.0] * len(members)
    if len(weights) != len(members) or any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise EnsembleError(f"weights {weights}: one non-negative weight per member, not all zero")
    opset = _common_opset(members)
    inputs = _contract_inputs(members)
    nodes: list[onnx.NodeProto] = []
    initializers = [numpy_helper.from_array(np.array([-1, 1], np.int64), "ensemble_column")]
    weighted = []
    for index, (member, weight) in enumerate(zip(members, weights)):
        prefix = f"member{index}_"
        prefixed = onnx.compose.add_prefix(member, prefix)
        nodes += [helper.make_node("Identity", [name], [prefix + name]) for name in CONTRACT_INPUTS]
        nodes += list(prefixed.graph.node)
        initializers += list(prefixed.graph.initializer)
        share = numpy_helper.from_array(np.array(weight / sum(weights), np.float32), f"{prefix}share")
        initializers.append(share)
        nodes.append(
            helper.make_node("Reshape", [prefix + CONTRACT_OUTPUT, "ensemble_column"], [f"{prefix}column"])
        )
        nodes.append(helper.make_node("Mul", [f"{prefix}column", share.name], [f"{prefix}weighted"]))
        weighted.append(f"{prefix}weighted")
    nodes.append(helper.make_node("Sum", weighted, [CONTRACT_OUTPUT]))
    output = helper.make_tensor_value_info(CONTRACT_OUTPUT, TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph(nodes, "ensemble", inputs, [output], initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=max(member.ir_version for member in members),
        producer_name="serving-onnx-ensemble",
    )
    onnx.checker.check_model(model)
    return model


def _common_opset(members: Sequence[onnx.ModelProto]) -> int:
    versions = {
        index: [opset.version for opset in member.opset_import if opset.domain in ("", "ai.onnx")]
        for index, member in enumerate(members)
    }
    found = {tuple(found) for found in versions.values()}
    if len(found) != 1 or len(next(iter(found))) != 1:
        raise EnsembleError(f"members import different opsets of the default domain: {versions}")
    others = {opset.domain for member in members for opset in member.opset_import} - {"", "ai.onnx"}
    if others:
        raise EnsembleError(f"members import other operator domains {sorted(others)}: not composed")
    return next(iter(found))[0]


def _contract_inputs(members: Sequence[onnx.ModelProto]) -> list[onnx.ValueInfoProto]:
    """The first member's contract inputs, once every member declares the same."""
    declared = [_inputs(index, member) for index, member in enumerate(members)]
    first = {name: value.type.SerializeToString() for name, value in declared[0].items()}
    for index, inputs in enumerate(declared):
        if {name: value.type.SerializeToString() for name, value in inputs.items()} != first:
            raise EnsembleError(
                f"member {index} declares its inputs unlike member 0: {list(inputs.values())}"
            )
    return [declared[0][name] for name in CONTRACT_INPUTS]


def _inputs(index: int, member: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Member `index`'s contract inputs by name; EnsembleError if it is not a model of the contract."""
    initialized = {tensor.name for tensor in member.graph.initializer}
    inputs = {value.name: value for value in member.graph.input if value.name not in initialized}
    outputs = [value.name for value in member.graph.output]
    if set(inputs) != set(CONTRACT_INPUTS) or outputs != [CONTRACT_OUTPUT]:
        raise EnsembleError(
            f"member {index} takes {sorted(inputs)} and returns {outputs}: expected "
            f"{list(CONTRACT_INPUTS)} and [{CONTRACT_OUTPUT!r}]"
        )
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving-onnx-ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", type=Path, help="ONNX models of the contract")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the ensemble")
    parser.add_argument("--weights", help="one weight per member, comma-separated (default: equal)")
    args = parser.parse_args(argv)
    try:
        weights = [float(weight) for weight in args.weights.split(",")] if args.weights else None
        model = compose([onnx.load_model(str(path)) for path in args.members], weights)
    except (EnsembleError, ValueError, OSError, onnx.checker.ValidationError) as error:
        print(f"serving-onnx-ensemble: {error}", file=sys.stderr)
        return 2
    onnx.save_model(model, str(args.output))
    print(f"wrote {args.output}: {len(args.members)} members, {len(model.graph.node)} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
