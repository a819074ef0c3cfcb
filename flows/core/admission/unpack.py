"""Unpacking and inspecting a model in a child process that the flow can kill.

CPython's tarfile has had bugs that fire while it reads headers (an endless loop on a negative size, a
quadratic regex on pax headers, headers of gigabytes read whole), and compressed input can expand a
million-fold. No check made in this process after `tarfile` has read the headers can stop those, and a
thread cannot be killed. A child process can: it limits its own address space, CPU time, file sizes and
open files (`unpack_child`), and this side kills it at a wall-clock deadline. The child also inspects the
SavedModel's graph, so a huge or hostile `saved_model.pb` is parsed under the same limits, and tries the
model: it opens an ONNX model and scores its trial batches there (`flows.core.admission.onnx_trial`),
imports TensorFlow, loads a SavedModel and scores them (`flows.core.admission.saved_model_trial`), or vets
a PMML document, imports the PMML evaluator and scores them (`flows.core.admission.pmml_trial`), so a
model that allocates gigabytes or runs for minutes is refused, not run in the flow. A refusal by a limit
names the limit and the stage the child had reached (it writes each to stderr before it starts it).

The wall clock has steps: unpacking and inspection (and an ONNX model's trial) get
`SERVING_MODEL_UNPACK_TIMEOUT`; for a SavedModel, TensorFlow's import then gets
`SERVING_MODEL_TF_IMPORT_TIMEOUT` from the child's `IMPORT_STAGE` line, and the trial
`SERVING_MODEL_UNPACK_TIMEOUT` again from its `TRIAL_STAGE` line: a slow import (it is the machine's cost,
5 to 13 s on a loaded 2-core machine) does not shorten the trial's time, and a slow model gets no more than
the trial's. A PMML model's evaluator import and trial get `SERVING_MODEL_UNPACK_TIMEOUT` each, from
their stage lines, the same way. The child reports its stages before any model code runs, so a model cannot
move a clock.
An inline SavedModel that passed its trial is not tried again in this process (`_PassedTrials`), and one
whose files are those of a model shipped with the package is trusted as the package is, without a trial
(`flows.core.admission.tree_digest`): the main job's default and most tests serve those.
Start-up of the child costs ~50 ms (~0.3 s with ONNX Runtime; with TensorFlow, its import), paid once per
new model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.unpack_child import (
    IMPORT_STAGE,
    MEMORY_EXIT_STATUS,
    PMML_IMPORT_STAGE,
    PMML_TRIAL_STAGE,
    STAGE_PREFIX,
    TRIAL_STAGE,
)
from flows.core.errors import ServingError
from flows.core.model_formats import PMML, PMML_MODEL_FILE, SAVED_MODEL
from flows.core.shipped import shipped_saved_models

MAX_VERDICT_BYTES = 64 * 1024
CHILD_COMMAND = (sys.executable, "-m", "flows.core.admission.unpack_child")
POLL_S = 0.1  # how often the child's stderr is read for the stage that starts the next clock
REMEMBERED_TRIALS = 64
HEAD_BYTES = 64 * 1024  # the clocks' stage lines come before any model runs: near the start of stderr
_XML_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*<")  # a byte-order mark, white space, then `<`


@dataclass(frozen=True)
class Clock:
    """A step of the child with its own limit of `seconds` (wall clock, and CPU), from the stage line
    `starts_at` on (None: from the start); `step` names it in a refusal, `setting` names the limit."""

    starts_at: str | None
    seconds: float
    step: str
    setting: str

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.seconds))


class UnpackRefused(ServingError, ValueError):
    """The child refused the model, or was stopped by a limit; the message says which."""


def unpack_and_inspect(
    payload: bytes | None, target: Path, policy: AdmissionPolicy, model_format: str = SAVED_MODEL
) -> dict:
    """Unpack `payload` (a tar archive, maybe compressed) into `target`, inspect the model there and try
    it: a SavedModel, or with `model_format` ONNX (`flows.core.admission.onnx_graph`), its `model.onnx`.

    With `payload` None, the model already in `target` is inspected and tried. Returns the child's verdict
    (with `trial`, the figures of the model's trial run); raises `UnpackRefused` naming the cause: a rule
    the archive breaks, a forbidden op, a trial that failed, or the limit that stopped the child.
    """
    clocks = _clocks(policy, model_format)
    limits = {  # what the child applies: the verdict depends on these and the bytes alone
        "max_unpacked_bytes": policy.max_unpacked_bytes,
        "max_files": policy.max_files,
        "memory_bytes": policy.unpack_memory,
        "cpu_seconds": clocks[0].cpu_seconds,
        "allowed_ops": sorted(policy.allowed_ops),
        "format": model_format,
        "max_batch_pairs": policy.max_batch_pairs,
        "output_range": list(policy.output_range),
        "max_call_seconds": policy.max_call_seconds,
        "import_seconds": clocks[1].cpu_seconds,
        "trial_seconds": clocks[2].cpu_seconds,
        "trial_memory_bytes": policy.trial_memory,
    }
    remembered = _remembered_key(payload, limits)
    figures = _passed_trials.get(remembered) if remembered else None
    trial = model_format == SAVED_MODEL and figures is None
    staged = trial or model_format == PMML  # the child runs an import and a trial on clocks of their own
    if model_format == PMML and payload is not None and _is_xml(payload):
        (target / PMML_MODEL_FILE).write_bytes(payload)  # a bare document: nothing to unpack
        payload = None
    with tempfile.TemporaryDirectory(prefix="model-unpack-") as scratch:
        job = {
            **limits,
            "target": str(target),
            "payload": None,
            "saved_model_trial": trial,
            "shipped_saved_models": shipped_saved_models() if trial else {},
        }
        if payload is not None:
            job["payload"] = payload_path = os.path.join(scratch, "payload")
            with open(payload_path, "wb") as payload_file:
                payload_file.write(payload)
        verdict = _run_child(job, Path(scratch), clocks if staged else clocks[:1], policy)
    if figures is not None:
        return {**verdict, "trial": figures}
    if remembered and verdict.get("trial") is not None:
        _passed_trials.put(remembered, verdict["trial"])
    return verdict


class _PassedTrials:
    """The trial figures of the last `REMEMBERED_TRIALS` inline SavedModels that passed, by `_remembered_key`.

    The same bytes under the same limits pass the same trial, and a SavedModel's costs 5 to 13 s (the child
    imports TensorFlow): a champion promoted from canary, re-described or republished under a new name is
    the same model again. Its archive is still unpacked and inspected in the child, for the files. A model
    at a local path is tried every time: the files there may have changed. A new process starts empty.
    """

    def __init__(self) -> None:
        self._figures: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            if key in self._figures:
                self._figures.move_to_end(key)
            return self._figures.get(key)

    def put(self, key: str, figures: dict) -> None:
        with self._lock:
            self._figures[key] = figures
            while len(self._figures) > REMEMBERED_TRIALS:
                self._figures.popitem(last=False)


_passed_trials = _PassedTrials()


def _remembered_key(payload: bytes | None, limits: dict) -> str | None:
    """The key of an inline SavedModel's trial verdict: its bytes and the limits the child applies."""
    if payload is None or limits["format"] != SAVED_MODEL:
        return None
    digest = hashlib.sha256(payload)
    digest.update(json.dumps(limits, sort_keys=True).encode())
    return digest.hexdigest()


