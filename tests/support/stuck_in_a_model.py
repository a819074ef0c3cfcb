"""A flow whose one step is stuck in ONNX Runtime for minutes (the slow model of `hostile_onnx` on 50,000
pairs), with the main job's signal handling: `python -m bytewax.run support.stuck_in_a_model` with `tests/`
on the path. It prints `scoring` as the call starts; SERVING_DRAIN_TIMEOUT is its drain bound."""

import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

from flows.core.admission.onnx_trial import feeds_of, open_session, run_session
from flows.runtime import shutdown
from support.hostile_onnx import slow_per_pair

shutdown.install()
shutdown.set_drain_timeout(float(os.environ["SERVING_DRAIN_TIMEOUT"]))

with tarfile.open(fileobj=io.BytesIO(slow_per_pair())) as archive:
    MODEL = Path(tempfile.mkdtemp()) / "model.onnx"
    member = archive.extractfile("model.onnx")
    assert member is not None  # slow_per_pair() packs the model as a regular file
    MODEL.write_bytes(member.read())
SESSION = open_session(MODEL)


def score(pairs: int) -> str:
    print("scoring", flush=True)
    ids = np.zeros(pairs, np.float32)
    return f"{run_session(SESSION, feeds_of(SESSION), ids, ids).size} scores"


flow = Dataflow("stuck-in-a-model")
op.output("out", op.map("score", op.input("in", flow, TestingSource([50_000])), score), StdOutSink())
