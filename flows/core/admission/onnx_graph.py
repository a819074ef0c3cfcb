"""Vet an ONNX model before ONNX Runtime loads it: structure, bounds, ops, external data, then the checker.

Runs in the limited unpacking child (`flows.core.admission.unpack_child`), so parsing a hostile file costs
that child's memory and CPU, never the flow's. The order matters: what is cheap and bounds the rest comes
first, and `onnx.checker` (which runs shape inference over the whole graph) comes last, on a graph already
known to be small.

Rules (each refusal names what broke it):

* the directory holds a regular `model.onnx` (no link) of at most `max_bytes`;
* at most :data:`MAX_NODES` nodes and :data:`MAX_INITIALIZERS` initializers; every tensor the file holds or
  points at declares a non-negative shape whose bytes add up to at most `max_bytes`, and holds or points at
  exactly that many bytes (a tensor that declares 2 GB and carries none is refused before anything reads it);
* external data: a relative path with no `..`, to a regular file (no link) inside the model's directory, the
  range it names inside that file;
* opsets: the default domain between :data:`OPSET_RANGE` and `ai.onnx.ml` within :data:`ML_OPSET_RANGE`; no
  other domain (custom ops need a custom-op library, which is never loaded), no model-local functions;
* every node's op in :data:`ALLOWED_OPS` for its domain. Left out on purpose: control flow (`If`, `Loop`,
  `Scan`: subgraphs that run as long as their data says), ops that size their output from input data
  (`ConstantOfShape`, `Expand`, `Tile`, `Range`, `Resize`, `Pad`, `OneHot`: a tensor of any size), random
  ops (a score must not change between calls), and string and sequence ops;
* the recommender's contract: inputs `users` and `products` (float32, or int64/int32 ids), of shape [N] or
  [N, 1]; one output, `predictions`, float32, [N] or [N, 1];
* `onnx.checker.check_model` with `full_check` (types and shapes inferred through the graph).
"""

from __future__ import annotations

import math
import stat
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from flows.core.errors import ServingError
from flows.core.model_formats import ONNX_MODEL_FILE

