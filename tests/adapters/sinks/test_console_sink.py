"""The console's result line: the user's best products and the model, and the outlier score only where the
model's detector flags the record."""

from __future__ import annotations

from flows.adapters.sinks.console import describe_result
from flows.core.records import (
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
)


def result(outlier_score: float | None, errors: str = "") -> RecommenderResult:
    output = RecommenderServingOutput(["163", "172", "255", "9"], [0.75, 0.69, 0.61, 0.1])
    metadata = ModelResultMetadata(errors, "recommender-v1", "embedded:onnx", 0, 1, outlier_score)
    return RecommenderResult(RecommenderRecord(748, [163, 172, 255, 9]), output, metadata)


def test_a_result_line_names_the_best_products_and_the_model():
    assert describe_result(result(None)) == (
        "user  748: top of  4 products 163 (0.75), 172 (0.69), 255 (0.61)  [recommender-v1, batch 1 ms]"
    )


def test_only_a_flagged_record_shows_its_outlier_score():
    assert describe_result(result(0.99)).endswith("[recommender-v1, batch 1 ms]")
    assert describe_result(result(2.46)).endswith("[recommender-v1, batch 1 ms, outlier 2.5]")
    assert describe_result(result(None, "bad ids")) == "user  748: no scores (bad ids)"
