"""Explanations through the flow, with 1 and 2 workers: every record that asks gets one, whose parts add up
to the score its result carries; the embedded ONNX model names neighbours from its tables and measures
against its whole catalogue, the PMML model (a black box: no tables, no bounds) gets the same split against
the records of its first explained micro-batch; a record the model refuses gets its error; a shard
emits a batch's results before its explanations."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from support.core_runs import Turn, every_shard, run_in_turns

from flows.adapters.scorers import ScorerCache
from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.context import ServingContext
from flows.core.explanations import ExplainSettings
from flows.core.records import DataMessage, RecommenderRecord
from flows.core.routing import ShardBatch
from flows.core.shard import ShardLogic
from flows.core.shard_messages import Emits, ModelUpdate
from flows.core.shipped import SHIPPED_MODELS_DIR


@dataclass(frozen=True)
class Asking:
    """An origin that asks for an explanation (as a Kafka origin with the `serving-explain` header does),
    numbered so that a test can join the explanation to its result."""

    number: int
    explanation_requested: bool = True


BAD_USER = 2**24 + 1  # past what float32 ids hold: refused for any model, black box or not


def records() -> list[DataMessage]:
    """300 records, every tenth asking; one asking record with a user no model takes."""
    out = []
    for number in range(300):
        user = BAD_USER if number == 150 else number * 7 % 1000
        record = RecommenderRecord(user, [(number + k * 13) % 300 for k in range(1 + number % 6)])
        out.append(DataMessage(record, 0, Asking(number) if number % 10 == 0 else None))
    return out


@pytest.mark.parametrize(
    "version, neighbours", [("1-onnx", True), ("1-pmml", False)], ids=["onnx", "pmml-black-box"]
)
@pytest.mark.parametrize("workers", [1, 2])
def test_every_asking_record_is_explained_and_its_parts_add_up_to_its_score(version, neighbours, workers):
    model = shipped_model(SHIPPED_MODELS_DIR, version)
    data = records()
    run = run_in_turns(
        [Turn([model], [data[:150], data[150:]], every_shard("swapped", model.model_name, 4))],
        workers=workers,
        explain=ExplainSettings(fraction=0.0, background=16),
    )
    assert len(run.results) == len(data) and len(run.explanations) == 30
    results = {item.origin.number: item.result for item in run.results if isinstance(item.origin, Asking)}
    for item in run.explanations:
        explanation, result = item.explanation, results[item.origin.number]
        assert explanation.requested and explanation.user == result.input_record.user
        if result.input_record.user == BAD_USER:
            assert explanation.products == [] and result.metadata.errors in explanation.errors
            continue
        assert not explanation.errors and explanation.model_name == model.model_name
        scores = dict(zip(map(int, result.model_result.products), result.model_result.probabilities))
        assert len(explanation.products) == min(3, len(scores))
        for part in explanation.products:
            assert part.score == scores[part.product]
            assert abs(explanation.baseline + part.user_part + part.product_part - part.score) <= 1e-5
            assert bool(part.similar_products) == neighbours
        assert bool(explanation.similar_users) == neighbours
    shown = run.context.state.explanations_per_model()[model.model_name]
    assert shown["explained"] == 30 and len(shown["latest"]) == 10


def test_a_shard_emits_a_batchs_results_before_its_explanations_in_the_same_call():
    """An explanation never delays its record's result: the shard emits the batch's results first, then the
    explanations, from the same `on_batch`."""
    model = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    context = ServingContext.create(cache=ScorerCache(AdmissionPolicy()))
    shard = ShardLogic(1000, 10_000, context, None, explain=ExplainSettings(fraction=0.0))
    shard.on_batch([ModelUpdate("shard-0", model, 0.0)])
    assert shard.incoming is not None
    shard.incoming[1].join()
    shard.on_notify()  # swaps the loaded model in
    assert shard.scorer is not None
    outputs, _ = shard.on_batch([ShardBatch("shard-0", records()[:100])])
    tags = [tag for tag, _ in outputs]
    assert tags == [Emits.RESULTS, Emits.EXPLANATIONS]
    assert len(outputs[1][1]) == 10  # every tenth of the 100 records asked
