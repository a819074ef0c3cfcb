"""Scoring a micro-batch of data messages with one model call.

All (user, product) pairs of the batch go to the scorer in one call and the probabilities are split back
per record. If that call fails, the records are scored one by one, so a single bad record (say, a product
the model does not know) gets the error and the rest of the batch still gets scores. A record with a score
that is not finite or lies outside the policy's output range gets an error instead of its scores: a model
that passed its probe can still misbehave on other inputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import chain

import numpy as np

from flows.admission.policy import AdmissionPolicy
from flows.admission.probe import out_of_range
from flows.records import (
    DataMessage,
    ModelResultMetadata,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredBatch,
    ScoredMessage,
    cut,
)
from flows.scorers import Scorer, ScorerUnavailable


def unscored(message: DataMessage, error: str, model_name: str = "", source: str = "") -> ScoredMessage:
    """A result with no scores that says why."""
    metadata = ModelResultMetadata(
        errors=cut(error), model_name=model_name, source=source, start_time=time.time_ns() // 1_000_000
    )
    return ScoredMessage(
        RecommenderResult(message.record, RecommenderServingOutput(), metadata),
        message.entered_ns,
        message.origin,
    )


Pairs = tuple[np.ndarray, np.ndarray, list[int]]  # users and products of every pair, pairs per record


def pairs_of(messages: Sequence[DataMessage]) -> Pairs:
    """The (user, product) pairs of `messages`, laid out record by record, as a model call takes them."""
    counts = [len(message.record.products) for message in messages]
    users = np.repeat(np.fromiter((m.record.user for m in messages), np.float32, len(messages)), counts)
    products = np.fromiter(chain.from_iterable(m.record.products for m in messages), np.float32, sum(counts))
    return users, products, counts


def score_batch(
    scorer: Scorer,
    model_name: str,
    messages: list[DataMessage],
    policy: AdmissionPolicy,
    pairs: Pairs | None = None,
) -> tuple[ScoredBatch, float]:
    """Results for `messages` scored with one call to `scorer`, and the ms that call took (`pairs`: their
    pairs, if the caller has them already)."""
    users, products, counts = pairs if pairs is not None else pairs_of(messages)
    start_ms = time.time_ns() // 1_000_000
    started = time.perf_counter()
    try:
        probabilities = scorer.score(users, products) if users.size else np.empty(0, np.float32)
        if probabilities.shape != users.shape:
            raise ValueError(f"scorer returned scores of shape {probabilities.shape} for {users.size} pairs")
    except ScorerUnavailable as error:
        reason = f"scoring with model {model_name!r} failed: {error}"
        failed = [unscored(message, reason, model_name, scorer.source) for message in messages]
        return ScoredBatch.of_results(messages, failed), 0.0
    except Exception as error:  # noqa: BLE001 (a model may raise anything; the flow must not die of it)
        if len(messages) > 1:
            return _score_one_by_one(scorer, model_name, messages, policy)
        reason = f"scoring with model {model_name!r} failed: {type(error).__name__}: {error}"
        return ScoredBatch.of_results(
            messages, [unscored(messages[0], reason, model_name, scorer.source)]
        ), 0.0
    batch_ms = (time.perf_counter() - started) * 1000
    metadata = ModelResultMetadata("", model_name, scorer.source, start_ms, int(batch_ms))
    bad = out_of_range(probabilities, policy)
    # Records with a bad pair get an error instead of their scores (pairs are laid out record by record).
    replaced: dict[int, ScoredMessage] = {}
    if bad.any():
        record_of_pair = np.repeat(np.arange(len(messages)), counts)
        for pair in np.flatnonzero(bad).tolist():
            index = int(record_of_pair[pair])
            if index not in replaced:
                first = float(probabilities[pair])
                replaced[index] = _out_of_range(messages[index], first, model_name, scorer, policy)
    return ScoredBatch(messages, counts, probabilities, metadata, replaced, products), batch_ms


def _out_of_range(
    message: DataMessage, first: float, model_name: str, scorer: Scorer, policy: AdmissionPolicy
) -> ScoredMessage:
    reason = (
        f"model {model_name!r} returned a score not finite or outside "
        f"[{policy.output_low:g}, {policy.output_high:g}] ({first!r}); scores withheld"
    )
    return unscored(message, reason, model_name, scorer.source)


def _score_one_by_one(
    scorer: Scorer, model_name: str, messages: list[DataMessage], policy: AdmissionPolicy
) -> tuple[ScoredBatch, float]:
    results: list[ScoredMessage] = []
    total_ms = 0.0
    for message in messages:
        scored, batch_ms = score_batch(scorer, model_name, [message], policy)
        results.extend(scored)
        total_ms += batch_ms
    return ScoredBatch.of_results(messages, results), total_ms
