"""One scorer per model per process, loaded in the background, shared by every shard of that process.

Loading a model (unpacking, inspecting, TensorFlow's load, the probe) takes from milliseconds to the
load deadline, so it never runs on the dataflow's step: `request` starts it on a thread of its own and
returns a `ModelLoad` the caller polls, scoring with its current model meanwhile. Shards refer to models
by digest; the cache loads a model the first time any shard asks for it and closes it when the last shard
lets go. A model that failed to load is remembered, so the same bad bytes are not judged once per shard.

At most `max_loads` loads run at once (SERVING_MODEL_MAX_LOADS): each costs a thread, an unpacking child
and the model's memory, and a flood of model messages once ran 27 of them together (memory 0.7 -> 2.0 GB,
record latency up to 51 s). The others wait in arrival order, their deadline running; one released while it
waits (the holder drops a model a newer one of its role has superseded) is never loaded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import ModelDescriptor
from flows.core.scorer import ModelLoadError, Scorer, build_scorer

MAX_REMEMBERED_FAILURES = 64


class ModelLoad:
    """A model being loaded for this process: poll `ready()`, then take `result()`.

    A load that has not finished by its deadline counts as failed (the import of a runtime, paused by
    `deadline_paused`, does not count towards it); its thread cannot be stopped, but whatever it produces
    later is closed and never served (the costly, hostile part, unpacking, runs in a child process that is
    killed at its own deadline).
    """

    def __init__(self, descriptor: ModelDescriptor, timeout_s: float) -> None:
        self.descriptor = descriptor
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self._paused_at: float | None = None  # since when a runtime's import has paused the deadline
        self._paused_s = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._scorer: Scorer | None = None
        self._error: ModelLoadError | None = None
        self._discarded = False
        self._running = False
        self.load_ms = 0.0
        self.settled: Callable[[ModelLoad], None] = lambda _load: None

    def queued(self) -> bool:
        """Whether the load waits for its turn (see `ScorerCache`): nothing has been spent on it yet."""
        return not self._running and not self._done.is_set()

    def ready(self) -> bool:
        """Whether the load has finished, failed or run out of time (then `result` does not block)."""
        if self._done.is_set():
            return True
        if self._elapsed_s() >= self.timeout_s:
            reason = f"loading did not finish within {self.timeout_s:g} s (SERVING_MODEL_LOAD_TIMEOUT)"
            self._settle(None, ModelLoadError(self.descriptor.model_name, reason, retryable=True))
        return self._done.is_set()

    def result(self) -> tuple[Scorer, float]:
        """The scorer and its load time in ms, or the ModelLoadError; call only once `ready()`."""
        if self._error is not None:
            raise self._error
        assert self._scorer is not None, "result() before ready()"
        return self._scorer, self.load_ms

    def join(self) -> None:
        """Block until ready, at most until the deadline: for tools, tests and the end of the input."""
        while not self.ready():
            self._done.wait(min(max(0.01, self.timeout_s - self._elapsed_s()), 1.0))

    def _elapsed_s(self) -> float:
        """Seconds that count towards the deadline: since the load started, less its runtime's import."""
        paused_at = self._paused_at
        now = time.monotonic()
        return now - self.started - self._paused_s - (now - paused_at if paused_at is not None else 0.0)

    def wait(self) -> tuple[Scorer, float]:
        """`join`, then `result()`."""
        self.join()
        return self.result()

    @property
    def error(self) -> ModelLoadError | None:
        """Why the load failed, once it has (None while loading or after success)."""
        return self._error if self._done.is_set() else None

    @property
    def discarded(self) -> bool:
        return self._discarded

    def discard(self) -> None:
        """Nobody wants this model any more: close its scorer now, or when its load finishes."""
        with self._lock:
            self._discarded = True
            scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.close()

    def run(self, build: Callable[[ModelDescriptor], Scorer]) -> None:
        """The load itself; runs on the load's own thread."""
        _this_thread.load = self
        try:
            scorer = build(self.descriptor)
        except ModelLoadError as error:
            self._settle(None, error)
        except Exception as error:  # noqa: BLE001 (a load may raise anything; the flow must not die of it)
            name = self.descriptor.model_name
            self._settle(None, ModelLoadError(name, f"{type(error).__name__}: {error}"))
        else:
            self._settle(scorer, None)
        finally:
            _this_thread.load = None

    def _settle(self, scorer: Scorer | None, error: ModelLoadError | None) -> None:
        with self._lock:
            late = self._done.is_set() or self._discarded
            if not late:
                self._scorer, self._error = scorer, error
                self.load_ms = (time.monotonic() - self.started) * 1000
                self._done.set()
        if late:
            if scorer is not None:
                scorer.close()  # finished after its deadline, or after everyone let go
            return
        self.settled(self)


