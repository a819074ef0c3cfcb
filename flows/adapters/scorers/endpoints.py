"""Spreading requests over several servers, skipping the ones that fail, retrying with backoff.

The original design relied on a proxy (Ambassador) for this; doing it in the client means a list of
servers in the model location is enough, and a proxy in front still works (it is just one server).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from flows.core.errors import ServingError
from flows.core.scorer import ScorerUnavailable

Client = TypeVar("Client")
Result = TypeVar("Result")

FIRST_BACKOFF_S = 0.05
LONGEST_SKIP_S = 2.0
LONGEST_BACKOFF_S = 0.4  # between retries of one request: retries are capped, and so is each wait


class TransientError(ServingError):
    """A failure another server, or the same one a little later, may not have: refused, timed out,
    overloaded."""


@dataclass(slots=True)
class _Endpoint(Generic[Client]):
    address: str
    client: Client
    failures: int = 0  # consecutive
    skip_until: float = 0.0  # monotonic seconds


class EndpointPool(Generic[Client]):
    """Round-robin over servers; a server that failed is skipped for a while, growing with each failure.

    When its time is up, the next request tries it again, so a server that is back gets traffic within
    LONGEST_SKIP_S. When every server is being skipped, the one due soonest is tried anyway: scoring
    resumes as soon as any server answers. Shared by the worker threads of a process, hence the lock.
    """

    def __init__(
        self,
        clients: dict[str, Client],
        retries: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._endpoints = [_Endpoint(address, client) for address, client in clients.items()]
        self._retries = retries
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0

    @property
    def clients(self) -> list[Client]:
        return [endpoint.client for endpoint in self._endpoints]

    def call(self, request: Callable[[Client], Result]) -> Result:
        """`request` on one server; on a TransientError, up to `retries` more on the next ones, with backoff.

        Raises ScorerUnavailable naming every server tried and its error when all attempts failed.
        Other exceptions are the request's own fault and pass through untouched.
        """
        failures: list[str] = []
        for attempt in range(self._retries + 1):
            if attempt:
                self._sleep(min(LONGEST_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1)))
            endpoint = self._pick()
            try:
                result = request(endpoint.client)
            except TransientError as error:
                self._failed(endpoint)
                failures.append(f"{endpoint.address}: {error}")
                continue
            self._answered(endpoint)
            return result
        raise ScorerUnavailable(f"{len(failures)} attempt(s) failed: {_summary(failures)}")

    def _pick(self) -> _Endpoint[Client]:
        now = self._clock()
        with self._lock:
            count = len(self._endpoints)
            for step in range(count):
                index = (self._next + step) % count
                if self._endpoints[index].skip_until <= now:
                    self._next = index + 1
                    return self._endpoints[index]
            return min(self._endpoints, key=lambda endpoint: endpoint.skip_until)

    def _failed(self, endpoint: _Endpoint[Client]) -> None:
        with self._lock:
            endpoint.failures += 1
            skip = min(LONGEST_SKIP_S, FIRST_BACKOFF_S * 2**endpoint.failures)
            endpoint.skip_until = self._clock() + skip

    def _answered(self, endpoint: _Endpoint[Client]) -> None:
        if endpoint.failures:
            with self._lock:
                endpoint.failures = 0
                endpoint.skip_until = 0.0


def _summary(failures: list[str]) -> str:
    """Distinct failures in order, with how often each happened: "a: refused (x3); b: timed out"."""
    counts = Counter(failures)
    return "; ".join(
        failure + (f" (x{counts[failure]})" if counts[failure] > 1 else "") for failure in counts
    )
