"""Outlier scores: is this record unlike the records its model was judged on?

Drift compares windows of records with a model's reference as populations; this scores each record. Per
model, a detector is fitted on the first records the model scores (`SERVING_OUTLIER_REFERENCE`), and from
then every record the model answers gets an outlier score in its result's metadata, before the result is
written. The score is the record's squared Mahalanobis distance from the reference (what scikit-learn's
`EmpiricalCovariance` fits, computed in NumPy: the reference's mean and covariance of the features below),
divided by the distance of the reference's own most unusual records (its `SERVING_OUTLIER_CONTAMINATION`
quantile): a score of 1 or more is an outlier whatever the model, and no reader needs a threshold.

Why this detector (docs/observability.md#outliers has the figures): scoring is one vectorised call per batch,
under half a microsecond per record, and fitting takes a millisecond, so nothing waits for it; its state is a
mean and a covariance. It separated the generator's shifted records as well as an isolation forest of 100
trees, at a thirtieth of the cost. pyod's HBOS compiles with numba for 4-6 s in every new process and
separated them less well; river's HalfSpaceTrees scores one record at a time, 11-33 us each; scikit-learn's
robust covariance (MinCovDet) takes up to seconds to fit and collapsed onto a feature that barely varies.

A record's features: its user; how many products it has; where its products lie in the reference's product
distribution (the mean of their mid-ranks there, as a z-score: sqrt(12 n) (mean - 1/2), about normal for any
record of the reference's kind, large for a record whose products all come from one end of the catalogue);
and the mean score the model gave them. An id far out of the range the model was judged on, a record of
unusual size, products from an unusual part of the catalogue or scores the model rarely gives all move a
record away from the reference.

The detector is fitted once, on the reference, and never learns afterwards: what it flags cannot teach it
that strange is normal, and an attacker who sends many strange records raises the outlier rate instead of
moving the reference. A model served again after `IDLE_FORGET` gets a new reference, as for drift.

Per window of `SERVING_OUTLIER_WINDOW` records the step counts the outliers; a window whose outlier rate
passes `SERVING_OUTLIER_THRESHOLD` emits an `outlier` model event, the first window back under it
`outlier-cleared`. The reference, the fitted detector and the window are the step's recovery state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import ClassVar

import numpy as np
from bytewax.operators import StatefulBatchLogic
from pydantic import Field, model_validator

from flows.core.errors import ConfigurationError
from flows.core.events import ModelEvent
from flows.core.records import ScoredBatch
from flows.core.sections import Section
from flows.core.serving_state import ServingState
from flows.core.vocabulary import EventKind

FEATURES = ("user", "products per record", "product rank z-score", "mean score")
MAX_REFERENCE = 5_000
PRODUCTS_KEPT_PER_RECORD = 30  # of each reference record, for the reference's product distribution
IDLE_FORGET = timedelta(hours=1)
RATES_KEPT = 60  # the outlier rate of a model's last windows, on /state


class OutlierSettings(Section):
    """How the flow scores records as outliers (`SERVING_OUTLIER_*`); `reference` 0 turns it off."""

    reference: int = Field(
        1_000,
        ge=0,
        le=MAX_REFERENCE,
        description=(
            "records a model's outlier detector is fitted on: the first it scores (`0`: no outlier scores); "
            "see [Observability](observability.md#outliers)"
        ),
    )
    contamination: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description=(
            "share of the reference's records that count as outliers: a record scores 1 where the "
            "reference's most unusual this share begins"
        ),
    )
    window: int = Field(2_000, ge=1, description="records per outlier window, whose outlier rate is watched")
    threshold: float = Field(
        0.1,
        gt=0,
        le=1,
        description=(
            "outlier rate of a window over which the model gets an `outlier` event; the first window under "
            "it again, `outlier-cleared`"
        ),
    )

    @property
    def enabled(self) -> bool:
        return self.reference > 0

    @model_validator(mode="after")
    def _reference_can_hold_its_outliers(self) -> OutlierSettings:
        if self.enabled and self.reference * self.contamination < 1:
            raise ConfigurationError(
                f"SERVING_OUTLIER_REFERENCE ({self.reference}) times SERVING_OUTLIER_CONTAMINATION "
                f"({self.contamination}) is under one record: the reference would have no outlier to set "
                "the line by"
            )
        return self


def mean_and_precision(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows' mean and the pseudo-inverse of their (biased) covariance: what scikit-learn's
    `EmpiricalCovariance` fits (`location_`, `precision_`), in NumPy. The library's import took 1-3 s of
    every flow's start and 113 MB beside ONNX Runtime (SciPy and scikit-learn) for four lines of algebra."""
    covariance = np.atleast_2d(np.cov(reference, rowvar=False, bias=True))
    return reference.mean(axis=0), np.linalg.pinv(covariance, hermitian=True)


