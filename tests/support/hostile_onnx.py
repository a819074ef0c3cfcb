"""Hostile and broken ONNX models, built here (none is shipped), each as the inline archive a descriptor
carries.

`REFUSED_BEFORE_LOADING` maps a name to (a maker of the archive, the words its refusal must contain): the
unpacking child refuses these before ONNX Runtime sees them. `REFUSED_BY_THE_PROBE` are well-formed models
whose answers are wrong: they load, and the probe batch refuses them. `REFUSED_BY_THE_TRIAL` pass every
static check and a probe of 64 small ids, and would hurt the flow once it runs them: the trial run in the
admission child refuses them.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flows.core.model_formats import ONNX_MODEL_FILE


def archive(files: dict[str, bytes]) -> bytes:
    """A gzip tar archive of `files` (name -> content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def model_bytes(
    nodes: list[onnx.NodeProto],
    initializers: Sequence[TensorProto] = (),
    inputs: tuple[str, ...] = ("users", "products"),
    input_type: int = TensorProto.FLOAT,
    output_shape: Sequence[str | int] | None = ("N", 1),
    opsets: tuple[tuple[str, int], ...] = (("", 17),),
    output: str = "predictions",
) -> bytes:
    """A model serialized without the checker's blessing (the point is to reach admission)."""
    graph = helper.make_graph(
        nodes,
        "hostile",
        inputs=[helper.make_tensor_value_info(name, input_type, ["N", 1]) for name in inputs],
        outputs=[helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, v) for domain, v in opsets])
    model.ir_version = 8
    return model.SerializeToString()


def mean_of_inputs(output: str = "predictions") -> list[onnx.NodeProto]:
    """sigmoid(users + products): a well-formed scorer."""
    return [
        helper.make_node("Add", ["users", "products"], ["sum"]),
        helper.make_node("Sigmoid", ["sum"], [output]),
    ]


def inline(data: bytes) -> bytes:
    return archive({ONNX_MODEL_FILE: data})


def _external(location: str, length: int = 64) -> bytes:
    weight = numpy_helper.from_array(np.zeros(16, np.float32), "weight")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    nodes = [
        helper.make_node("ReduceSum", ["weight"], ["total"], keepdims=0),
        helper.make_node("Add", ["users", "products"], ["sum"]),
        helper.make_node("Add", ["sum", "total"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["predictions"]),
    ]
    return model_bytes(nodes, [weight])


def custom_domain() -> bytes:
    node = helper.make_node("RunShell", ["users", "products"], ["predictions"], domain="com.attacker")
    return inline(model_bytes([node], opsets=(("", 17), ("com.attacker", 1))))


def external_data_at_etc_passwd() -> bytes:
    return inline(_external("/etc/passwd"))


def external_data_up_the_tree() -> bytes:
    return inline(_external("../../../../etc/passwd"))


def declared_two_gigabytes() -> bytes:
    """An initializer that declares 2 GiB of floats and carries none: a few hundred bytes on the wire."""
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[512 * 1024 * 1024])
    nodes = [helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0), *mean_of_inputs()]
    return inline(model_bytes(nodes, [huge]))


def a_million_nodes() -> bytes:
    """A small archive whose model.onnx parses into a million nodes.

    A protobuf parser merges repeated occurrences of a message field, so a second `graph` field holding the
    same node a million times is appended to a valid model's bytes rather than built node by node.
    """
    base = model_bytes(mean_of_inputs())
    node = helper.make_node("Identity", ["users"], ["copy"]).SerializeToString()
    node_field = b"\x0a" + _varint(len(node)) + node  # GraphProto.node = 1
    nodes = node_field * 1_000_000
    graph_field = b"\x3a" + _varint(len(nodes)) + nodes  # ModelProto.graph = 7
    return inline(base + graph_field)


