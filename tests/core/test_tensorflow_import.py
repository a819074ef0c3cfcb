"""TensorFlow's quiet import: its own stderr lines are dropped, and whatever else the process writes to stderr
meanwhile (another thread's log line, an unfinished last line) still reaches it."""

from __future__ import annotations

import os
import threading

import pytest

from flows.core.admission.tensorflow_import import StderrWithoutTensorFlowNoise

TENSORFLOW_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796689662.497527    2978 cudart_stub.cc:31] Could not find cuda drivers.\n",
    b"E0000 00:00:1796689669.832155    2978 cuda_platform.cc:52] failed call to cuInit: INTERNAL: (303)\n",
)


def test_tensorflow_lines_are_dropped_and_every_other_line_reaches_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with StderrWithoutTensorFlowNoise():
        os.write(2, TENSORFLOW_LINES[0])
        os.write(2, b"ERROR flows.core.scoring: record 7 failed\n")
        worker = threading.Thread(target=os.write, args=(2, b"a worker's line, written meanwhile\n"))
        worker.start()
        worker.join()
        for line in TENSORFLOW_LINES[1:]:
            os.write(2, line)
        os.write(2, b"a last line without its end")
    assert capfd.readouterr().err.splitlines() == [
        "ERROR flows.core.scoring: record 7 failed",
        "a worker's line, written meanwhile",
        "a last line without its end",
    ]
    os.write(2, TENSORFLOW_LINES[1])  # after the import, stderr is itself again: nothing is dropped
    assert capfd.readouterr().err == TENSORFLOW_LINES[1].decode()
