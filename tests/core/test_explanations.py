"""Explanations: each explained score splits exactly into baseline, user part and product part (the two-player
Shapley values, checked against the definition), the records chosen are the sampled and the asked-for ones,
and hostile or unlucky cases (ids the model refuses, too many requests in one batch, a model that fails
during the explanation, records without products, unfit embedding tables) get a reason, never a crash or a
silent drop. The split's cost is bounded per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from flows.core.admission.policy import AdmissionPolicy
from flows.core.embeddings import MAX_TABLE_VALUES, EmbeddingTables
from flows.core.explanations import Background, Explainer, ExplainSettings
from flows.core.records import DataMessage, RecommenderRecord, ScoredBatch
from flows.core.scorer import InputBounds
from flows.core.scoring import score_batch

BOUNDS = InputBounds(users=50, products=40)


@dataclass
class Asking:
    """An origin that asks for an explanation, as a Kafka origin with the header does."""

    explanation_requested: bool = True


class CountingModel:
    """A model that is a fixed, non-additive function of the pair, counting the pairs it is asked for."""

    source = "embedded:test"

    def __init__(self, bounds: InputBounds | None = BOUNDS, fail_over: int | None = None) -> None:
        self.input_bounds = bounds
        self.calls: list[int] = []
        self.fail_over = fail_over  # a call of more pairs than this raises
        self.embeddings = None

    @staticmethod
    def f(users: np.ndarray, products: np.ndarray) -> np.ndarray:
        u, p = users.astype(np.float64), products.astype(np.float64)
        return (1 / (1 + np.exp(-(np.sin(u * 0.7) + np.cos(p * 0.3) + 0.5 * np.sin(u * p * 0.01))))).astype(
            np.float32
        )

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        self.calls.append(users.size)
        if self.fail_over is not None and users.size > self.fail_over:
            raise RuntimeError("out of memory")
        return self.f(users, products)

    def close(self) -> None:
        pass


def records(count: int, seed: int = 1, products: int = 6) -> list[RecommenderRecord]:
    rng = np.random.default_rng(seed)
    return [
        RecommenderRecord(
            int(rng.integers(0, BOUNDS.users)), rng.integers(0, BOUNDS.products, products).tolist()
        )
        for _ in range(count)
    ]


def scored(model: CountingModel, batch: list[RecommenderRecord], asking: tuple[int, ...] = ()) -> ScoredBatch:
    messages = [
        DataMessage(record, 0, Asking() if index in asking else None) for index, record in enumerate(batch)
    ]
    results, _ = score_batch(model, "m", messages, AdmissionPolicy())
    model.calls.clear()
    return results


def explainer(**settings: object) -> Explainer:
    return Explainer(ExplainSettings(**{"fraction": 0.0, **settings}), AdmissionPolicy(), seed=5)


def test_every_split_adds_up_to_the_score_and_is_the_shapley_value_of_the_definition():
    model = CountingModel()
    batch = scored(model, records(40), asking=tuple(range(10)))
    background = Background.spread_over(BOUNDS, 32)
    explained = explainer(per_batch=10).explain(batch, model, background)
    assert len(explained) == 10 and all(not item.explanation.errors for item in explained)
    bu, bp = background.users, background.products
    v_none = CountingModel.f(bu, bp).astype(np.float64).mean()
    for item in explained:
        explanation = item.explanation
        assert explanation.baseline == pytest.approx(v_none, abs=1e-6)
        assert len(explanation.products) == 3
        for part in explanation.products:
            assert part.score == pytest.approx(
                explanation.baseline + part.user_part + part.product_part, abs=1e-5
            )
            u = np.full(bu.size, explanation.user, np.float32)
            p = np.full(bu.size, part.product, np.float32)
            v_user = CountingModel.f(u, bp).astype(np.float64).mean()
            v_product = CountingModel.f(bu, p).astype(np.float64).mean()
            expected_user = ((part.score - v_product) + (v_user - v_none)) / 2
            assert part.user_part == pytest.approx(expected_user, abs=1e-6)


def test_the_split_explains_each_records_top_products_with_the_results_own_scores():
    model = CountingModel()
    batch = scored(model, records(5), asking=(2,))
    [item] = explainer().explain(batch, model, Background.spread_over(BOUNDS, 16))
    result = batch[2].result
    ranked = sorted(
        zip(result.model_result.probabilities, map(int, result.model_result.products)), reverse=True
    )
    assert [(part.score, part.product) for part in item.explanation.products] == [
        pytest.approx(pair) for pair in ranked[:3]
    ]
    assert item.explanation.requested and item.explanation.user == result.input_record.user


def test_without_requests_a_fraction_of_records_is_sampled_and_none_at_zero():
    model = CountingModel()
    batch = scored(model, records(1_000, products=1))
    assert explainer(fraction=0.0).explain(batch, model, Background.spread_over(BOUNDS, 8)) == []
    assert model.calls == []  # nothing chosen, no call
    sampled = explainer(fraction=0.01, per_batch=1_000).explain(
        batch, model, Background.spread_over(BOUNDS, 8)
    )
    assert 2 <= len(sampled) <= 30 and not any(item.explanation.requested for item in sampled)


def test_requests_are_ignored_when_switched_off():
    model = CountingModel()
    batch = scored(model, records(5), asking=(0, 1))
    assert explainer(requests=False).explain(batch, model, Background.spread_over(BOUNDS, 8)) == []


def test_a_requested_record_the_model_refused_gets_the_records_error():
    model = CountingModel()
    batch_records = records(4)
    batch_records[1] = RecommenderRecord(BOUNDS.users + 7, [1, 2])  # a user the model does not take
    batch = scored(model, batch_records, asking=(1, 2))
    explained = {
        item.explanation.user: item.explanation
        for item in explainer().explain(batch, model, Background.spread_over(BOUNDS, 8))
    }
    refused = explained[BOUNDS.users + 7]
    assert refused.products == [] and "outside what model 'm' takes" in refused.errors
    assert refused.requested and refused.model_name == "m"
    assert not explained[batch_records[2].user].errors


def test_requests_past_the_per_batch_bound_say_so_and_the_call_stays_bounded():
    model = CountingModel()
    batch = scored(model, records(100), asking=tuple(range(100)))
    background = Background.spread_over(BOUNDS, 32)
    explained = explainer(per_batch=4, products=3).explain(batch, model, background)
    assert len(explained) == 100  # every request answered
    split = [item for item in explained if not item.explanation.errors]
    assert len(split) == 4
    assert all(
        "SERVING_EXPLAIN_PER_BATCH" in item.explanation.errors for item in explained if item not in split
    )
    assert sum(model.calls) == 32 + 4 * 32 + 4 * 3 * 32  # v(none), v(user) per record, v(product) per product


def test_the_explanation_call_keeps_to_the_policys_pair_bound():
    model = CountingModel()
    batch = scored(model, records(20), asking=tuple(range(20)))
    policy = AdmissionPolicy(max_batch_pairs=100)
    Explainer(ExplainSettings(fraction=0, per_batch=20), policy, seed=1).explain(
        batch, model, Background.spread_over(BOUNDS, 32)
    )
    assert model.calls and max(model.calls) <= 100


def test_a_model_that_fails_on_the_explanation_call_leaves_results_alone_and_says_why():
    model = CountingModel()
    batch = scored(model, records(10), asking=(3, 4))
    before = [item.result for item in batch]
    model.fail_over = 50
    explained = explainer().explain(batch, model, Background.spread_over(BOUNDS, 32))
    assert [item.explanation.user for item in explained] == [
        batch[3].result.input_record.user,
        batch[4].result.input_record.user,
    ]
    assert all("RuntimeError: out of memory" in item.explanation.errors for item in explained)
    assert [item.result for item in batch] == before


def test_a_model_of_unknown_bounds_is_measured_against_the_first_records_it_answered():
    model = CountingModel(bounds=None)
    background = Background()
    first = explainer(background=8).explain(scored(model, records(20), asking=(0,)), model, background)
    taken = (background.users.copy(), background.products.copy())
    assert len(background) == 8
    later = explainer(background=8).explain(
        scored(model, records(20, seed=9), asking=(0,)), model, background
    )
    assert np.array_equal(background.users, taken[0]) and np.array_equal(background.products, taken[1])
    assert first[0].explanation.baseline == pytest.approx(later[0].explanation.baseline)
    assert first[0].explanation.background == 8


def test_a_record_without_products_is_answered_without_a_split():
    model = CountingModel(bounds=None)
    batch = scored(model, [RecommenderRecord(3, [])], asking=(0,))
    [item] = explainer().explain(batch, model, Background())
    assert item.explanation.products == [] and not item.explanation.errors and model.calls == []


def test_a_model_with_embedding_tables_names_the_most_alike_users_and_products():
    users = np.zeros((BOUNDS.users, 2), np.float32)
    users[:, 0] = 1.0
    users[7] = [0.0, 1.0]
    users[8] = [0.1, 1.0]  # the one most like user 7
    products = np.tile(np.array([[1.0, 0.0]], np.float32), (BOUNDS.products, 1))
    products[5] = [0.0, 1.0]
    products[6] = [0.2, 1.0]
    model = CountingModel()
    model.embeddings = EmbeddingTables.of(users, products, BOUNDS)
    batch = scored(model, [RecommenderRecord(7, [5, 5, 5])], asking=(0,))
    [item] = explainer(neighbours=1).explain(batch, model, Background.spread_over(BOUNDS, 8))
    assert item.explanation.similar_users == [8]
    assert all(part.similar_products == [6] for part in item.explanation.products)


@pytest.mark.parametrize(
    "users",
    [
        np.ones((BOUNDS.users, 3, 1), np.float32),  # not two-dimensional
        np.ones((BOUNDS.users + 1, 3), np.float32),  # not one row per user
        np.full((BOUNDS.users, 3), np.nan, np.float32),  # not finite
        np.ones((BOUNDS.users, 3), np.int64),  # not floats
        np.ones((BOUNDS.users, MAX_TABLE_VALUES // BOUNDS.users + 1), np.float32),  # past the size bound
    ],
    ids=["3-d", "rows", "nan", "ints", "huge"],
)
def test_embedding_tables_unfit_to_look_up_are_not_used(users):
    assert EmbeddingTables.of(users, np.ones((BOUNDS.products, 3), np.float32), BOUNDS) is None


def test_state_keeps_the_explanations_of_the_models_explained_most_recently():
    from flows.core.explanations import Explanation, ExplanationMessage
    from flows.core.serving_state import EXPLANATIONS_SHOWN, MODELS_EXPLAINED_SHOWN, ServingState

    state = ServingState()

    def explain(model: str, count: int = 1) -> None:
        state.explained([ExplanationMessage(Explanation(user, model), 0) for user in range(count)])

    explain("first", EXPLANATIONS_SHOWN + 5)
    for index in range(MODELS_EXPLAINED_SHOWN - 1):
        explain(f"m{index}")
    explain("first")  # explained again: now the most recent
    explain("newcomer")  # one model too many: the one explained longest ago goes
    shown = state.explanations_per_model()
    assert len(shown) == MODELS_EXPLAINED_SHOWN and "m0" not in shown
    assert shown["first"]["explained"] == EXPLANATIONS_SHOWN + 6
    assert len(shown["first"]["latest"]) == EXPLANATIONS_SHOWN
