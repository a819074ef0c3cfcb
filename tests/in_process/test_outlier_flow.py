"""Outlier scores through the flow: every result the model answered after its reference carries a score, a
shifted stream raises one `outlier` event and a plain one none, records with an error pass by unscored, with
1 and 2 workers."""

from __future__ import annotations

import numpy as np
import pytest
from support.core_runs import Turn, every_shard, messages, run_in_turns
from support.core_runs import generated_blocks as records

from flows.adapters.sources.generators import shipped_model
from flows.core.outliers import OutlierSettings
from flows.core.records import RecommenderRecord
from flows.core.shipped import SHIPPED_MODELS_DIR


def batches_of(records: list[RecommenderRecord]) -> list[list]:
    return [messages(records[start : start + 200]) for start in range(0, len(records), 200)]


SETTINGS = OutlierSettings(reference=1_000, contamination=0.01, window=1_000, threshold=0.1)
BAD_USER = 2**63 - 1  # past any model's users: answered with an error


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flow_scores_every_answered_record_and_reports_outliers_on_a_shifted_stream_only(workers):
    model = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")

    def fitted(run) -> bool:
        return run.context.state.outliers_per_model().get(model.model_name, {}).get("fitted", False)

    def run(shift: bool):
        """The model first; the first records once every shard serves it (none waits for a model); the
        later ones, shifted or not, once the detector is fitted on the first."""
        before, after = records(5, range(12)), records(5, range(12, 20), shifted=shift)
        after[100] = RecommenderRecord(BAD_USER, [1, 2])
        flow = run_in_turns(
            [
                Turn([model], batches_of(before), every_shard("swapped", model.model_name, 4)),
                Turn([], batches_of(after), fitted),
            ],
            workers=workers,
            outliers=SETTINGS,
        )
        assert len(flow.results) == len(before) + len(after)
        return flow

    shifted = run(shift=True)
    scores = [item.result.metadata.outlier_score for item in shifted.results]
    errors = [item for item in shifted.results if item.result.metadata.errors]
    assert len(errors) == 1 and errors[0].result.metadata.outlier_score is None
    assert sum(score is None for score in scores) == SETTINGS.reference + 1  # the reference, and the error
    later = [
        item.result.metadata.outlier_score
        for item in shifted.results
        if item.result.metadata.outlier_score is not None and item.result.input_record.user != BAD_USER
    ]
    assert len(later) == len(scores) - SETTINGS.reference - 1 and all(np.isfinite(later))
    assert [event.kind for event in shifted.events if event.kind.startswith("outlier")] == ["outlier"]
    shown = shifted.context.state.outliers_per_model()[model.model_name]
    assert shown["fitted"] and shown["alerting"] and max(shown["rates"]) > 0.5

    plain = run(shift=False)
    assert [event.kind for event in plain.events if event.kind.startswith("outlier")] == []
    assert max(plain.context.state.outliers_per_model()[model.model_name]["rates"]) < 0.05
