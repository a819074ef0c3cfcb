"""The trial run of an ONNX model: ONNX Runtime opens it and scores the largest batch the flow will send,
in the limited admission child (`flows.core.admission.unpack_child`), before the flow's process opens it.

A model's size says nothing of what running it costs, and the static checks of `onnx_graph` cannot see it:
constant folding when the session opens built a tensor of 1.5 GB from a 441-byte model of allowed ops, and a
359-byte graph that adds users [N, 1] to products [1, N] allocates N x N floats per call (10,000 pairs:
400 MB; 50,000: 10 GB). Opened in the flow, either killed it, and again at every restart, since the model is
restored from recovery. Here they meet the child's address-space, CPU and wall-clock limits instead, and
are refused naming the stage they reached. A model slow enough to stall the flow is refused the same way
(`SERVING_MODEL_MAX_CALL_SECONDS`).

The trial also asks what a fixed probe cannot: ids spread over the model's whole id range (a model that
answers NaN past user 100 passed a probe of ids below 100) and several batch sizes (a model that answers 64
scores whatever it is asked passed a probe of 64 pairs). What it measures (time to open, time per call,
peak memory) comes back with the verdict and is kept with the scorer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from flows.core.admission.onnx_graph import CONTRACT_INPUTS, CONTRACT_OUTPUT, OnnxRefused, embedding_bounds
from flows.core.admission.trial import OUT_OF_MEMORY, TrialFigures, error_line, peak_mb, score_batches
from flows.core.errors import WrongScoreCount

# What ONNX Runtime calls the id types the contract accepts, and the numpy type fed for each.
FEED_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

Feeds = dict[str, tuple[type, tuple[int, ...]]]  # input name -> (numpy type, shape with -1 for the batch)


def session_options() -> onnxruntime.SessionOptions:
    """Options for a streaming worker, the same in the trial and in the flow (so the trial measures what
    the flow will pay).

    One intra-op and one inter-op thread, sequential execution, no spinning: a Bytewax worker is already
    one thread per core, and the Kafka client has its own; ONNX Runtime's default (a pool as large as the
    machine, spinning while it waits for work) would have every worker's pool compete for the same cores
    between micro-batches and burn CPU while idle. Batches of a few hundred pairs through a small network
    gain nothing from splitting an op across threads; more throughput comes from more workers.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 4  # fatal only: errors come back as exceptions, with the same text
    return options


def open_session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(
        str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )


def feeds_of(session: onnxruntime.InferenceSession) -> Feeds:
    """How to feed each input the session declares; OnnxRefused for one outside the contract."""
    feeds: Feeds = {}
    for value in session.get_inputs():
        feed_type = FEED_TYPES.get(value.type)
        if value.name not in CONTRACT_INPUTS or feed_type is None:
            raise OnnxRefused(f"ONNX Runtime sees input {value.name!r} as {value.type}")
        feeds[value.name] = (feed_type, (-1, 1) if len(value.shape) == 2 else (-1,))
    return feeds


def run_session(
    session: onnxruntime.InferenceSession, feeds: Feeds, users: np.ndarray, products: np.ndarray
) -> np.ndarray:
    """One call: the scores of the pairs (1-D), or WrongScoreCount if the model answers another count."""
    columns = {"users": users, "products": products}
    inputs: dict[str, np.ndarray] = {
        name: columns[name].astype(feed_type, copy=False).reshape(shape)
        for name, (feed_type, shape) in feeds.items()
    }
    [scores] = session.run([CONTRACT_OUTPUT], inputs)
    if scores.shape not in ((users.size, 1), (users.size,)):
        raise WrongScoreCount(
            f"model returned {CONTRACT_OUTPUT!r} of shape {scores.shape} for {users.size:,} pairs"
        )
    return scores.reshape(-1)


def trial(
    directory: Path,
    max_pairs: int,
    output_range: tuple[float, float],
    max_call_seconds: float,
    stage: Callable[[str], None],
) -> TrialFigures:
    """Open the model in `directory` and score batches up to `max_pairs` (see the module docstring and
    `flows.core.admission.trial.score_batches`); OnnxRefused if ONNX Runtime cannot open it, TrialRefused
    naming what failed in a call."""
    path = directory / "model.onnx"
    base_mb = peak_mb()
    stage("opening the model in ONNX Runtime")
    started = time.perf_counter()
    try:
        session = open_session(path)
    except Exception as error:  # noqa: BLE001 (onnxruntime raises its own types from C++, no common base)
        raise OnnxRefused(f"trial: ONNX Runtime cannot open it: {_why(error)}") from None
    open_ms = (time.perf_counter() - started) * 1000
    feeds = feeds_of(session)
    bounds = embedding_bounds(onnx.load_model(str(path), load_external_data=False).graph)
    call_ms = score_batches(
        lambda users, products: run_session(session, feeds, users, products),
        bounds,
        max_pairs,
        output_range,
        max_call_seconds,
        stage,
        _why,
    )
    return TrialFigures.measured(open_ms, max_pairs, call_ms, base_mb)


def _why(error: BaseException) -> str:
    """The error's first line; an allocation that failed is named as the limit it met."""
    if isinstance(error, MemoryError) or any(words in str(error) for words in _OUT_OF_MEMORY):
        return OUT_OF_MEMORY
    return error_line(error)


# How ONNX Runtime says an allocation failed (at session start; in a call, from its arena).
_OUT_OF_MEMORY = ("bad_alloc", "Failed to allocate memory")
