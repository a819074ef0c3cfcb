"""Scoring a micro-batch: records the model cannot take cost an error for themselves, not a call per record.

Calls are counted, not timed: the cost of a bad record is how many model calls it adds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.adapters.scorers import InputBounds, ScorerUnavailable, build_scorer
from flows.adapters.sources.generators import generated_records
from flows.core.admission.policy import AdmissionPolicy
from flows.core.records import DataMessage, RecommenderRecord
from flows.core.scoring import FLOAT32_EXACT, score_batch

POLICY = AdmissionPolicy()
UNSCORABLE = 2**63 - 1


class Counting:
    """Another scorer, its calls counted (and the users of each call kept)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.source = inner.source
        self.input_bounds = inner.input_bounds
        self.calls: list[np.ndarray] = []

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        self.calls.append(users)
        return self.inner.score(users, products)

    def close(self) -> None:
        self.inner.close()


class Refusing:
    """A model of unknown bounds (as behind a server) that fails any call with one of `bad_users` in it."""

    source = "test:refusing"
    input_bounds = None

    def __init__(self, bad_users: set[int], unavailable_after: int | None = None) -> None:
        self.bad_users = bad_users
        self.unavailable_after = unavailable_after  # calls after which the server is down

    def score(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        if self.unavailable_after is not None and self.unavailable_after <= 0:
            raise ScorerUnavailable("1 attempt(s) failed: model-server:8500: connection refused")
        if self.unavailable_after is not None:
            self.unavailable_after -= 1
        if self.bad_users.intersection(users.astype(int).tolist()):
            raise ValueError("the server refused the request")
        return np.full(users.shape, 0.5, np.float32)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def embedded(model_v1):
    scorer = build_scorer(model_v1)
    yield scorer
    scorer.close()


def batch(size: int, seed: int = 3) -> list[DataMessage]:
    return [DataMessage(record, 0) for record in generated_records(seed, size)]


def with_user(messages: list[DataMessage], index: int, user: int) -> None:
    record = messages[index].record
    messages[index] = DataMessage(RecommenderRecord(user, list(record.products)), 0)


def errors_by_index(results) -> dict[int, str]:
    return {i: item.result.metadata.errors for i, item in enumerate(results) if item.result.metadata.errors}


def test_the_embedded_model_says_what_ids_it_takes(embedded):
    assert embedded.input_bounds == InputBounds(users=1000, products=300)


def test_a_user_past_the_model_costs_an_error_for_its_record_and_no_extra_call(embedded):
    messages = batch(1000)
    with_user(messages, 500, UNSCORABLE)
    counting = Counting(embedded)
    results, _ = score_batch(counting, "recommender-v1", messages, POLICY)

    assert len(counting.calls) == 1
    errors = errors_by_index(results)
    assert list(errors) == [500]
    assert f"user {UNSCORABLE}" in errors[500]
    assert "'recommender-v1'" in errors[500] and "users 0 to 999" in errors[500]
    assert results[500].result.model_result.probabilities == []
    clean = [m for i, m in enumerate(messages) if i != 500]
    expected, _ = score_batch(embedded, "recommender-v1", clean, POLICY)
    scored = [item.result.model_result.probabilities for i, item in enumerate(results) if i != 500]
    np.testing.assert_allclose(
        np.concatenate(scored), np.concatenate([item.result.model_result.probabilities for item in expected])
    )


@pytest.mark.parametrize(
    ("record", "named"),
    [
        (RecommenderRecord(-1, [1, 2]), "user -1 "),
        (RecommenderRecord(4, [1, -2]), "product -2 (user 4)"),
        (RecommenderRecord(1000, [1]), "user 1000 "),
        (RecommenderRecord(4, [299, 300]), "product 300 (user 4)"),
        (RecommenderRecord(FLOAT32_EXACT + 1, [1]), f"user {FLOAT32_EXACT + 1} "),
    ],
)
def test_an_id_outside_the_embeddings_gets_an_error_not_a_made_up_score(embedded, record, named):
    """Keras reads -1 as the last row: without the check, user -1 got user 999's scores."""
    messages = batch(20)
    messages[7] = DataMessage(record, 0)
    results, _ = score_batch(embedded, "recommender-v1", messages, POLICY)

    errors = errors_by_index(results)
    assert list(errors) == [7]
    assert named in errors[7] and "'recommender-v1'" in errors[7]
    kind = "users 0 to 999" if named.startswith("user") else "products 0 to 299"
    assert kind in errors[7]
    assert all(item.result.model_result.probabilities for i, item in enumerate(results) if i != 7)


@pytest.mark.parametrize(("user", "refused"), [(FLOAT32_EXACT - 1, False), (FLOAT32_EXACT + 1, True)])
def test_with_unknown_bounds_ids_float32_cannot_hold_are_refused(user, refused):
    """2**24 + 1 reaches a float32 model as 2**24: it would get another user's scores."""
    messages = batch(10)
    with_user(messages, 4, user)
    results, _ = score_batch(Refusing(set()), "remote", messages, POLICY)

    errors = errors_by_index(results)
    assert (list(errors) == [4]) is refused
    if refused:
        assert f"user {user}" in errors[4] and "float32" in errors[4] and "'remote'" in errors[4]


@pytest.mark.parametrize("bad", [1, 3, 10])
def test_records_a_model_of_unknown_bounds_refuses_are_found_by_halving(bad):
    size = 1000
    messages = batch(size)
    positions = np.random.default_rng(bad).choice(size, bad, replace=False).tolist()
    for number, index in enumerate(positions):
        with_user(messages, index, 5000 + number)  # within float32, so only the model can refuse them
    scorer = Counting(Refusing({5000 + number for number in range(bad)}))
    results, _ = score_batch(scorer, "remote", messages, POLICY)

    errors = errors_by_index(results)
    assert sorted(errors) == sorted(positions)
    assert all("'remote' failed: ValueError: the server refused the request" in e for e in errors.values())
    assert len(scorer.calls) <= 2 * bad * math.ceil(math.log2(size)) + 1
    assert all(results[i].result.model_result.probabilities == [0.5] * len(messages[i].record.products)
               for i in range(size) if i not in errors)  # fmt: skip


def test_a_scorer_that_is_unavailable_fails_the_batch_with_one_call():
    messages = batch(100)
    scorer = Counting(Refusing(set(), unavailable_after=0))
    results, batch_ms = score_batch(scorer, "remote", messages, POLICY)

    assert len(scorer.calls) == 1 and batch_ms == 0.0
    errors = errors_by_index(results)
    assert len(errors) == 100 and all("connection refused" in error for error in errors.values())


def test_a_scorer_that_goes_down_while_the_batch_is_halved_is_called_no_more():
    messages = batch(100)
    with_user(messages, 30, 5000)
    scorer = Counting(Refusing({5000}, unavailable_after=1))  # the first call fails on the bad record
    results, _ = score_batch(scorer, "remote", messages, POLICY)

    assert len(scorer.calls) == 2
    errors = errors_by_index(results)
    assert len(errors) == 100 and all("connection refused" in error for error in errors.values())


def test_a_refused_record_keeps_its_reason_when_the_scorer_is_unavailable():
    messages = batch(10)
    with_user(messages, 2, -1)
    results, _ = score_batch(Refusing(set(), unavailable_after=0), "remote", messages, POLICY)

    errors = errors_by_index(results)
    assert len(errors) == 10 and "user -1 is outside" in errors[2] and "connection refused" in errors[3]


def test_a_batch_of_refused_records_calls_no_model():
    messages = batch(5)
    for index in range(5):
        with_user(messages, index, -index - 1)
    scorer = Counting(Refusing(set()))
    results, _ = score_batch(scorer, "remote", messages, POLICY)

    assert scorer.calls == [] and len(errors_by_index(results)) == 5


def test_a_batch_over_the_pair_bound_is_scored_in_calls_of_whole_records_within_it(embedded):
    """The model was tried at SERVING_MODEL_MAX_BATCH_PAIRS pairs before it was accepted: no call is
    larger."""
    policy = AdmissionPolicy(max_batch_pairs=100)
    messages = batch(200)
    counting = Counting(embedded)
    results, _ = score_batch(counting, "recommender-v1", messages, policy)

    pairs = sum(len(message.record.products) for message in messages)
    assert pairs > 10 * policy.max_batch_pairs
    assert all(call.size <= policy.max_batch_pairs for call in counting.calls)
    assert sum(call.size for call in counting.calls) == pairs
    assert len(counting.calls) < 2 * pairs / policy.max_batch_pairs + 1  # runs of whole records, filled
    assert not errors_by_index(results)
    whole, _ = score_batch(embedded, "recommender-v1", messages, POLICY)
    for split, one_call in zip(results, whole):  # the same scores, to float32's rounding of other batches
        np.testing.assert_allclose(
            split.result.model_result.probabilities, one_call.result.model_result.probabilities, atol=1e-6
        )


def test_a_record_that_fails_alone_is_found_inside_a_bounded_call():
    messages = batch(60)
    with_user(messages, 41, 7_777)
    refusing = Refusing({7_777})
    results, _ = score_batch(refusing, "remote", messages, AdmissionPolicy(max_batch_pairs=64))

    assert list(errors_by_index(results)) == [41]
