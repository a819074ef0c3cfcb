"""The offered-load schedule the generators, the load generator and the benchmark share."""

from __future__ import annotations

import time

from flows.adapters.sources.pacing import Pace


def test_a_pace_keeps_to_its_schedule_from_where_it_starts():
    pace = Pace(1000, first=50)
    assert 50 <= pace.due() < 60
    pace.wait_for(150)  # 100 items after the start at 1,000/s: 0.1 s in
    assert time.monotonic() - pace.started >= 0.1
    assert 150 <= pace.due() < 200


def test_a_late_producer_is_not_made_to_wait():
    pace = Pace(100)
    time.sleep(0.05)
    started = time.monotonic()
    pace.wait_for(2)  # due 20 ms in, already past
    assert time.monotonic() - started < 0.01


def test_unthrottled_means_never_waiting_and_no_schedule():
    pace = Pace(0)
    started = time.monotonic()
    pace.wait_for(1_000_000)
    assert pace.due() is None and time.monotonic() - started < 0.01