MAX_NODES = 50_000
MAX_INITIALIZERS = 10_000
OPSET_RANGE = (7, 21)  # ONNX Runtime 1.20, the oldest this project allows, implements opset 21
ML_OPSET_RANGE = (1, 4)
ML_DOMAIN = "ai.onnx.ml"
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
CONTRACT_INPUTS = ("users", "products")
CONTRACT_OUTPUT = "predictions"
ID_TYPES = frozenset({TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32})
# Ops an id may pass through on its way from an input to the embedding it indexes: they keep its value.
ID_PRESERVING_OPS = frozenset({"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})

ALLOWED_OPS: dict[str, frozenset[str]] = {
    "": frozenset(
        [
            "Abs",
            "Acos",
            "Acosh",
            "Add",
            "And",
            "ArgMax",
            "ArgMin",
            "Asin",
            "Asinh",
            "Atan",
            "Atanh",
            "AveragePool",
            "BatchNormalization",
            "Cast",
            "CastLike",
            "Ceil",
            "Celu",
            "Clip",
            "Concat",
            "Constant",
            "Conv",
            "Cos",
            "Cosh",
            "CumSum",
            "DequantizeLinear",
            "Div",
            "Dropout",
            "DynamicQuantizeLinear",
            "Einsum",
            "Elu",
            "Equal",
            "Erf",
            "Exp",
            "Flatten",
            "Floor",
            "Gather",
            "GatherElements",
            "GatherND",
            "Gelu",
            "Gemm",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "Greater",
            "GreaterOrEqual",
            "HardSigmoid",
            "HardSwish",
            "Hardmax",
            "Identity",
            "InstanceNormalization",
            "IsInf",
            "IsNaN",
            "LayerNormalization",
            "LeakyRelu",
            "Less",
            "LessOrEqual",
            "Log",
            "LogSoftmax",
            "LpNormalization",
            "MatMul",
            "MatMulInteger",
            "Max",
            "MaxPool",
            "Mean",
            "Min",
            "Mish",
            "Mod",
            "Mul",
            "Neg",
            "Not",
            "Or",
            "PRelu",
            "Pow",
            "QLinearConv",
            "QLinearMatMul",
            "QuantizeLinear",
            "Reciprocal",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
            "Relu",
            "Reshape",
            "Round",
            "Selu",
            "Shape",
            "Shrink",
            "Sigmoid",
            "Sign",
            "Sin",
            "Sinh",
            "Size",
            "Slice",
            "Softmax",
            "Softplus",
            "Softsign",
            "Split",
            "Sqrt",
            "Squeeze",
            "Sub",
            "Sum",
            "Tan",
            "Tanh",
            "ThresholdedRelu",
            "TopK",
            "Transpose",
            "Trilu",
            "Unsqueeze",
            "Where",
            "Xor",
        ]
    ),
    ML_DOMAIN: frozenset(
        [
            "ArrayFeatureExtractor",
            "Binarizer",
            "FeatureVectorizer",
            "Imputer",
            "LinearClassifier",
            "LinearRegressor",
            "Normalizer",
            "Scaler",
            "SVMClassifier",
            "SVMRegressor",
            "TreeEnsemble",
            "TreeEnsembleClassifier",
            "TreeEnsembleRegressor",
        ]
    ),
}

# Bytes per element of the tensor types a model may hold; any other (strings, complex) is refused.
_ITEM_BYTES: dict[int, int] = {
    TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1,
}  # fmt: skip
# Where a tensor's values lie when they are inline: the typed repeated field, and its bytes per element.
_TYPED_FIELDS: dict[int, str] = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data",
}  # fmt: skip


class OnnxRefused(ServingError, ValueError):
    """The model breaks a rule; the message says which, and where."""


def inspect_onnx(directory: Path, max_bytes: int) -> list[str]:
    """What is wrong with the ONNX model in `directory`, as reasons; empty if it may be loaded."""
    try:
        model = _read_model(directory, max_bytes)
        _check_bounds(model, directory, max_bytes)
        _check_opsets_and_ops(model)
        _check_contract(model.graph)
    except OnnxRefused as refused:
        return [str(refused)]
    try:
        onnx.checker.check_model(str(directory / ONNX_MODEL_FILE), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [f"ONNX model fails onnx.checker: {first_line}"]
    return []


def _read_model(directory: Path, max_bytes: int) -> onnx.ModelProto:
    path = directory / ONNX_MODEL_FILE
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise OnnxRefused(f"no {ONNX_MODEL_FILE} in the model's directory") from None
    if not stat.S_ISREG(info.st_mode):
        raise OnnxRefused(f"{ONNX_MODEL_FILE} is not a regular file (a link or a device)")
    if info.st_size > max_bytes:
        raise OnnxRefused(
            f"{ONNX_MODEL_FILE} is {info.st_size:,} bytes, over {max_bytes:,} "
            "(SERVING_MODEL_MAX_UNPACKED_BYTES)"
        )
    data = path.read_bytes()
    nodes, initializers = _count_graph_members(data)
    if (
        nodes > MAX_NODES
    ):  # counted on the wire: parsing first would cost the memory the limit is there to bound
        raise OnnxRefused(f"graph has {nodes:,} nodes (limit {MAX_NODES:,})")
    if initializers > MAX_INITIALIZERS:
        raise OnnxRefused(f"graph has {initializers:,} initializers (limit {MAX_INITIALIZERS:,})")
    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as error:
        raise OnnxRefused(
            f"{ONNX_MODEL_FILE} is not an ONNX model: {type(error).__name__}: {error}"
        ) from None


def _count_graph_members(data: bytes) -> tuple[int, int]:
    """The nodes and initializers of the main graph, counted from the protobuf wire format without parsing
    them (`ModelProto.graph` is field 7, `GraphProto.node` 1, `GraphProto.initializer` 5; a field that
    occurs twice is merged by a parser, so every occurrence counts)."""
    nodes = initializers = 0
    for field, start, end in _fields(data, 0, len(data)):
        if field == 7 and end >= start:
            for member, _, _ in _fields(data, start, end):
                nodes += member == 1
                initializers += member == 5
    return nodes, initializers


def _fields(data: bytes, position: int, end: int):
    """(field number, start, end) of each field of the message in data[position:end]; start > end for a field
    that is not length-delimited."""
    while position < end:
        key, position = _varint(data, position, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position, end)
            yield field, 1, 0
        elif wire_type == 2:
            length, position = _varint(data, position, end)
            if position + length > end:
                raise OnnxRefused(
                    f"{ONNX_MODEL_FILE} is not an ONNX model: a field "
                    f"runs past its message at byte {position:,}"
                )
            yield field, position, position + length
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            yield field, 1, 0
        else:
            raise OnnxRefused(
                f"{ONNX_MODEL_FILE} is not an ONNX model: wire type {wire_type} at byte {position:,}"
            )
    if position > end:
        raise OnnxRefused(f"{ONNX_MODEL_FILE} is not an ONNX model: truncated at byte {end:,}")


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise OnnxRefused(f"{ONNX_MODEL_FILE} is not an ONNX model: a malformed number at byte {position:,}")


def _check_bounds(model: onnx.ModelProto, directory: Path, max_bytes: int) -> None:
    graph = model.graph
    if len(graph.sparse_initializer):
        raise OnnxRefused("graph has sparse initializers: not accepted")
    total = 0
    for tensor, where in _tensors(graph):
        total += _tensor_bytes(tensor, where, directory)
        if total > max_bytes:
            raise OnnxRefused(
                f"tensors declare more than {max_bytes:,} bytes in all, at {where} "
                "(SERVING_MODEL_MAX_UNPACKED_BYTES)"
            )


def _tensors(graph: onnx.GraphProto):
    """Every tensor the graph carries: initializers and tensor-valued attributes (`Constant`'s value)."""
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name[:100]!r}"
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                yield (
                    attribute.t,
                    f"attribute {attribute.name!r} of node {node.name[:100]!r} ({node.op_type})",
                )
            elif attribute.type == AttributeProto.TENSORS:
                for tensor in attribute.tensors:
                    yield tensor, f"attribute {attribute.name!r} of node {node.name[:100]!r} ({node.op_type})"
            elif attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                raise OnnxRefused(f"node {node.name[:100]!r} ({node.op_type}) holds a subgraph: not accepted")


def _tensor_bytes(tensor: TensorProto, where: str, directory: Path) -> int:
    """The bytes `tensor` declares, once checked that it holds or points at exactly those."""
    item = _ITEM_BYTES.get(tensor.data_type)
    if item is None:
        type_name = (
            TensorProto.DataType.Name(tensor.data_type)
            if tensor.data_type in TensorProto.DataType.values()
            else tensor.data_type
        )
        raise OnnxRefused(f"{where} has element type {type_name}: not accepted")
    if any(dim < 0 for dim in tensor.dims):
        raise OnnxRefused(f"{where} declares a negative dimension {list(tensor.dims)}")
    declared = math.prod(tensor.dims) * item
    if tensor.data_location == TensorProto.EXTERNAL:
        held = _external_bytes(tensor, where, directory)
    elif tensor.raw_data:
        held = len(tensor.raw_data)
    elif tensor.data_type in _TYPED_FIELDS:
        held = len(getattr(tensor, _TYPED_FIELDS[tensor.data_type])) * item
    else:  # int32_data carries the small integer types and halves, one element per entry
        held = len(tensor.int32_data) * item
    if held != declared:
        raise OnnxRefused(
            f"{where} declares {declared:,} bytes of shape {list(tensor.dims)} and holds {held:,}"
        )
    return declared


def _external_bytes(tensor: TensorProto, where: str, directory: Path) -> int:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    relative = PurePosixPath(location)
    if (
        not location
        or relative.is_absolute()
        or ".." in relative.parts
        or "\\" in location
        or "\x00" in location
    ):
        raise OnnxRefused(
            f"{where} points at external data {location[:200]!r}: outside the model's directory"
        )
    path = directory.joinpath(*relative.parts)
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise OnnxRefused(f"{where} points at external data {location[:200]!r}, which is missing") from None
    if not stat.S_ISREG(info.st_mode) or not path.resolve().is_relative_to(directory.resolve()):
        raise OnnxRefused(
            f"{where} points at external data {location[:200]!r}: not a regular file in the model's directory"
        )
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else info.st_size - offset
    except ValueError:
        raise OnnxRefused(f"{where} gives a malformed offset or length for its external data") from None
    if offset < 0 or length < 0 or offset + length > info.st_size:
        raise OnnxRefused(
            f"{where} reads bytes {offset:,} to {offset + length:,} "
            f"of {location[:200]!r}, which has {info.st_size:,}"
        )
    return length


def _check_opsets_and_ops(model: onnx.ModelProto) -> None:
    if len(model.functions):
        raise OnnxRefused(f"model defines {len(model.functions)} local function(s): not accepted")
    for opset in model.opset_import:
        domain = opset.domain
        if domain in DEFAULT_DOMAINS:
            low, high = OPSET_RANGE
        elif domain == ML_DOMAIN:
            low, high = ML_OPSET_RANGE
        else:
            raise OnnxRefused(
                f"model imports operator domain {domain[:100]!r}: "
                f"only the default and {ML_DOMAIN!r} are accepted"
            )
        if not low <= opset.version <= high:
            raise OnnxRefused(
                f"model imports opset {opset.version} of domain "
                f"{domain or 'ai.onnx'!r} (accepted: {low} to {high})"
            )
    for node in model.graph.node:
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        if domain not in ALLOWED_OPS:
            raise OnnxRefused(
                f"node {node.name[:100]!r} uses op {node.op_type[:100]!r} of domain {node.domain[:100]!r}: "
                "custom domains are not accepted"
            )
        if node.op_type not in ALLOWED_OPS[domain]:
            raise OnnxRefused(
                f"node {node.name[:100]!r} uses op {node.op_type[:100]!r}, which is not on the allow-list"
            )


def _check_contract(graph: onnx.GraphProto) -> None:
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = {value.name: value for value in graph.input if value.name not in initialized}
    outputs = {value.name: value for value in graph.output}
    if set(inputs) != set(CONTRACT_INPUTS) or set(outputs) != {CONTRACT_OUTPUT}:
        raise OnnxRefused(
            f"model takes {sorted(inputs)} and returns {sorted(outputs)}; "
            f"expected inputs {list(CONTRACT_INPUTS)} and output {CONTRACT_OUTPUT!r}"
        )
    for name, value in (*inputs.items(), *outputs.items()):
        tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
        allowed = ID_TYPES if name in inputs else {TensorProto.FLOAT}
        if tensor_type is None or tensor_type.elem_type not in allowed:
            declared = (
                TensorProto.DataType.Name(tensor_type.elem_type)
                if tensor_type is not None and tensor_type.elem_type in TensorProto.DataType.values()
                else "not a tensor"
            )
            expected = " or ".join(TensorProto.DataType.Name(kind) for kind in sorted(allowed))
            raise OnnxRefused(f"model declares {name!r} as {declared}, expected {expected}")
        dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
        if dims is not None and not (
            len(dims) == 1
            or (len(dims) == 2 and (not dims[1].HasField("dim_value") or dims[1].dim_value == 1))
        ):
            shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in dims]
            raise OnnxRefused(f"model declares {name!r} of shape {shape}, expected [N] or [N, 1]")


