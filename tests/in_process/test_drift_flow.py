"""Drift through the flow: a shifted stream raises one drift event, a plain one none."""

from __future__ import annotations

import pytest
from support.core_runs import at, messages, run_core
from support.core_runs import generated_blocks as records

from flows.core.drift import DriftSettings

SETTINGS = DriftSettings(reference=2_000, window=1_000, threshold=0.2, sample=1_000)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flow_reports_drift_on_a_shifted_stream_only(workers, model_v1):
    def drift_events(shift: bool) -> list[str]:
        before, after = records(5, range(12)), records(5, range(12, 20), shifted=shift)
        data = before + after
        run = run_core(
            at(0.5, [messages(before[start : start + 200]) for start in range(0, len(before), 200)])
            + at(1.5, [messages(after[start : start + 200]) for start in range(0, len(after), 200)]),
            at(0, [model_v1]),
            workers=workers,
            drift=SETTINGS,
        )
        assert len(run.results) == len(data)
        return [event.kind for event in run.events if event.kind in ("drift", "recovered")]

    assert drift_events(shift=True) == ["drift"]
    assert drift_events(shift=False) == []
