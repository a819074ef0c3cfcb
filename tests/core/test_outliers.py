"""Outlier scores: each record's features read from the batch's columns, a detector fitted on the model's
first records that flags the generator's shifted records and few others, events when a window's outlier
rate passes the threshold and when it comes back, a detector that what it flags never teaches, bounded
state that survives a restart, and hostile records (huge ids, no products, a reference all alike) that get
a score or a reason, never a crash."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from support.core_runs import generated_blocks, messages

from flows.adapters.sources.generators import BLOCK
from flows.core.outliers import (
    FEATURES,
    OutlierDetector,
    OutlierLogic,
    OutlierSettings,
    OutlierState,
    ProductRanks,
    answered_records,
    features,
    mean_and_precision,
)
from flows.core.records import ModelResultMetadata, RecommenderRecord, ScoredBatch
from flows.core.scoring import unscored
from flows.core.serving_state import ServingState
from flows.core.vocabulary import EventKind

SETTINGS = OutlierSettings(reference=500, contamination=0.01, window=1_000, threshold=0.1)


def model_scores(users: np.ndarray, products: np.ndarray) -> np.ndarray:
    """A stand-in model: a fixed function of the pair, in [0, 1]."""
    return (0.5 + 0.5 * np.sin(users * 0.37 + products * 1.3)).astype(np.float32)


def scored(
    records: list[RecommenderRecord], replaced_at: tuple[int, ...] = (), model: str = "m"
) -> ScoredBatch:
    """A batch as a shard gives it: every pair scored, the records at `replaced_at` answered with an error."""
    counts = [len(record.products) for record in records]
    users = np.repeat([float(record.user) for record in records], counts)
    products = np.array([product for record in records for product in record.products], np.float64)
    inputs = messages(records)
    replaced = {index: unscored(inputs[index], "bad ids", model) for index in replaced_at}
    metadata = ModelResultMetadata("", model, "embedded:onnx", 0, 1)
    pairs_users = users.astype(np.float32)  # as the shard gives them to the model
    return ScoredBatch(
        inputs, counts, model_scores(users, products), metadata, replaced, products, pairs_users
    )


def batches(count: int, first_block: int = 0, shifted: bool = False) -> list[ScoredBatch]:
    """`count` of the generator's records from `first_block` on, in batches of 250."""
    blocks = range(first_block, first_block + -(-count // BLOCK))
    records = generated_blocks(7, blocks, shifted)[:count]
    return [scored(records[start : start + 250]) for start in range(0, count, 250)]


def fitted() -> OutlierDetector:
    detector = OutlierDetector(SETTINGS, OutlierState("m"))
    for batch in batches(1_000):  # the reference is the first 500
        detector.score(batch)
    assert detector.state.ranks is not None and not detector.state.unfit
    return detector


def test_features_are_each_answered_records_user_size_product_ranks_and_mean_score():
    records = [RecommenderRecord(3, [10, 20]), RecommenderRecord(4, [5]), RecommenderRecord(9, [0, 0, 30])]
    answered = answered_records(scored(records, replaced_at=(1,)))
    assert answered.indices.tolist() == [0, 2] and answered.record_of_pair.tolist() == [0, 0, 1, 1, 1]
    ranks = ProductRanks.of(np.array([0.0, 10, 20, 30]))  # mid-ranks: 1/8, 3/8, 5/8, 7/8
    rows = features(answered, ranks)
    first = model_scores(np.array([3.0, 3.0]), np.array([10.0, 20.0]))
    third = model_scores(np.array([9.0] * 3), np.array([0.0, 0.0, 30.0]))
    assert rows.shape == (2, len(FEATURES))
    np.testing.assert_allclose(rows[0], [3, 2, 0.0, first.mean()], rtol=1e-6, atol=1e-12)
    third_z = ((1 / 8 + 1 / 8 + 7 / 8) / 3 - 0.5) * np.sqrt(12 * 3)
    np.testing.assert_allclose(rows[1], [9, 3, third_z, third.mean()], rtol=1e-6)
    unseen = ranks.z_scores(answered_records(scored([RecommenderRecord(1, [15, 10**12])])))
    np.testing.assert_allclose(unseen, [((4 / 8 + 1) / 2 - 0.5) * np.sqrt(24)])  # between 10 and 20; past all


def test_a_batch_without_its_pairs_columns_gives_the_same_features_from_its_records():
    batch = batches(250, 5)[0]
    batch.replaced = {3: unscored(batch.messages[3], "bad ids", "m")}
    bare = ScoredBatch(batch.messages, batch.counts, batch.scores, batch.metadata, batch.replaced)
    ranks = ProductRanks.of(np.arange(300.0))
    np.testing.assert_array_equal(
        features(answered_records(batch), ranks), features(answered_records(bare), ranks)
    )


def test_product_ranks_from_the_table_are_those_of_the_search_and_a_wide_reference_is_searched():
    rng = np.random.default_rng(3)
    ranks = ProductRanks.of(rng.integers(100, 400, 5_000).astype(np.float64))
    probes = np.concatenate([np.arange(-5.0, 600.0), [-(2.0**62), 2.0**62, 1e300]])
    assert ranks.table is not None and ranks.table.size == 300
    np.testing.assert_allclose(ranks.of_products(probes), ranks._searched(probes))
    wide = ProductRanks.of(np.array([0.0, 2.0**40, 5.0]))
    assert wide.table is None
    np.testing.assert_allclose(wide.of_products(np.array([-1.0, 5.0, 2.0**41])), [0.0, 0.5, 1.0])


def test_the_distances_are_scikit_learns_mahalanobis():
    from sklearn.covariance import EmpiricalCovariance

    detector = fitted()
    rows = features(answered_records(batches(500, 30)[0]), detector.state.ranks)
    reference = EmpiricalCovariance()
    reference.location_, reference.precision_ = detector.state.location, detector.state.precision
    np.testing.assert_allclose(detector.distances(rows), reference.mahalanobis(rows), rtol=1e-9)


def test_the_fit_is_scikit_learns_empirical_covariance_also_when_a_feature_never_varies():
    from sklearn.covariance import EmpiricalCovariance

    rows = features(answered_records(batches(500, 31)[0]), fitted().state.ranks)
    constant_size = rows.copy()
    constant_size[:, 1] = 3.0  # every record with three products: a singular covariance
    for reference in (rows, constant_size, rows[:, :1]):
        location, precision = mean_and_precision(reference)
        expected = EmpiricalCovariance().fit(reference)
        np.testing.assert_allclose(location, expected.location_, rtol=1e-12)
        np.testing.assert_allclose(precision, expected.precision_, rtol=1e-7, atol=1e-12)


def test_a_record_without_products_has_zero_features_but_its_user_and_no_error():
    answered = answered_records(scored([RecommenderRecord(3, []), RecommenderRecord(4, [7])]))
    rows = features(answered, ProductRanks.of(np.array([7.0])))
    assert answered.indices.tolist() == [0, 1] and rows[0].tolist() == [3.0, 0.0, 0.0, 0.0]


def test_no_record_gets_a_score_before_the_reference_is_taken_and_every_answered_one_after():
    detector = OutlierDetector(SETTINGS, OutlierState("m"))
    first = batches(500)
    detector.score(first[0])  # 250 of the 500 reference records
    assert first[0].outlier_scores is None and detector.state.ranks is None
    detector.score(first[1])  # the reference is complete: fitted, but these records taught it
    assert first[1].outlier_scores is None and detector.state.ranks is not None
    batch = scored(generated_blocks(7, range(1, 2))[:100], replaced_at=(4, 9))
    detector.score(batch)
    assert batch.outlier_scores is not None
    assert np.isnan(batch.outlier_scores[[4, 9]]).all()
    assert np.isfinite(np.delete(batch.outlier_scores, [4, 9])).all()
    shown = [item.result.metadata.outlier_score for item in batch]
    assert shown[4] is None and shown[9] is None and all(score is not None for score in shown[:4])


def test_the_shifted_records_are_flagged_and_few_others():
    detector = fitted()
    normal = batches(4_000, first_block=10)
    shifted = batches(4_000, first_block=10, shifted=True)
    for batch in normal + shifted:
        detector.score(batch)
    normal_rate = np.mean(np.concatenate([batch.outlier_scores for batch in normal]) >= 1)
    shifted_rate = np.mean(np.concatenate([batch.outlier_scores for batch in shifted]) >= 1)
    assert normal_rate < 0.05 and shifted_rate > 0.5, (normal_rate, shifted_rate)


def test_a_window_over_the_threshold_gives_an_outlier_event_and_the_first_back_under_clears_it():
    detector = fitted()
    events = []
    for batch in batches(2_000, 10) + batches(2_000, 20, shifted=True) + batches(4_000, 30):
        events += detector.score(batch)
    assert [event.kind for event in events] == [EventKind.OUTLIER, EventKind.OUTLIER_CLEARED]
    assert all(event.model_name == "m" for event in events)
    assert "outlier rate" in events[0].reason and "over 0.1" in events[0].reason
    assert "back under 0.1" in events[1].reason
    state = detector.state
    assert state.windows == 8 and len(state.rates) == 8 and not state.alerting
    assert max(state.rates) > 0.5 and min(state.rates) < 0.05


def test_what_the_detector_flags_never_teaches_it():
    detector = fitted()
    probe = batches(250, 10)[0]
    detector.score(probe)
    before = probe.outlier_scores.copy()
    for batch in batches(10_000, 20, shifted=True):  # 10,000 strange records
        detector.score(batch)
    probe.outlier_scores = None
    detector.score(probe)
    np.testing.assert_array_equal(probe.outlier_scores, before)


def test_the_state_is_bounded_and_a_restored_detector_scores_as_the_one_it_was():
    detector = fitted()
    for batch in batches(29_000, 10):  # the state does not grow with the records
        detector.score(batch)
    logic = OutlierLogic(SETTINGS, ServingState(), detector.state)
    saved = pickle.dumps(logic.snapshot())
    assert len(saved) < 100_000
    restored = OutlierLogic(SETTINGS, ServingState(), pickle.loads(saved))
    one, other = batches(250, 200)[0], batches(250, 200)[0]
    detector.score(one)
    restored.on_batch([other])
    np.testing.assert_array_equal(one.outlier_scores, other.outlier_scores)


def test_ids_far_out_of_range_are_scored_as_outliers_not_errors():
    detector = fitted()
    huge = [
        RecommenderRecord(2**63 - 1, [5, 6]),
        RecommenderRecord(-(2**62), [2**62]),
        RecommenderRecord(1, []),
    ]
    batch = scored(huge)
    detector.score(batch)
    assert batch.outlier_scores is not None
    assert (batch.outlier_scores[:2] >= 1).all() and not np.isnan(batch.outlier_scores).any()


def test_a_reference_of_identical_records_is_refused_with_a_reason_and_the_next_one_taken():
    detector = OutlierDetector(SETTINGS, OutlierState("m"))
    same = [RecommenderRecord(1, [2, 3])] * 250
    for _ in range(4):  # two references' worth, both all alike
        batch = scored(same)
        assert detector.score(batch) == []
        assert batch.outlier_scores is None
    assert detector.state.ranks is None and "500 records are all alike" in detector.state.unfit
    for batch in batches(500):  # ordinary records: the next reference fits
        detector.score(batch)
    assert detector.state.ranks is not None and detector.state.unfit == ""
    later = batches(250, 10)[0]
    detector.score(later)
    assert later.outlier_scores is not None and np.isfinite(later.outlier_scores).all()


def test_the_step_shows_its_windows_on_the_state_and_passes_every_batch_on():
    state = ServingState()
    logic = OutlierLogic(SETTINGS, state, None)
    given = batches(2_500)
    out, _ = logic.on_batch(given)
    assert [item for item in out if isinstance(item, ScoredBatch)] == given
    shown = state.outliers_per_model()["m"]
    assert shown["fitted"] and shown["windows"] == 2 and len(shown["rates"]) == 2
    assert shown["scored"] == 2_000 and shown["threshold"] == 0.1  # the reference's 500 get no score
    assert [point["window"] for point in state.history.document()["outliers"]["m"]] == [1, 2]


def test_a_reference_too_small_to_hold_one_outlier_is_refused_at_start():
    with pytest.raises(ValueError, match="under one record"):
        OutlierSettings(reference=50, contamination=0.01)
    assert not OutlierSettings(reference=0).enabled
