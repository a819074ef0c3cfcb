"""One scorer per model per process, shared by every shard (and worker thread) of that process.

Shards refer to models by digest; the cache builds a model the first time any shard asks for it and
closes it when the last shard lets go. A model that failed to build is remembered, so the same bad
bytes are not unpacked once per shard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flows.records import ModelDescriptor
from flows.scorers.base import ModelLoadError, Scorer, build_scorer

MAX_REMEMBERED_FAILURES = 64


@dataclass(slots=True)
class _Entry:
    scorer: Scorer
    references: int
    load_ms: float


class ScorerCache:
    """Reference-counted scorers keyed by model digest."""

    def __init__(self, build: Callable[[ModelDescriptor], Scorer] = build_scorer) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._failures: dict[str, ModelLoadError] = {}
        self.builds = 0

    def acquire(self, descriptor: ModelDescriptor) -> tuple[Scorer, float]:
        """The scorer for `descriptor` and the ms it took to build (0 when shared), or ModelLoadError."""
        digest = descriptor.digest
        # Building under the lock: two workers asking for the same new model must not both load it.
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                entry.references += 1
                return entry.scorer, 0.0
            if digest in self._failures:
                raise self._failures[digest]
            started = time.perf_counter()
            try:
                scorer = self._build(descriptor)
            except ModelLoadError as error:
                if error.retryable:
                    raise
                if len(self._failures) >= MAX_REMEMBERED_FAILURES:
                    self._failures.pop(next(iter(self._failures)))
                self._failures[digest] = error
                raise
            self.builds += 1
            load_ms = (time.perf_counter() - started) * 1000
            self._entries[digest] = _Entry(scorer, 1, load_ms)
            return scorer, load_ms

    def release(self, digest: str) -> None:
        """Let go of one reference; the last one closes the scorer."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return
            entry.references -= 1
            if entry.references <= 0:
                del self._entries[digest]
                entry.scorer.close()

    def loaded(self) -> list[str]:
        """Digests of the models loaded in this process."""
        with self._lock:
            return list(self._entries)


# The process-wide cache the dataflow uses. Scorers are never part of Bytewax state: state must be
# picklable, and a process must load a model once however many shards it holds.
SCORERS = ScorerCache()
