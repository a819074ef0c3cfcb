"""TensorFlow in the flow's process: imported once, quietly (`flows.core.admission.tensorflow_import`
says why and how), its import's objects frozen for the garbage collector. `SERVING_TF_VERBOSE=1` shows
TensorFlow's start-up output.
"""

from __future__ import annotations

import gc
import threading
from types import ModuleType

from flows.core.admission.tensorflow_import import import_quietly

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
                _tensorflow = import_quietly()
            # TensorFlow's import leaves ~280,000 objects that the garbage collector tracks and that live as
            # long as the process. Every full collection rescanned them (~160 ms each on the 2-core machine);
            # in-flight records that survive young collections trigger one about every 10,000 records, which
            # took ~2 s of a 100,000-record Kafka benchmark. Frozen, collections skip them. (Everything alive
            # now is frozen; reference counting still frees it, only cycles among these objects would stay.)
            gc.freeze()
        return _tensorflow
