"""Challenger models: a second model beside the champion, on live records, that never touches its answers
unless an experiment says so.

A descriptor with role `challenger` goes through the same admission as any model; the model holder then
keeps it beside the champion and sends it to every shard (see `flows.core.model_holder`), which scores with
both:

- **shadow**: the champion answers every record. The challenger also scores the records of a `fraction` of
  users, in one extra model call per micro-batch, and the two are compared record by record: the share of
  the champion's top-k products the challenger also ranks top-k, and the absolute difference of each
  pair's two scores. A challenger that fails costs its comparison, nothing else.
- **canary**: the users whose sticky hash falls under `fraction` get the challenger's result (its name is
  in the result's metadata), the others the champion's. A record the challenger fails on is answered by
  the champion instead, so a broken canary degrades to the champion rather than to errors.

Users are chosen by a hash of the user id salted with the challenger's name: a user sees one model for the
whole experiment, on every shard and after a restart, and a new challenger draws its own users.

With `serve(..., shadow_results=True)`, a shadow challenger's own results leave the shard too
(tagged `Emits.SHADOW` by `flows.core.shard`), for a topic of their own: joined with the results by the data
message they answer, they give both models' scores of every sampled record.

Each shard sums what it saw over windows of `ChallengerSettings.window` challenger records and emits a
`ChallengerReport` per window (and a last, partial one when the challenger is promoted, retired or
replaced). The sums are a few numbers, part of the shard's recovery state.

A `promote` command makes the challenger the champion (shards already hold its scorer: the swap is
immediate); `retire` drops it. Both are model-stream messages, so an experiment is driven by publishing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pydantic import Field

from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import CANARY, ModelDescriptor
from flows.core.events import ChallengerReport
from flows.core.records import DataMessage, ScoredBatch
from flows.core.scorer import Scorer
from flows.core.scoring import Pairs, pairs_of, score_batch
from flows.core.sections import Section
from flows.core.vocabulary import ClosedBy


class ChallengerSettings(Section):
    """How shards compare a challenger with the champion (`SERVING_CHALLENGER_*`)."""

    window: int = Field(
        1_000,
        ge=1,
        description=(
            "challenger records (shadow: compared; canary: answered) per challenger report on each shard; a "
            "promote, retire, new challenger or the end of the input closes a partial one"
        ),
    )
    top_k: int = Field(
        5,
        ge=1,
        description=(
            "k of a shadow challenger's top-k agreement: the mean share of each record's k best-scored "
            "products that both models rank among their k best"
        ),
    )


@dataclass(frozen=True, slots=True)
class ExperimentScores:
    """A micro-batch scored under an experiment: the result batches (each with its call's ms and the model
    that answered) and, in shadow mode, the challenger's own results."""

    answered: list[tuple[ScoredBatch, float, str]]
    shadow: ScoredBatch | None = None


def user_buckets(users: np.ndarray, salt: str) -> np.ndarray:
    """A number in [0, 1) per user, the same for a user and `salt` wherever and whenever it is computed.

    SplitMix64's finaliser over the user id mixed with a digest of `salt`: uniform enough that a fraction
    f of users falls under f, vectorised, and stable across processes (Python's `hash` is salted per run).
    """
    salt_value = np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))
    with np.errstate(over="ignore"):
        mixed = users.astype(np.int64).view(np.uint64) ^ salt_value
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed = mixed ^ (mixed >> np.uint64(31))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def chosen(messages: list[DataMessage], fraction: float, salt: str) -> np.ndarray:
    """Which of `messages` belong to the `fraction` of users the challenger named `salt` gets."""
    if fraction >= 1.0:
        return np.ones(len(messages), bool)
    users = np.fromiter((message.record.user for message in messages), np.int64, len(messages))
    return user_buckets(users, salt) < fraction


@dataclass(slots=True)
class ComparisonWindow:
    """Sums over one window of a challenger's records on one shard: bounded, whatever the traffic."""

    number: int = 1
    start_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    records: int = 0
    challenger_records: int = 0
    challenger_errors: int = 0
    agreement_sum: float = 0.0
    compared_records: int = 0
    abs_diff_sum: float = 0.0
    compared_pairs: int = 0
    champion_calls: int = 0
    champion_ms: float = 0.0
    challenger_calls: int = 0
    challenger_ms: float = 0.0

    def next(self) -> ComparisonWindow:
        return ComparisonWindow(self.number + 1)


