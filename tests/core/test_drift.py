"""Drift monitoring: detected on a shifted stream and not on an unshifted one, recovered when the data comes
back, bounded state that survives a restart, and the same verdict through the dataflow with 1 and 2
workers."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from itertools import chain

import numpy as np
from bytewax.operators import StatefulBatchLogic
from support.core_runs import generated_blocks as records
from support.core_runs import messages

from flows.adapters.sources.generators import POPULAR_PRODUCTS
from flows.adapters.sources.generators import generated_records as plain_records
from flows.core.drift import (
    BatchFeatures,
    DriftLogic,
    DriftMonitor,
    DriftSettings,
    DriftState,
    batch_features,
    bin_counts,
)
from flows.core.records import ModelResultMetadata, RecommenderRecord, ScoredBatch
from flows.core.scoring import unscored
from flows.core.serving_state import ServingState

SETTINGS = DriftSettings(reference=2_000, window=1_000, threshold=0.2, sample=1_000)


def features(batch: list[RecommenderRecord], model: str = "m") -> BatchFeatures:
    """Features as the flow takes them from a scored batch; the score: a fixed function of the product."""
    counts = [len(record.products) for record in batch]
    products = np.fromiter(chain.from_iterable(record.products for record in batch), np.float64)
    return BatchFeatures(
        model,
        np.array([record.user for record in batch], np.float64),
        np.array(counts, np.float64),
        products,
        (products % 97) / 97,
    )


def feed(monitor: DriftMonitor, data: list[RecommenderRecord], batch: int = 250) -> list:
    events = []
    for start in range(0, len(data), batch):
        events.extend(monitor.observe(features(data[start : start + batch])))
    return events


def test_an_unshifted_stream_does_not_drift():
    monitor = DriftMonitor(2_000, 1_000, 0.2, DriftState("m"))
    assert feed(monitor, records(7, range(8))) == []  # the reference (2,048 records)
    assert feed(monitor, records(7, range(8, 48))) == []  # ten windows of the same population
    assert monitor.state.windows == 10
    assert max(drift.psi for drift in monitor.state.last.values()) < 0.05


def test_a_shifted_stream_drifts_then_recovers_when_the_data_comes_back():
    monitor = DriftMonitor(2_000, 1_000, 0.2, DriftState("m"))
    feed(monitor, records(7, range(8)))
    drifted = feed(monitor, records(7, range(8, 16), shifted=True))
    assert [event.kind for event in drifted] == ["drift"]
    assert "PSI of product" in drifted[0].reason and "over 0.2" in drifted[0].reason
    assert monitor.state.last["product"].psi > 0.2 and monitor.state.last["user"].psi < 0.05
    assert feed(monitor, records(7, range(16, 24), shifted=True)) == []  # still drifting: said once
    recovered = feed(monitor, records(7, range(24, 32)))
    assert [event.kind for event in recovered] == ["recovered"] and not monitor.state.drifting


def test_the_state_is_bounded_and_survives_a_restart():
    monitor = DriftMonitor(2_000, 1_000, 0.2, DriftState("m"))
    feed(monitor, records(7, range(8)))
    feed(monitor, records(7, range(8, 14), shifted=True))  # a window closed, the next under way
    size = len(pickle.dumps(monitor.state))
    feed(monitor, records(7, range(14, 60)))  # 11,776 records more: the state does not grow
    assert len(pickle.dumps(monitor.state)) <= size + 64
    resumed = DriftMonitor(2_000, 1_000, 0.2, pickle.loads(pickle.dumps(monitor.state)))
    tail = records(7, range(60, 72), shifted=True)
    assert [e.kind for e in feed(resumed, tail)] == [e.kind for e in feed(monitor, tail)] == ["drift"]


def test_the_reference_sample_is_bounded_however_many_products_a_record_has():
    monitor = DriftMonitor(100, 100, 0.2, DriftState("m"))
    wide = [RecommenderRecord(1, list(range(5_000)))] * 10
    monitor.observe(features(wide))
    assert sum(len(part) for part in monitor.state.samples[2]) <= 100 * 4


def test_the_drift_step_shows_its_last_window_on_the_state():
    serving_state = ServingState()
    logic = DriftLogic(
        DriftSettings(reference=2_000, window=1_000, threshold=0.2, sample=1_000), serving_state, None
    )
    data = records(7, range(8)) + records(7, range(8, 12), shifted=True)
    events = []
    for start in range(0, len(data), 250):
        emitted, _ = logic.on_batch([features(data[start : start + 250], "recommender-v1")])
        events.extend(emitted)
    assert [event.kind for event in events] == ["drift"]
    shown = serving_state.drift_per_model()["recommender-v1"]
    assert shown["drifting"] and shown["windows"] == 1 and shown["features"]["product"]["psi"] > 0.2
    restored = DriftLogic(
        DriftSettings(reference=2_000, window=1_000, threshold=0.2, sample=1_000),
        ServingState(),
        logic.snapshot(),
    )
    assert restored.monitor.state.windows == 1 and restored.monitor.state.drifting


def test_batch_features_read_a_sample_of_the_scored_batch():
    data = list(plain_records(3, 10))
    counts = [len(record.products) for record in data]
    scores = np.linspace(0, 1, sum(counts), dtype=np.float32)
    metadata = ModelResultMetadata(model_name="m")
    batch = ScoredBatch(messages(data), counts, scores, metadata)
    sampled = batch_features(batch, 4)
    assert sampled.users.tolist() == [record.user for record in data[:4]]
    assert sampled.counts.tolist() == counts[:4]
    assert sampled.products.tolist() == list(chain.from_iterable(record.products for record in data[:4]))
    assert np.allclose(sampled.scores, scores[: sum(counts[:4])])
    assert batch_features(ScoredBatch.of_results([], []), 4) is None


def test_batch_features_leave_out_records_with_an_error():
    """A refused id (2**63 - 1 here) or a withheld score is not what the model sees and answers."""
    data = list(plain_records(3, 10))
    data[1] = RecommenderRecord(2**63 - 1, data[1].products)
    counts = [len(record.products) for record in data]
    scores = np.linspace(0, 1, sum(counts), dtype=np.float32)
    given = messages(data)
    replaced = {1: unscored(given[1], "refused"), 6: unscored(given[6], "refused")}
    batch = ScoredBatch(given, counts, scores, ModelResultMetadata(model_name="m"), replaced)
    sampled = batch_features(batch, 4)
    kept = [0, 2, 3]
    assert sampled.users.tolist() == [data[i].user for i in kept]
    assert sampled.counts.tolist() == [counts[i] for i in kept]
    starts = np.cumsum([0, *counts])
    assert (
        sampled.scores.tolist() == np.concatenate([scores[starts[i] : starts[i + 1]] for i in kept]).tolist()
    )
    only_errors = ScoredBatch(given[1:2], counts[1:2], scores[: counts[1]], batch.metadata, {0: replaced[1]})
    assert batch_features(only_errors, 4) is None


def test_the_generator_shifts_to_the_popular_range_for_a_while():
    plain, shifted = records(7, range(4)), records(7, range(4), shifted=True)
    share = [
        np.isin(np.concatenate([r.products for r in data]), list(POPULAR_PRODUCTS)).mean()
        for data in (plain, shifted)
    ]
    assert share[0] < 0.25 and share[1] > 0.75


def test_generated_records_drift_only_between_shift_after_and_twice_that():
    shifting, plain = list(plain_records(7, 1_000, shift_after=300)), list(plain_records(7, 1_000))
    assert shifting[:300] == plain[:300] and shifting[600:] == plain[600:]
    assert all(a != b for a, b in zip(shifting[300:600], plain[300:600]))


def test_bin_counts_place_each_value_by_the_edges_at_or_below_it():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.integers(-5, 40, 3_000).astype(np.float64), [10.0, 20.0, 30.0]])
    edges = np.array([10.0, 20.0, 30.0])
    expected = np.bincount(np.searchsorted(edges, values, side="right"), minlength=4)
    assert bin_counts(edges, values).tolist() == expected.tolist()
    assert bin_counts(np.empty(0), values).tolist() == [len(values)]


def test_a_model_idle_for_an_hour_is_forgotten():
    serving_state = ServingState()
    logic = DriftLogic(SETTINGS, serving_state, None)
    data = records(7, range(8))
    logic.on_batch([features(data, "recommender-v1")])
    assert "recommender-v1" in serving_state.drift_per_model()
    wake = logic.notify_at() - datetime.now(timezone.utc)
    assert timedelta(minutes=59) < wake <= timedelta(hours=1)
    assert logic.on_notify() == ([], StatefulBatchLogic.DISCARD)
    assert serving_state.drift_per_model() == {}
