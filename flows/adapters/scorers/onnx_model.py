"""The embedded ONNX scorer: an ONNX model run in this process by ONNX Runtime, one call per micro-batch.

A descriptor of type ONNX carries either the model inline (`model_bytes`: a tar archive holding `model.onnx`
and any external-data files it names) or a local path under an allowed root (a directory holding
`model.onnx`, or that file). Before ONNX Runtime sees it, the model is unpacked and vetted in the limited
child process (`flows.core.admission.unpack`, rules in `flows.core.admission.onnx_graph`); the probe batch
follows, as for every scorer.

Threads: one intra-op and one inter-op thread, sequential execution, no spinning. A Bytewax worker is
already one thread per core, and the Kafka client has its own; ONNX Runtime's default (a pool as large as
the machine, spinning while it waits for work) would have every worker's pool compete for the same cores
between micro-batches and burn CPU while idle. Batches of a few hundred pairs through a small network gain
nothing from splitting an op across threads; more throughput comes from more workers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from flows.core.admission.descriptor_checks import allowed_local_directory
from flows.core.admission.onnx_graph import CONTRACT_INPUTS, CONTRACT_OUTPUT
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.unpack import UnpackRefused, unpack_and_inspect
from flows.core.model_formats import ONNX, ONNX_MODEL_FILE
from flows.core.records import ModelDescriptor, ModelType
from flows.core.scorer import InputBounds, ModelLoadError, register

# What ONNX Runtime calls the id types the contract accepts, and the numpy type fed for each.
_FEED_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
# Ops an id may pass through on its way from an input to the embedding it indexes: they keep its value.
_ID_PRESERVING_OPS = frozenset({"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def session_options() -> onnxruntime.SessionOptions:
    """Options for a streaming worker (see the module docstring)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 4  # fatal only: errors come back as exceptions, with the same text
    return options


class OnnxScorer:
    """Scores pairs with an ONNX model's `predictions` output, feeding ids in the type the model declares."""

    source = "embedded:onnx"

    def __init__(
        self, model_name: str, path: Path, scratch: tempfile.TemporaryDirectory | None = None
    ) -> None:
        self._scratch = scratch  # the unpacked archive, kept while the session may read its external data
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types from C++, with no common base
            self.close()
            raise ModelLoadError(
                model_name, f"ONNX Runtime cannot load it: {type(error).__name__}: {error}"
            ) from error
        self._feeds = {}
        for value in self._session.get_inputs():
            feed_type = _FEED_TYPES.get(value.type)
            if value.name not in CONTRACT_INPUTS or feed_type is None:
                self.close()
                raise ModelLoadError(model_name, f"ONNX Runtime sees input {value.name!r} as {value.type}")
            self._feeds[value.name] = (feed_type, (-1, 1) if len(value.shape) == 2 else (-1,))
        self.input_bounds = embedding_bounds(onnx.load_model(str(path), load_external_data=False).graph)

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        columns = {"users": users, "products": products}
        feeds = {
            name: columns[name].astype(feed_type, copy=False).reshape(shape)
            for name, (feed_type, shape) in self._feeds.items()
        }
        [scores] = self._session.run([CONTRACT_OUTPUT], feeds)
        if scores.shape not in ((users.size, 1), (users.size,)):
            raise ValueError(
                f"model returned {CONTRACT_OUTPUT!r} of shape {scores.shape} for {users.size} pairs"
            )
        return scores.reshape(-1)

    def close(self) -> None:
        self._session = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def embedding_bounds(graph: onnx.GraphProto) -> InputBounds | None:
    """The ids each input can take: the rows of the initializer it gathers from, when both inputs reach a
    `Gather` through value-preserving ops only; None when the graph does not show it (then ids are checked
    only against the float32 limit, and the model's own errors)."""
    rows = {tensor.name: tensor.dims[0] for tensor in graph.initializer if len(tensor.dims) >= 1}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    bounds = {}
    for side in CONTRACT_INPUTS:
        found = set()
        frontier, seen = [side], set()
        while frontier:
            name = frontier.pop()
            seen.add(name)
            for node in consumers.get(name, []):
                if (
                    node.op_type == "Gather"
                    and node.domain in ("", "ai.onnx")
                    and list(node.input[1:2]) == [name]
                ):
                    if node.input[0] in rows:
                        found.add(rows[node.input[0]])
                elif node.op_type in _ID_PRESERVING_OPS and node.input[0] == name:
                    frontier.extend(output for output in node.output if output not in seen)
        if len(found) != 1:
            return None
        bounds[side] = found.pop()
    return InputBounds(users=bounds["users"], products=bounds["products"])


@register(ModelType.ONNX)
def build_onnx_scorer(descriptor: ModelDescriptor, policy: AdmissionPolicy) -> OnnxScorer:
    """Unpack and vet (in a limited child process), then open an ONNX Runtime session."""
    name = descriptor.model_name
    if descriptor.model_bytes:
        scratch = tempfile.TemporaryDirectory(prefix="onnx-")
        directory = Path(scratch.name)
        try:
            unpack_and_inspect(descriptor.model_bytes, directory, policy, ONNX)
        except UnpackRefused as error:
            scratch.cleanup()
            raise ModelLoadError(name, str(error)) from error
        return OnnxScorer(name, directory / ONNX_MODEL_FILE, scratch)
    if descriptor.model_source_location:
        try:
            location = allowed_local_directory(descriptor.model_source_location, policy.roots)
        except ValueError as error:
            raise ModelLoadError(name, str(error)) from error
        directory = location.parent if location.name == ONNX_MODEL_FILE and location.is_file() else location
        if not directory.is_dir():
            raise ModelLoadError(name, f"no ONNX model directory at {directory}")
        try:
            unpack_and_inspect(None, directory, policy, ONNX)
        except UnpackRefused as error:
            raise ModelLoadError(name, str(error)) from error
        return OnnxScorer(name, directory / ONNX_MODEL_FILE)
    raise ModelLoadError(name, "descriptor has neither model bytes nor a model location")