@dataclass(slots=True)
class ChallengerSlot:
    """What a shard keeps of its challenger, in its recovery state: never the model itself."""

    name: str
    digest: str
    mode: str
    fraction: float
    champion: str = ""
    window: ComparisonWindow = field(default_factory=ComparisonWindow)

    @classmethod
    def of(cls, descriptor: ModelDescriptor, champion: str) -> ChallengerSlot:
        return cls(descriptor.model_name, descriptor.digest, descriptor.mode, descriptor.fraction, champion)

    def report(self, shard: str, closed_by: ClosedBy, top_k: int) -> ChallengerReport:
        """The window so far as a report."""
        window = self.window
        return ChallengerReport(
            challenger=self.name,
            champion=self.champion,
            mode=self.mode,
            fraction=self.fraction,
            shard=shard,
            window=window.number,
            closed_by=closed_by,
            records=window.records,
            challenger_records=window.challenger_records,
            challenger_errors=window.challenger_errors,
            compared_records=window.compared_records,
            compared_pairs=window.compared_pairs,
            top_k=top_k,
            top_k_agreement=_mean(window.agreement_sum, window.compared_records),
            mean_abs_diff=_mean(window.abs_diff_sum, window.compared_pairs),
            champion_batch_ms=_mean(window.champion_ms, window.champion_calls),
            challenger_batch_ms=_mean(window.challenger_ms, window.challenger_calls),
            start_time=window.start_ms,
            end_time=time.time_ns() // 1_000_000,
        )


def merge_reports(reports: list[ChallengerReport]) -> ChallengerReport:
    """One report for several (the same window of several shards, or a challenger's whole run): counts
    summed, each mean weighted by what it is a mean of (`MEAN_WEIGHTS`), `shard` saying how many."""
    first = reports[0]
    if len(reports) == 1:
        return first

    def weighted(mean: str, weight: str) -> float:
        total = sum(getattr(report, weight) for report in reports)
        values = sum(getattr(report, mean) * getattr(report, weight) for report in reports)
        return round(values / total, 6) if total else 0.0

    shards = len({report.shard for report in reports})
    # Fields named at run time (ints summed, floats averaged): typed by the dataclass, not here.
    combined: dict[str, Any] = {
        **{count: sum(getattr(report, count) for report in reports) for count in SUMMED_COUNTS},
        **{mean: weighted(mean, weight) for mean, weight in MEAN_WEIGHTS.items()},
    }
    return replace(
        first,
        shard=f"{shards} shards" if shards > 1 else first.shard,
        **combined,
        start_time=min(report.start_time for report in reports),
        end_time=max(report.end_time for report in reports),
    )


SUMMED_COUNTS = ("records", "challenger_records", "challenger_errors", "compared_records", "compared_pairs")
# Each mean of a report, and the count it is the mean over (batch times: approximately, by records).
MEAN_WEIGHTS = {
    "top_k_agreement": "compared_records",
    "mean_abs_diff": "compared_pairs",
    "champion_batch_ms": "records",
    "challenger_batch_ms": "challenger_records",
}


def _mean(total: float, count: int) -> float:
    return round(total / count, 6) if count else 0.0


@dataclass(frozen=True, slots=True)
class ModelCall:
    """A model, named, to score with."""

    scorer: Scorer
    name: str


def score_with_challenger(
    champion: ModelCall,
    challenger: ModelCall,
    slot: ChallengerSlot,
    messages: list[DataMessage],
    policy: AdmissionPolicy,
    top_k: int,
) -> ExperimentScores:
    """`messages` scored under `slot`'s experiment; `slot.window` counts what happened."""
    window = slot.window
    window.records += len(messages)
    mask = chosen(messages, slot.fraction, slot.name)
    if slot.mode == CANARY:
        return ExperimentScores(_canary(champion, challenger, window, messages, mask, policy))
    pairs = pairs_of(messages)  # made once, for both calls
    answered, champion_ms = score_batch(champion.scorer, champion.name, messages, policy, pairs)
    window.champion_calls += 1
    window.champion_ms += champion_ms
    shadow = None
    if mask.any():
        sample, sample_pairs = (messages, pairs) if mask.all() else _sampled(messages, pairs, mask)
        shadow, challenger_ms = score_batch(challenger.scorer, challenger.name, sample, policy, sample_pairs)
        window.challenger_calls += 1
        window.challenger_ms += challenger_ms
        window.challenger_records += len(sample)
        _compare(answered, mask, shadow, top_k, window)
    return ExperimentScores([(answered, champion_ms, champion.name)], shadow)


def _sampled(messages: list[DataMessage], pairs: Pairs, mask: np.ndarray) -> tuple[list[DataMessage], Pairs]:
    """The messages `mask` chooses, and their pairs cut from `pairs`."""
    users, products, counts = pairs
    in_sample = np.repeat(mask, counts)
    chosen_counts = [count for count, take in zip(counts, mask.tolist()) if take]
    sample = [message for message, take in zip(messages, mask.tolist()) if take]
    return sample, (users[in_sample], products[in_sample], chosen_counts)


