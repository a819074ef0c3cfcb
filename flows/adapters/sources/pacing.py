"""Offered load at a steady rate: the generators, the load generator and the benchmark pace items with it."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    """`rate` items per second, counted from when the pace starts (0: as fast as possible).

    Item n is due at start + n / rate: keeping to that schedule, rather than pausing 1/rate after each item,
    keeps the long-run rate exact whatever each item costs, and a late producer catches up. `clock` and
    `sleep` are the monotonic clock and the sleep it keeps time with (a test gives its own).
    """

    def __init__(
        self,
        rate: float,
        first: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.first = first  # the position the pace starts at (a source resumed after a restart)
        self._clock, self._sleep = clock, sleep
        self.started = clock()

    def due(self) -> int | None:
        """The position up to which items are due now (exclusive); None when unthrottled."""
        if self.rate <= 0:
            return None
        return self.first + int((self._clock() - self.started) * self.rate)

    def wait_for(self, position: int) -> None:
        """Sleep until item `position` is due."""
        if self.rate <= 0:
            return
        delay = self.started + (position - self.first) / self.rate - self._clock()
        if delay > 0:
            self._sleep(delay)