_this_thread = threading.local()  # `load`: the ModelLoad a model-load thread runs


@contextmanager
def deadline_paused() -> Iterator[None]:
    """Time spent inside does not count towards the deadline of the model this thread loads, if any: for the
    import of a runtime (TensorFlow's took 72 s on two busy cores), which is this flow's cost, the same for
    every model, and not the model's. The model's own costs (unpacking, its trial, its load) stay bounded."""
    load: ModelLoad | None = getattr(_this_thread, "load", None)
    if load is None:
        yield
        return
    load._paused_at = time.monotonic()
    try:
        yield
    finally:
        load._paused_s += time.monotonic() - load._paused_at
        load._paused_at = None


@dataclass(slots=True)
class _Entry:
    load: ModelLoad
    references: int


class ScorerCache:
    """Reference-counted scorers keyed by model digest, loaded in the background."""

    def __init__(
        self,
        policy: AdmissionPolicy | None = None,
        build: Callable[[ModelDescriptor, AdmissionPolicy], Scorer] = build_scorer,
    ) -> None:
        self.policy = policy if policy is not None else AdmissionPolicy()
        self._build = build
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._failures: dict[str, ModelLoadError] = {}
        self._waiting: deque[ModelLoad] = deque()
        self._running = 0
        self.builds = 0
        self.most_running = 0  # the most loads that ran at once, for tests and benchmarks

    def request(self, descriptor: ModelDescriptor) -> ModelLoad:
        """Take a reference to `descriptor`'s model and return its load (started now if it is new)."""
        digest = descriptor.digest
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                entry.references += 1
                return entry.load
            load = ModelLoad(descriptor, self.policy.load_timeout)
            if digest in self._failures:
                load._settle(None, self._failures[digest])
                return load
            load.settled = self._settled
            self._entries[digest] = _Entry(load, 1)
            self._waiting.append(load)
        self._start_waiting()
        return load

    def _start_waiting(self) -> None:
        """Start waiting loads while fewer than the policy's `max_loads` run; skip those nobody wants."""
        while True:
            with self._lock:
                if self._running >= self.policy.max_loads or not self._waiting:
                    return
                load = self._waiting.popleft()
                if load.discarded or load.ready():  # released, or past its deadline, while it waited
                    continue
                load._running = True
                self._running += 1
                self.most_running = max(self.most_running, self._running)
                self.builds += 1
            thread = threading.Thread(
                target=self._run, args=(load,), name=f"model-load-{load.descriptor.digest}", daemon=True
            )
            thread.start()

    def _run(self, load: ModelLoad) -> None:
        try:
            load.run(lambda descriptor: self._build(descriptor, self.policy))
        finally:
            with self._lock:
                self._running -= 1
            self._start_waiting()

    def acquire(self, descriptor: ModelDescriptor) -> tuple[Scorer, float]:
        """`request` and wait for the load: the scorer and its load ms, or ModelLoadError (blocking)."""
        return self.request(descriptor).wait()

    def release(self, digest: str) -> None:
        """Let go of one reference; the last one closes the scorer (or discards a load in progress)."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return
            entry.references -= 1
            if entry.references > 0:
                return
            del self._entries[digest]
        entry.load.discard()

    def loaded(self) -> list[str]:
        """Digests of the models loaded (or loading) in this process."""
        with self._lock:
            return list(self._entries)

    def _settled(self, load: ModelLoad) -> None:
        error = load.error
        if error is None:
            return
        digest = load.descriptor.digest
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry.load is load:
                del self._entries[digest]
            if not error.retryable:
                if len(self._failures) >= MAX_REMEMBERED_FAILURES:
                    self._failures.pop(next(iter(self._failures)))
                self._failures[digest] = error
