"""Unpacking and inspecting a model in a child process that the flow can kill.

CPython's tarfile has had bugs that fire while it reads headers (an endless loop on a negative size, a
quadratic regex on pax headers, headers of gigabytes read whole), and compressed input can expand a
million-fold. No check made in this process after `tarfile` has read the headers can stop those, and a
thread cannot be killed. A child process can: it limits its own address space, CPU time, file sizes and
open files (`unpack_child`), and this side kills it at a wall-clock deadline. The child also inspects the
SavedModel's graph, so a huge or hostile `saved_model.pb` is parsed under the same limits, and opens an
ONNX model and scores its trial batches there (`flows.core.admission.onnx_trial`), so a model that
allocates gigabytes or runs for minutes is refused, not run in the flow. A refusal by a limit names the stage
the child had reached (it writes each to stderr before it starts it).
Start-up of the child costs ~50 ms (~0.3 s with ONNX Runtime), paid once per new model.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.unpack_child import STAGE_PREFIX
from flows.core.errors import ServingError
from flows.core.model_formats import SAVED_MODEL

MAX_VERDICT_BYTES = 64 * 1024
CHILD_COMMAND = (sys.executable, "-m", "flows.core.admission.unpack_child")


class UnpackRefused(ServingError, ValueError):
    """The child refused the model, or was stopped by a limit; the message says which."""


def unpack_and_inspect(
    payload: bytes | None, target: Path, policy: AdmissionPolicy, model_format: str = SAVED_MODEL
) -> dict:
    """Unpack `payload` (a tar archive, maybe compressed) into `target` and inspect the model there: a
    SavedModel, or with `model_format` ONNX (`flows.core.admission.onnx_graph`), its `model.onnx`.

    With `payload` None, only the model already in `target` is inspected. Returns the child's verdict
    (with `trial`, the figures of an ONNX model's trial run); raises `UnpackRefused` naming the cause: a
    rule the archive breaks, a forbidden op, a trial that failed, or the limit that stopped the child.
    """
    with tempfile.TemporaryDirectory(prefix="model-unpack-") as scratch:
        job = {
            "target": str(target),
            "payload": None,
            "max_unpacked_bytes": policy.max_unpacked_bytes,
            "max_files": policy.max_files,
            "memory_bytes": policy.unpack_memory,
            "cpu_seconds": max(1, math.ceil(policy.unpack_timeout)),
            "allowed_ops": sorted(policy.allowed_ops),
            "format": model_format,
            "max_batch_pairs": policy.max_batch_pairs,
            "output_range": list(policy.output_range),
            "max_call_seconds": policy.max_call_seconds,
        }
        if payload is not None:
            job["payload"] = os.path.join(scratch, "payload")
            with open(job["payload"], "wb") as payload_file:
                payload_file.write(payload)
        return _run_child(job, Path(scratch), policy.unpack_timeout)


def _run_child(job: dict, scratch: Path, timeout_s: float) -> dict:
    stderr_path = scratch / "stderr"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            list(CHILD_COMMAND),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=scratch,
        )
        try:
            output, _ = child.communicate(json.dumps(job).encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            stage = _last_stage(stderr_path)
            raise UnpackRefused(
                f"admission child did not finish within {timeout_s:g} s and was stopped while {stage} "
                "(SERVING_MODEL_UNPACK_TIMEOUT)"
            ) from None
    if child.returncode == -signal.SIGXCPU or child.returncode == -signal.SIGKILL:
        raise UnpackRefused(
            f"admission child used up its {job['cpu_seconds']} s of CPU and was stopped while "
            f"{_last_stage(stderr_path)} (SERVING_MODEL_UNPACK_TIMEOUT)"
        )
    verdict = _verdict(output[:MAX_VERDICT_BYTES])
    if verdict is None:
        stage = _last_stage(stderr_path)
        tail = [
            line
            for line in stderr_path.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
            if not line.startswith(STAGE_PREFIX)
        ]
        last = tail[-1][:300] if tail else "no output"
        if "MemoryError" in last or "bad_alloc" in last or child.returncode == -signal.SIGABRT:
            raise UnpackRefused(
                f"admission child ran out of its memory limit (SERVING_MODEL_UNPACK_MEMORY) while {stage}"
                f" (exit status {child.returncode}: {last})"
            )
        raise UnpackRefused(f"admission child failed while {stage} (exit status {child.returncode}): {last}")
    if not verdict.get("ok"):
        raise UnpackRefused(str(verdict.get("reason", "refused"))[:1000])
    return verdict


def _last_stage(stderr_path: Path) -> str:
    """What the child said it was doing last (see `unpack_child`), from the end of its stderr."""
    with open(stderr_path, "rb") as stderr:
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 64 * 1024))
        lines = stderr.read().decode(errors="replace").splitlines()
    stages = [line[len(STAGE_PREFIX) :] for line in lines if line.startswith(STAGE_PREFIX)]
    return stages[-1][:200] if stages else "starting"


def _verdict(output: bytes) -> dict | None:
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None
