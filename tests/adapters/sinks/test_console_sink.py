"""The console's result line: the user's best products and the model, and the outlier score only where the
model's detector flags the record."""

from __future__ import annotations

from flows.adapters.sinks.console import describe_explanation, describe_result
from flows.core.explanations import Explanation, ProductExplanation
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


def test_an_explanation_line_per_explained_product_says_how_the_score_splits():
    explanation = Explanation(
        412,
        "recommender-v2-onnx",
        requested=True,
        baseline=0.31,
        products=[
            ProductExplanation(163, 0.75, 0.29, 0.15, [170, 158]),
            ProductExplanation(3, 0.2, -0.1, -0.01),
        ],
    )
    tag = "[recommender-v2-onnx, asked]"
    like = "like 170, 158"
    assert describe_explanation(explanation).splitlines() == [
        f"explained user 412, product 163: 0.75 = 0.31 baseline +0.29 user +0.15 product; {like} {tag}",
        f"explained user 412, product 3: 0.20 = 0.31 baseline -0.10 user -0.01 product {tag}",
    ]
    refused = Explanation(5000, "m", errors="not explained: user 5000 is outside what model 'm' takes")
    assert describe_explanation(refused) == (
        "explained user 5000: not explained: user 5000 is outside what model 'm' takes [m]"
    )