def _clocks(policy: AdmissionPolicy, model_format: str) -> list[Clock]:
    """The child's steps and their limits (see the module docstring): the first alone unless the child
    runs a SavedModel's or a PMML model's trial."""
    unpacking = Clock(None, policy.unpack_timeout, "", "SERVING_MODEL_UNPACK_TIMEOUT")
    if model_format == PMML:
        return [
            unpacking,
            Clock(
                PMML_IMPORT_STAGE,
                policy.unpack_timeout,
                " importing the PMML evaluator",
                "SERVING_MODEL_UNPACK_TIMEOUT",
            ),
            Clock(PMML_TRIAL_STAGE, policy.unpack_timeout, " its trial", "SERVING_MODEL_UNPACK_TIMEOUT"),
        ]
    return [
        unpacking,
        Clock(
            IMPORT_STAGE,
            policy.tf_import_timeout,
            " importing TensorFlow",
            "SERVING_MODEL_TF_IMPORT_TIMEOUT",
        ),
        Clock(TRIAL_STAGE, policy.unpack_timeout, " its trial", "SERVING_MODEL_UNPACK_TIMEOUT"),
    ]


def _is_xml(payload: bytes) -> bool:
    """Whether an inline PMML payload is the document itself rather than an archive holding it: XML starts
    with `<` (after a byte-order mark or white space); no tar header or compressed stream does."""
    return _XML_START.match(payload) is not None


def _run_child(job: dict, scratch: Path, clocks: list[Clock], policy: AdmissionPolicy) -> dict:
    stderr_path = scratch / "stderr"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            list(CHILD_COMMAND),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=scratch,
        )
        job_bytes: bytes | None = json.dumps(job).encode()
        step, deadline = 0, time.monotonic() + clocks[0].seconds
        while True:
            polling = step + 1 < len(clocks)  # a later clock may start: watch for its stage line
            wait = max(0.0, deadline - time.monotonic())
            try:
                output, _ = child.communicate(job_bytes, timeout=min(wait, POLL_S) if polling else wait)
                break
            except subprocess.TimeoutExpired:
                job_bytes = None  # sent (or being sent) already: communicate goes on with the rest
            reached = _step_reached(stderr_path, clocks)
            if reached > step:
                step, deadline = reached, time.monotonic() + clocks[reached].seconds
            elif time.monotonic() >= deadline:
                child.kill()
                child.wait()
                clock = clocks[step]
                raise UnpackRefused(
                    f"admission child did not finish{clock.step} within {clock.seconds:g} s and was stopped "
                    f"while {_last_stage(stderr_path)} ({clock.setting})"
                ) from None
    clock = clocks[_step_reached(stderr_path, clocks)]
    if child.returncode == -signal.SIGXCPU or child.returncode == -signal.SIGKILL:
        raise UnpackRefused(
            f"admission child used up its {clock.cpu_seconds} s of CPU{clock.step} and was stopped while "
            f"{_last_stage(stderr_path)} ({clock.setting})"
        )
    if child.returncode == MEMORY_EXIT_STATUS:
        raise UnpackRefused(
            f"admission child went past its resident memory limit of {policy.trial_memory / 1024**2:,.0f} "
            f"MiB (SERVING_MODEL_TRIAL_MEMORY) while {_last_stage(stderr_path)}"
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


def _step_reached(stderr_path: Path, clocks: list[Clock]) -> int:
    """The last of `clocks` whose starting stage line the child has written, in order."""
    with open(stderr_path, "rb") as stderr:
        lines = stderr.read(HEAD_BYTES).decode(errors="replace").splitlines()
    step = 0
    for line in lines:
        if step + 1 < len(clocks) and line == f"{STAGE_PREFIX}{clocks[step + 1].starts_at}":
            step += 1
    return step


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