@dataclass(frozen=True, slots=True)
class AnsweredRecords:
    """The records of a batch its model answered with scores, in columns: their indices in the batch, users,
    product counts and mean scores, and the pairs' products with the (answered) record each belongs to."""

    indices: np.ndarray
    users: np.ndarray
    counts: np.ndarray
    mean_scores: np.ndarray
    products: np.ndarray
    record_of_pair: np.ndarray


def answered_records(batch: ScoredBatch) -> AnsweredRecords:
    """`batch`'s answered records (see AnsweredRecords), read from its columns: no object per record."""
    answered = batch.answered()
    counts = np.asarray(batch.counts, np.int64)
    record_of_pair = np.repeat(np.arange(counts.size), counts)
    if not batch.scores.size or not answered.any():
        empty = np.empty(0)
        return AnsweredRecords(np.flatnonzero(answered), empty, empty, empty, empty, empty.astype(np.int64))
    products = batch.pair_products()
    sums = np.bincount(record_of_pair, weights=batch.scores, minlength=counts.size)
    mean_scores = sums / np.maximum(counts, 1)
    users = batch.record_users()
    if not answered.all():  # the pairs of answered records, renumbered among them
        in_pairs = np.repeat(answered, counts)
        renumbered = np.cumsum(answered) - 1
        products, record_of_pair = products[in_pairs], renumbered[record_of_pair[in_pairs]]
    return AnsweredRecords(
        np.flatnonzero(answered),
        users[answered],
        counts[answered].astype(np.float64),
        mean_scores[answered],
        products,
        record_of_pair,
    )


@dataclass
class ProductRanks:
    """The reference's product distribution: each product id's mid-rank in it, in [0, 1] (the share of the
    reference's products below it, plus half the share equal to it).

    Looked up in a table over the range of ids the reference holds (ids are integers), at most `MAX_TABLE`
    of them; an id below that range ranks 0, above it 1. A reference spread wider is searched instead (two
    binary searches per product, ten times the cost).
    """

    values: np.ndarray  # the distinct product ids seen, sorted
    below: np.ndarray  # how many reference products are under each of `values` (and the total, last)
    table: np.ndarray | None  # the mid-rank of each id from values[0] to values[-1], if not too many

    MAX_TABLE: ClassVar[int] = 1 << 20

    @classmethod
    def of(cls, products: np.ndarray) -> ProductRanks:
        values, counts = np.unique(products, return_counts=True)
        ranks = cls(values, np.concatenate([[0], np.cumsum(counts)]), None)
        span = values[-1] - values[0] + 1 if values.size else 0
        if 0 < span <= cls.MAX_TABLE and np.array_equal(values, np.round(values)):
            ranks.table = ranks._searched(values[0] + np.arange(int(span), dtype=np.float64))
        return ranks

    def of_products(self, products: np.ndarray) -> np.ndarray:
        """The mid-rank of each of `products`."""
        if self.table is None:
            return self._searched(products)
        offsets = products - self.values[0]
        inside = (offsets >= 0) & (offsets < self.table.size)
        ranks = np.where(offsets < 0, 0.0, 1.0)
        ranks[inside] = self.table[offsets[inside].astype(np.int64)]
        return ranks

    def _searched(self, products: np.ndarray) -> np.ndarray:
        left = self.below[np.searchsorted(self.values, products, "left")]
        right = self.below[np.searchsorted(self.values, products, "right")]
        return (left + right) / (2 * self.below[-1])

    def z_scores(self, records: AnsweredRecords) -> np.ndarray:
        """Per record: sqrt(12 n) (mean mid-rank of its n products - 1/2); 0 for a record without any. (n:
        the products present, which for a reference record are its first PRODUCTS_KEPT_PER_RECORD.)"""
        ranks = self.of_products(records.products)
        present = np.bincount(records.record_of_pair, minlength=records.counts.size)
        sums = np.bincount(records.record_of_pair, weights=ranks, minlength=records.counts.size)
        means = sums / np.maximum(present, 1)
        return np.where(present > 0, (means - 0.5) * np.sqrt(12 * present), 0.0)


