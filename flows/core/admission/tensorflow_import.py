"""Importing TensorFlow without its start-up noise, in the flow (`flows.adapters.scorers.tensorflow_runtime`)
and in the admission child that runs a SavedModel's trial (`flows.core.admission.unpack_child`).

TensorFlow's C++ runtime writes a dozen lines to stderr at import and at first device use (oneDNN, CUDA
drivers not found, ...), before its log settings take effect, so no environment variable silences them.
Users of the console see only our output, and the admission child's stderr holds only its stage lines:
stderr is muted for the import and device discovery, and errors still surface as Python exceptions.
"""

from __future__ import annotations

import os
from types import ModuleType


def import_quietly() -> ModuleType:
    """The `tensorflow` module, imported with stderr muted and TensorFlow's C++ log level at warnings."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    return tf