def _canary(
    champion: ModelCall,
    challenger: ModelCall,
    window: ComparisonWindow,
    messages: list[DataMessage],
    mask: np.ndarray,
    policy: AdmissionPolicy,
) -> list[tuple[ScoredBatch, float, str]]:
    to_challenger = [message for message, take in zip(messages, mask.tolist()) if take]
    to_champion = [message for message, take in zip(messages, mask.tolist()) if not take]
    outputs: list[tuple[ScoredBatch, float, str]] = []
    if to_challenger:
        answered, challenger_ms = score_batch(challenger.scorer, challenger.name, to_challenger, policy)
        window.challenger_calls += 1
        window.challenger_ms += challenger_ms
        failed = {index for index, item in answered.replaced.items() if item.result.metadata.errors}
        if failed:
            # The champion answers what the challenger could not: a broken canary is the champion's business.
            to_champion += [message for index, message in enumerate(to_challenger) if index in failed]
            kept = [index for index in range(len(to_challenger)) if index not in failed]
            answered = ScoredBatch.of_results([to_challenger[i] for i in kept], [answered[i] for i in kept])
            window.challenger_errors += len(failed)
        window.challenger_records += len(answered)
        if len(answered):
            outputs.append((answered, challenger_ms, challenger.name))
    if to_champion:
        scored, champion_ms = score_batch(champion.scorer, champion.name, to_champion, policy)
        window.champion_calls += 1
        window.champion_ms += champion_ms
        outputs.append((scored, champion_ms, champion.name))
    return outputs


def pair_scores(batch: ScoredBatch) -> tuple[np.ndarray, np.ndarray]:
    """The score of every pair of `batch` (NaN where a record has none) and which records have scores."""
    total = sum(batch.counts)
    scored = np.ones(len(batch), bool)
    if batch.scores.size == total:
        scores = batch.scores.astype(np.float64)
        scored[list(batch.replaced)] = False  # a columnar batch replaces only records with an error
        return scores, scored
    scores = np.full(total, np.nan)  # results made one by one (`ScoredBatch.of_results`)
    for index, (start, item) in enumerate(zip(batch.starts, batch)):
        probabilities = item.result.model_result.probabilities
        if item.result.metadata.errors or len(probabilities) != batch.counts[index]:
            scored[index] = False
            continue
        scores[start : start + batch.counts[index]] = probabilities
    return scores, scored


def _compare(
    champion: ScoredBatch, sampled: np.ndarray, challenger: ScoredBatch, top_k: int, window: ComparisonWindow
) -> None:
    """Add the comparison of `challenger` (scores of the records of `champion` that `sampled` marks) to
    `window`."""
    champion_scores, champion_ok = pair_scores(champion)
    challenger_scores, challenger_ok = pair_scores(challenger)
    window.challenger_errors += int((~challenger_ok).sum())
    counts = np.asarray(champion.counts, np.int64)
    if not sampled.all():
        champion_scores = champion_scores[np.repeat(sampled, counts)]
        counts, champion_ok = counts[sampled], champion_ok[sampled]
    usable = champion_ok & challenger_ok & (counts > 0)
    if not usable.any():
        return
    pair_usable = np.repeat(usable, counts)
    counts = counts[usable]
    a, b = champion_scores[pair_usable], challenger_scores[pair_usable]
    agreement = top_k_agreement(a, b, counts, top_k)
    window.agreement_sum += float(agreement.sum())
    window.compared_records += int(counts.size)
    window.abs_diff_sum += float(np.abs(a - b).sum())
    window.compared_pairs += int(a.size)


def top_k_agreement(a: np.ndarray, b: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Per record (its pairs laid out in turn, `counts` of them, at least one): the share of its top-`k`
    pairs by `a` that are also top-`k` by `b`. Vectorised over the batch (see `_top_k`)."""
    records = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    column = np.arange(records.size) - starts[records]
    both = _top_k(a, records, column, counts, k) & _top_k(b, records, column, counts, k)
    return np.bincount(records, weights=both, minlength=counts.size) / np.minimum(counts, k)


def _top_k(
    scores: np.ndarray, records: np.ndarray, column: np.ndarray, counts: np.ndarray, k: int
) -> np.ndarray:
    """Whether each pair is among its record's `k` highest scores (`column`: its place in its record).

    Records padded into a matrix, one row each, and partitioned row by row: 1 ms for 1,000 records of up
    to 30 products, a tenth of sorting by (record, score). A batch whose widest record would make the
    matrix much larger than the batch sorts instead.
    """
    width = int(counts.max())
    if width <= k:
        return np.ones(scores.size, bool)
    if counts.size * width > 4 * scores.size + 4096:
        order = np.lexsort((-scores, records))  # by record, then by score, highest first
        ranks = np.empty(scores.size, np.int64)
        ranks[order] = column  # the sorted pairs of a record take its columns 0, 1, ... in turn
        return ranks < k
    matrix = np.full((counts.size, width), -np.inf)
    matrix[records, column] = scores
    top = np.zeros(matrix.shape, bool)
    np.put_along_axis(top, np.argpartition(-matrix, k - 1, axis=1)[:, :k], True, axis=1)
    return top[records, column]