def features(records: AnsweredRecords, ranks: ProductRanks) -> np.ndarray:
    """FEATURES, one row per answered record."""
    return np.column_stack([records.users, records.counts, ranks.z_scores(records), records.mean_scores])


@dataclass
class OutlierState:
    """A model's outlier detector: its reference (its records' columns, then the fitted detector), the
    current window, and what it last said."""

    model_name: str = ""
    # Products cut to PRODUCTS_KEPT_PER_RECORD per record: the reference's memory is bounded by its records.
    reference: list[AnsweredRecords] = field(default_factory=list)
    reference_records: int = 0
    ranks: ProductRanks | None = None
    # The reference's mean and precision (inverse covariance) of the features, as scikit-learn's
    # EmpiricalCovariance would estimate them (`mean_and_precision`), once fitted.
    location: np.ndarray | None = None
    precision: np.ndarray | None = None
    line: float = 0.0  # the squared distance that scores 1
    # Why the last reference could not be fitted: the model's records get no score while the next one is
    # taken (a reference of identical records, say, sent first by whoever writes the data topic).
    unfit: str = ""
    window_records: int = 0
    window_outliers: int = 0
    windows: int = 0
    alerting: bool = False
    rates: list[float] = field(default_factory=list)  # the last RATES_KEPT windows' outlier rates
    scored: int = 0
    outliers: int = 0