def loop_without_end() -> bytes:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        inputs=[
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        outputs=[helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    nodes = [
        helper.make_node(
            "Constant", [], ["forever"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("Loop", ["", "forever"], [], body=body),
        *mean_of_inputs(),
    ]
    return inline(model_bytes(nodes))


def allocates_from_its_input() -> bytes:
    nodes = [
        helper.make_node("Cast", ["users"], ["size"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["size", "one"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["block"]),
        *mean_of_inputs(),
    ]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    return inline(model_bytes(nodes, [one]))


def other_names() -> bytes:
    nodes = [
        helper.make_node("Add", ["user_id", "item_id"], ["sum"]),
        helper.make_node("Sigmoid", ["sum"], ["score"]),
    ]
    return inline(model_bytes(nodes, inputs=("user_id", "item_id"), output="score"))


def double_inputs() -> bytes:
    nodes = [
        helper.make_node("Add", ["users", "products"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["single"], to=TensorProto.FLOAT),
        helper.make_node("Sigmoid", ["single"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, input_type=TensorProto.DOUBLE))


def opset_from_the_future() -> bytes:
    return inline(model_bytes(mean_of_inputs(), opsets=(("", 99),)))


def not_onnx() -> bytes:
    return inline(b"\xff\xff\xff\xff this is not a protobuf message" * 100)


def two_outputs_per_pair() -> bytes:
    """Declares an output of [N, K] and returns [N, 2]: caught when its answer is counted."""
    nodes = [
        helper.make_node("Concat", ["users", "products"], ["both"], axis=1),
        helper.make_node("Sigmoid", ["both"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, output_shape=["N", "K"]))


def answers_nan() -> bytes:
    nodes = [
        helper.make_node("Sub", ["users", "users"], ["zero"]),
        helper.make_node("Div", ["zero", "zero"], ["predictions"]),
    ]
    return inline(model_bytes(nodes))


def grows_when_opened() -> bytes:
    """4 KB of constants concatenated with themselves 18 times and summed, times 0, added to a fair score:
    a few hundred bytes of allowed ops that ask ONNX Runtime for a 1 GiB tensor (constant folding builds it
    when the session opens, or the first call does)."""
    block = numpy_helper.from_array(np.full(1024, 1e-9, np.float32), "block")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    nodes, previous = [], "block"
    for level in range(18):
        nodes.append(helper.make_node("Concat", [previous, previous], [f"level{level}"], axis=0))
        previous = f"level{level}"
    nodes += [
        helper.make_node("ReduceSum", [previous], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["users", "products"], ["sum"]),
        helper.make_node("Add", ["sum", "nothing"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, [block, zero]))


def grows_with_the_batch() -> bytes:
    """users [N, 1] + products [1, N] -> [N, N] -> mean per user: 64 pairs cost 16 KB, 50,000 cost 10 GB."""
    nodes = [
        helper.make_node("Transpose", ["products"], ["across"], perm=[1, 0]),
        helper.make_node("Add", ["users", "across"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["predictions"]),
    ]
    return inline(model_bytes(nodes))


def slow_per_pair() -> bytes:
    """120 dense layers of 256 units per pair: a probe of 64 pairs takes a fraction of a second, 1,000
    pairs take seconds, the flow's largest batch minutes."""
    rng = np.random.default_rng(7)
    first = numpy_helper.from_array(rng.normal(0, 0.01, (2, 256)).astype(np.float32), "first")
    square = numpy_helper.from_array(rng.normal(0, 0.01, (256, 256)).astype(np.float32), "square")
    nodes = [
        helper.make_node("Concat", ["users", "products"], ["pair"], axis=1),
        helper.make_node("MatMul", ["pair", "first"], ["h0"]),
    ]
    for layer in range(120):
        nodes.append(helper.make_node("MatMul", [f"h{layer}", "square"], [f"h{layer + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", ["h120"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, [first, square]))


def nan_past_user_100() -> bytes:
    """A fair score plus 0 x sqrt(99.5 - user): exact for users below 100, NaN for every other user."""
    edge = numpy_helper.from_array(np.array([99.5], np.float32), "edge")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    nodes = [
        helper.make_node("Sub", ["edge", "users"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["nothing"]),
        helper.make_node("Add", ["users", "products"], ["sum"]),
        helper.make_node("Sigmoid", ["sum"], ["fair"]),
        helper.make_node("Add", ["fair", "nothing"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, [edge, zero]))


def answers_64_scores() -> bytes:
    """The scores of the first 64 pairs, whatever the batch: right for the probe's 64, short for more."""
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([64], np.int64), "ends")
    nodes = [
        *mean_of_inputs("fair"),
        helper.make_node("Slice", ["fair", "starts", "ends"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, [starts, ends]))


def fails_in_service() -> bytes:
    """NaN for users 100 to 999 asking about products below 300, a fair score otherwise: right for every id
    the probe asks (below 100) and, but for a chance of about 1e-9 per pair, for the trial's ids spread up
    to 2**24 (it shows no embedding, so no bounds); wrong for nine records in ten of the generated traffic
    (users below 1,000, products below 300)."""
    constants = [
        numpy_helper.from_array(np.array([value], np.float32), name)
        for name, value in (("hundred", 100.0), ("thousand", 1000.0), ("three_hundred", 300.0))
    ]
    nodes = [
        helper.make_node("GreaterOrEqual", ["users", "hundred"], ["from_100"]),
        helper.make_node("Less", ["users", "thousand"], ["below_1000"]),
        helper.make_node("Less", ["products", "three_hundred"], ["low_product"]),
        helper.make_node("And", ["from_100", "below_1000"], ["middle_user"]),
        helper.make_node("And", ["middle_user", "low_product"], ["broken"]),
        helper.make_node("Cast", ["broken"], ["broken_float"], to=TensorProto.FLOAT),
        helper.make_node("Neg", ["broken_float"], ["minus"]),
        helper.make_node("Sqrt", ["minus"], ["nan_where_broken"]),
        *mean_of_inputs("fair"),
        helper.make_node("Add", ["fair", "nan_where_broken"], ["predictions"]),
    ]
    return inline(model_bytes(nodes, constants))


REFUSED_BEFORE_LOADING: dict[str, tuple[Callable[[], bytes], str]] = {
    "custom_domain": (custom_domain, "operator domain 'com.attacker'"),
    "external_data_at_etc_passwd": (
        external_data_at_etc_passwd,
        "'/etc/passwd': outside the model's directory",
    ),
    "external_data_up_the_tree": (external_data_up_the_tree, "outside the model's directory"),
    "declared_two_gigabytes": (declared_two_gigabytes, "initializer 'huge' declares 2,147,483,648 bytes"),
    "a_million_nodes": (a_million_nodes, "graph has 1,000,002 nodes (limit 50,000)"),
    "loop_without_end": (loop_without_end, "holds a subgraph"),
    "allocates_from_its_input": (
        allocates_from_its_input,
        "op 'ConstantOfShape', which is not on the allow-list",
    ),
    "other_names": (other_names, "takes ['item_id', 'user_id'] and returns ['score']"),
    "double_inputs": (double_inputs, "declares 'users' as DOUBLE"),
    "opset_from_the_future": (opset_from_the_future, "opset 99"),
    "not_onnx": (not_onnx, "model.onnx is not an ONNX model"),
}
REFUSED_BY_THE_PROBE: dict[str, tuple[Callable[[], bytes], str]] = {
    "two_outputs_per_pair": (two_outputs_per_pair, "of shape (64, 2) for 64 pairs"),
    "answers_nan": (answers_nan, "not finite"),
}
REFUSED_BY_THE_TRIAL: dict[str, tuple[Callable[[], bytes], str]] = {
    "grows_when_opened": (  # when the session opens, or at its first call: ONNX Runtime decides
        grows_when_opened,
        "it ran out of the admission child's memory limit (SERVING_MODEL_UNPACK_MEMORY)",
    ),
    "grows_with_the_batch": (
        grows_with_the_batch,
        "scoring 50,000 pairs failed: it ran out of the admission child's memory limit",
    ),
    "slow_per_pair": (slow_per_pair, "pairs (SERVING_MODEL_UNPACK_TIMEOUT)"),
    "nan_past_user_100": (nan_past_user_100, "scores not finite or outside [0, 1] (first: nan for user "),
    "answers_64_scores": (answers_64_scores, "of shape (64, 1) for 1,001 pairs"),
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
