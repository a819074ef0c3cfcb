"""The offered-load schedule the generators, the load generator and the benchmark share, on a clock the test
moves (no wall-clock window)."""

from __future__ import annotations

import pytest

from flows.adapters.sources.pacing import Pace


class Clock:
    """A monotonic clock that moves only when told to, or when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_pace_keeps_to_its_schedule_from_where_it_starts():
    clock = Clock()
    pace = Pace(1000, first=50, clock=clock, sleep=clock.sleep)
    assert pace.due() == 50
    pace.wait_for(150)  # 100 items after the start at 1,000/s: 0.1 s in
    assert clock.slept == [pytest.approx(0.1)] and pace.due() == 150
    clock.now += 0.05
    assert pace.due() == 200


def test_a_late_producer_is_not_made_to_wait():
    clock = Clock()
    pace = Pace(100, clock=clock, sleep=clock.sleep)
    clock.now += 0.05
    pace.wait_for(2)  # due 20 ms in, already past
    assert clock.slept == []


def test_unthrottled_means_never_waiting_and_no_schedule():
    clock = Clock()
    pace = Pace(0, clock=clock, sleep=clock.sleep)
    pace.wait_for(1_000_000)
    assert pace.due() is None and clock.slept == []