class OutlierDetector:
    """One model's detector (see the module docstring): `score` sets a batch's outlier scores and returns
    the events its windows give."""

    def __init__(self, settings: OutlierSettings, state: OutlierState) -> None:
        self.settings = settings
        self.state = state

    def score(self, batch: ScoredBatch) -> list[ModelEvent]:
        state = self.state
        records = answered_records(batch)
        if not records.indices.size:
            return []
        taught = 0  # the batch's records that went to the reference: they get no score
        if state.ranks is None:
            taught = self._add_to_reference(records)
            if state.ranks is None or taught == records.indices.size:
                return []
        distances = self.distances(features(records, state.ranks)[taught:])
        scores = np.full(len(batch.messages), np.nan)
        scores[records.indices[taught:]] = distances / state.line
        batch.outlier_scores = scores
        outliers = int(np.count_nonzero(distances >= state.line))
        state.scored += distances.size
        state.outliers += outliers
        state.window_records += distances.size
        state.window_outliers += outliers
        if state.window_records < self.settings.window:
            return []
        return self._close_window()

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row from the reference: what scikit-learn's
        `EmpiricalCovariance.mahalanobis` computes, without its checks of the input (a tenth of the cost
        at 1,000 rows; the rows come from `features`, never from outside)."""
        assert self.state.location is not None and self.state.precision is not None
        centered = rows - self.state.location
        return np.einsum("ij,jk,ik->i", centered, self.state.precision, centered)

    def _add_to_reference(self, records: AnsweredRecords) -> int:
        """Take the first of `records` the reference still needs (fitting it once complete); how many."""
        state = self.state
        taken = min(self.settings.reference - state.reference_records, records.indices.size)
        kept = (records.record_of_pair < taken) & (_place_in_record(records) < PRODUCTS_KEPT_PER_RECORD)
        state.reference.append(
            AnsweredRecords(
                records.indices[:taken],
                records.users[:taken],
                records.counts[:taken],
                records.mean_scores[:taken],
                records.products[kept],
                records.record_of_pair[kept],
            )
        )
        state.reference_records += taken
        if state.reference_records >= self.settings.reference:
            self._fit()
        return taken

    def _fit(self) -> None:
        state = self.state
        parts, state.reference = state.reference, []
        ranks = ProductRanks.of(np.concatenate([part.products for part in parts]))
        reference = np.concatenate([features(part, ranks) for part in parts])
        state.location, state.precision = mean_and_precision(reference)
        distances = self.distances(reference)
        line = float(np.quantile(distances, 1 - self.settings.contamination))
        if not np.isfinite(line) or line <= 0:
            state.unfit = (
                f"the reference's outlier line is {line:g}: its {len(reference):,} records are all alike; "
                "taking another"
            )
            state.location = state.precision = None
            state.reference_records = 0
            return
        state.ranks, state.line, state.unfit = ranks, line, ""

    def _close_window(self) -> list[ModelEvent]:
        state = self.state
        rate = state.window_outliers / state.window_records
        records, state.windows = state.window_records, state.windows + 1
        state.rates = [*state.rates, round(rate, 4)][-RATES_KEPT:]
        state.window_records = state.window_outliers = 0
        over = rate > self.settings.threshold
        if over == state.alerting:
            return []
        state.alerting = over
        verdict = "over" if over else "back under"
        reason = (
            f"outlier rate {rate:.3f} {verdict} {self.settings.threshold:g} in window {state.windows} "
            f"({records:,} records; reference: the first {self.settings.reference:,}, "
            f"{self.settings.contamination:g} of them outliers)"
        )
        kind = EventKind.OUTLIER if over else EventKind.OUTLIER_CLEARED
        return [ModelEvent(kind, state.model_name, reason)]


def _place_in_record(records: AnsweredRecords) -> np.ndarray:
    """Each pair's place among its record's pairs: 0, 1, ..."""
    starts = np.cumsum(records.counts) - records.counts
    return np.arange(records.record_of_pair.size) - starts[records.record_of_pair].astype(np.int64)


class OutlierLogic(StatefulBatchLogic[ScoredBatch, ScoredBatch | ModelEvent, OutlierState]):
    """The outlier step of one model (the key): scores its batches, passes them on, adds its events, and
    shows its windows on /state. Forgotten after IDLE_FORGET without a record, as the drift step is."""

    def __init__(
        self, settings: OutlierSettings, serving_state: ServingState, resume: OutlierState | None
    ) -> None:
        self.detector = OutlierDetector(settings, resume if resume is not None else OutlierState())
        self.serving_state = serving_state
        if self.detector.state.model_name:
            self._publish()

    def on_batch(self, values: list[ScoredBatch]) -> tuple[list[ScoredBatch | ModelEvent], bool]:
        out: list[ScoredBatch | ModelEvent] = []
        state = self.detector.state
        for batch in values:
            state.model_name = state.model_name or batch.metadata.model_name
            before = (state.windows, state.ranks is None, state.unfit)
            events = self.detector.score(batch)
            out.append(batch)
            out.extend(events)
            if (state.windows, state.ranks is None, state.unfit) != before:
                self._publish()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return datetime.now(timezone.utc) + IDLE_FORGET

    def on_notify(self) -> tuple[list[ScoredBatch | ModelEvent], bool]:
        self.serving_state.forget_outliers(self.detector.state.model_name)
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> OutlierState:
        return copy.deepcopy(self.detector.state)

    def _publish(self) -> None:
        state = self.detector.state
        self.serving_state.outliers(
            state.model_name,
            {
                "fitted": state.ranks is not None,
                "unfit": state.unfit,
                "windows": state.windows,
                "alerting": state.alerting,
                "threshold": self.detector.settings.threshold,
                "rates": list(state.rates),
                "scored": state.scored,
                "outliers": state.outliers,
            },
        )