def embedding_bounds(graph: onnx.GraphProto) -> tuple[int, int] | None:
    """The ids each input can take, (users, products): the rows of the initializer it gathers from, when
    both inputs reach a `Gather` through value-preserving ops only; None when the graph does not show it
    (then ids are checked only against the float32 limit, and the model's own errors)."""
    tables = embedding_tables(graph)
    return None if tables is None else table_rows(graph, tables)


def table_rows(graph: onnx.GraphProto, tables: tuple[str, str]) -> tuple[int, int]:
    """The row counts of the (users, products) initializers `embedding_tables` found in `graph`."""
    rows = _initializer_rows(graph)
    return rows[tables[0]], rows[tables[1]]


def _initializer_rows(graph: onnx.GraphProto) -> dict[str, int]:
    return {tensor.name: tensor.dims[0] for tensor in graph.initializer if len(tensor.dims) >= 1}


def embedding_tables(graph: onnx.GraphProto) -> tuple[str, str] | None:
    """The initializers the inputs gather from, (users, products): how an ONNX model declares its embedding
    tables (`flows.core.embeddings`). None unless each input reaches, through value-preserving ops only,
    gathers over tables of one row count (several tables of that size: the first in the graph)."""
    rows = _initializer_rows(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tables = []
    for side in CONTRACT_INPUTS:
        found: dict[str, int] = {}
        frontier, seen = [side], set()
        while frontier:
            name = frontier.pop()
            seen.add(name)
            for node in consumers.get(name, []):
                if (
                    node.op_type == "Gather"
                    and node.domain in DEFAULT_DOMAINS
                    and list(node.input[1:2]) == [name]
                ):
                    if node.input[0] in rows:
                        found.setdefault(node.input[0], rows[node.input[0]])
                elif node.op_type in ID_PRESERVING_OPS and node.input[0] == name:
                    frontier.extend(output for output in node.output if output not in seen)
        if len(set(found.values())) != 1:
            return None
        tables.append(next(iter(found)))
    return tables[0], tables[1]
