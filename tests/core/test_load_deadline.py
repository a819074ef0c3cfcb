"""A model load's deadline (SERVING_MODEL_LOAD_TIMEOUT) bounds the model's own costs; the import of a runtime
(`deadline_paused`, around TensorFlow's first import) does not count towards it, whatever it takes."""

from __future__ import annotations

import threading
import time

from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.scorer_cache import ModelLoad, deadline_paused

DEADLINE_S = 0.2
DESCRIPTOR = ModelDescriptor("slow-runtime", "", ModelType.ONNX, b"model")


class Loaded:
    source, input_bounds = "stand-in", None

    def close(self) -> None:
        pass


def load_in_thread(build):
    load = ModelLoad(DESCRIPTOR, DEADLINE_S)
    threading.Thread(target=load.run, args=(build,), daemon=True).start()
    return load


def test_a_runtime_import_past_the_deadline_does_not_fail_the_load() -> None:
    importing, imported = threading.Event(), threading.Event()

    def build(_descriptor: ModelDescriptor) -> Loaded:
        with deadline_paused():
            importing.set()
            imported.wait(30)
        return Loaded()

    load = load_in_thread(build)
    assert importing.wait(30)
    time.sleep(DEADLINE_S * 3)  # well past the deadline, still importing
    assert not load.ready() and load.error is None
    imported.set()
    scorer, load_ms = load.wait()
    assert isinstance(scorer, Loaded) and load_ms >= DEADLINE_S * 3 * 1000  # the event tells the real time


def test_the_models_own_time_still_counts_before_and_after_the_import() -> None:
    finished = threading.Event()

    def build(_descriptor: ModelDescriptor) -> Loaded:
        with deadline_paused():
            pass
        finished.wait(30)  # the model's own cost: past the deadline
        return Loaded()

    load = load_in_thread(build)
    load.join()
    assert load.error is not None and "loading did not finish within 0.2 s" in load.error.reason
    finished.set()
