"""Importing TensorFlow without its start-up noise, in the flow (`flows.adapters.scorers.tensorflow_runtime`)
and in the admission child that runs a SavedModel's trial (`flows.core.admission.unpack_child`).

TensorFlow's C++ runtime writes a few lines to stderr at import and at first device use (CUDA drivers not
found, cuInit failed, ...), before its log settings take effect, so no environment variable silences them.
Users of the console see only our output, and the admission child's stderr holds only its stage lines.

The flow imports TensorFlow on a model-load thread while its workers keep scoring and logging, so stderr
cannot simply be muted for the import: whatever else the process wrote to it meanwhile (a record's error,
a Python traceback, librdkafka) would be lost. Instead, for the import, stderr is a pipe whose lines are
passed on to the real stderr unless they are TensorFlow's own log lines.
"""

from __future__ import annotations

import os
import re
import threading
from types import ModuleType

# TensorFlow's C++ log lines (`I0000 00:00:1796689662.497527    2978 cudart_stub.cc:31] Could not find ...`)
# and absl's notice before them.
TENSORFLOW_NOISE = re.compile(
    rb"[IWEF]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\)"
)


def import_quietly() -> ModuleType:
    """The `tensorflow` module, imported with its own stderr lines dropped and its C++ log level at
    warnings; every other line written to stderr meanwhile reaches it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with StderrWithoutTensorFlowNoise():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


class StderrWithoutTensorFlowNoise:
    """While open, file descriptor 2 is a pipe; a thread passes its lines on to the real stderr, except
    TensorFlow's. On close, stderr is restored and every line written before is passed on."""

    def __enter__(self) -> None:
        self._stderr = os.dup(2)
        reading, writing = os.pipe()
        self._relay = threading.Thread(
            target=_relay, args=(reading, self._stderr), name="tensorflow-import-stderr", daemon=True
        )
        self._relay.start()
        os.dup2(writing, 2)
        os.close(writing)

    def __exit__(self, *_exception: object) -> None:
        os.dup2(self._stderr, 2)  # the pipe's last writer is gone: the relay reads to its end, then stops
        self._relay.join()
        os.close(self._stderr)


def _relay(reading: int, stderr: int) -> None:
    with os.fdopen(reading, "rb") as pipe:
        for line in pipe:
            if not TENSORFLOW_NOISE.match(line):
                os.write(stderr, line)
