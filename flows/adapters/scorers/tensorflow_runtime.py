"""Importing TensorFlow without its start-up noise.

TensorFlow's C++ runtime writes a dozen lines to stderr at import and at first device use (oneDNN, CUDA
drivers not found, ...), before its log settings take effect, so no environment variable silences them.
Users of the console see only our output: stderr is muted for the import and device discovery, and
errors still surface as Python exceptions. `SERVING_TF_VERBOSE=1` shows everything.
"""

from __future__ import annotations

import gc
import os
import threading
from types import ModuleType

_lock = threading.Lock()
_tensorflow: ModuleType | None = None


def tensorflow(verbose: bool = False) -> ModuleType:
    """The `tensorflow` module, imported on first use: quietly, unless `verbose` (`SERVING_TF_VERBOSE`,
    which the main job passes when it imports TensorFlow first)."""
    global _tensorflow
    with _lock:
        if _tensorflow is None:
            if verbose:
                import tensorflow as tf

                _tensorflow = tf
            else:
                _tensorflow = _import_quietly()
            # TensorFlow's import leaves ~280,000 objects that the garbage collector tracks and that live as
            # long as the process. Every full collection rescanned them (~160 ms each on the 2-core machine);
            # in-flight records that survive young collections trigger one about every 10,000 records, which
            # took ~2 s of a 100,000-record Kafka benchmark. Frozen, collections skip them. (Everything alive
            # now is frozen; reference counting still frees it, only cycles among these objects would stay.)
            gc.freeze()
        return _tensorflow


def _import_quietly() -> ModuleType:
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
