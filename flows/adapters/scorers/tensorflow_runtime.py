"""TensorFlow in the flow's process: imported once, with the first TensorFlow model (an embedded SavedModel,
or a TensorFlow Serving server over gRPC, whose messages are TensorFlow's), on that model's load thread.

A flow that serves only ONNX, PMML or REST models never imports it (about 670 MB of resident memory and
seconds of start-up on the 2-core machine). The import runs off the scoring path: the workers keep scoring
with the models they have while it runs. It is quiet (`flows.core.admission.tensorflow_import` says how)
unless `SERVING_TF_VERBOSE` is on, and its objects are frozen for the garbage collector.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from types import ModuleType

from flows.core.admission.tensorflow_import import import_quietly
from flows.core.scorer_cache import deadline_paused

log = logging.getLogger(__name__)
_lock = threading.Lock()
_tensorflow: ModuleType | None = None
_verbose = False


def show_start_up_output(verbose: bool) -> None:
    """Whether TensorFlow's own start-up output reaches stderr when it is imported (`SERVING_TF_VERBOSE`)."""
    global _verbose
    _verbose = verbose


def tensorflow() -> ModuleType:
    """The `tensorflow` module, imported on first use. A model load that imports it, or waits for another
    load's import, has its deadline paused meanwhile (`deadline_paused`): the import is this flow's cost,
    not the model's."""
    global _tensorflow
    if _tensorflow is not None:
        return _tensorflow
    with deadline_paused(), _lock:
        if _tensorflow is None:
            started = time.monotonic()
            if _verbose:
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
            seconds = time.monotonic() - started
            log.info("TensorFlow imported in %.1f s, for the first TensorFlow model", seconds)
        return _tensorflow
