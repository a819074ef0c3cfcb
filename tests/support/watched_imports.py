"""The main job with the first import of each runtime announced, and TensorFlow's held until a test lets
it go: `python -m bytewax.run support.watched_imports` with `tests/` on the path.

A finder ahead of Python's own sees every import of a top-level package that is not loaded yet, from any
module and any thread. For each package of `WATCHED`, it appends "THREAD imports NAME" to the file
SERVING_TEST_IMPORT_LOG once; TensorFlow's import off the main thread then waits until the file
SERVING_TEST_TENSORFLOW_GATE exists (at most `GATE_LIMIT_S`), so a test can watch the flow answer records
while the import is under way. (One on the main thread, at start, is not held: it would hold the start.)
"""

import importlib.abc
import os
import sys
import threading
import time
from pathlib import Path

IMPORT_LOG = Path(os.environ["SERVING_TEST_IMPORT_LOG"])
TENSORFLOW_GATE = Path(os.environ["SERVING_TEST_TENSORFLOW_GATE"])
WATCHED = frozenset({"tensorflow", "grpc", "tritonclient", "tensorflow_serving", "sklearn_pmml_model"})
GATE_LIMIT_S = 600


class AnnouncedImports(importlib.abc.MetaPathFinder):
    """Announces the first import of each watched package and holds TensorFlow's; finds nothing itself."""

    def __init__(self) -> None:
        self.announced: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in WATCHED and name not in self.announced:
            self.announced.add(name)
            with IMPORT_LOG.open("a", encoding="utf-8") as log:
                log.write(f"{threading.current_thread().name} imports {name}\n")
            if name == "tensorflow" and threading.current_thread() is not threading.main_thread():
                deadline = time.monotonic() + GATE_LIMIT_S
                while not TENSORFLOW_GATE.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)


sys.meta_path.insert(0, AnnouncedImports())

# The finder must be in place before the job imports anything.
from flows.serving import flow

__all__ = ["flow"]
