"""Scoring a micro-batch of data messages with one model call.

All (user, product) pairs of the batch go to the scorer in one call and the probabilities are split back
per record; a batch of more than SERVING_MODEL_MAX_BATCH_PAIRS pairs goes in several calls of whole records,
none larger than the batch every embedded model was tried at before it was accepted (a model whose memory
grows with the batch cannot be handed more than it was seen to take). A record with an id the model cannot
take is kept out of the call and gets an error naming the id, the model and the range it takes: an id below 0
(Keras reads user -1 as the last user), at or past the rows of the model's embedding (`Scorer.input_bounds`),
or at or past 2**24, where float32, which scorers are fed, stops holding every integer (user 2**24 + 1 would
be scored as user 2**24). The check is a few vector comparisons per batch.

If the call still fails (a model whose bounds are unknown, or that fails for another reason), the records
are split in halves and each half is tried again, down to the records that fail alone, which get the error:
k bad records among n cost O(k log n) calls, not one call per record.
A scorer that cannot score at all (ScorerUnavailable: its server is down) fails the whole batch at once,
without splitting. A record with a score that is not finite or lies outside the policy's output range gets
an error instead of its scores: a model that passed its probe can still misbehave on other inputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import accumulate, chain

import numpy as np

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.probe import FLOAT32_EXACT, out_of_range
from flows.core.errors import WrongScoreCount
from flows.core.records import (
    DataMessage,
    ModelResultMetadata,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredBatch,
    ScoredMessage,
)
from flows.core.scorer import InputBounds, Scorer, ScorerUnavailable
from flows.core.text import cut


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
    """Results for `messages` scored with one call to `scorer` (more if records make it fail), and the ms
    the calls took (`pairs`: their pairs, if the caller has them already)."""
    users, products, counts = pairs if pairs is not None else pairs_of(messages)
    start_ms = time.time_ns() // 1_000_000
    errors = refused_records(messages, users, products, counts, scorer.input_bounds, model_name)
    refused = len(errors)
    in_call, kept_index, kept_counts = _kept(errors, counts)
    try:
        kept_scores, failures, batch_ms = _scores_by_halves(
            scorer, model_name, users[in_call], products[in_call], kept_counts, policy.max_batch_pairs
        )
    except ScorerUnavailable as error:
        reason = f"scoring with model {model_name!r} failed: {error}"
        source = scorer.source
        failed = [unscored(m, errors.get(i, reason), model_name, source) for i, m in enumerate(messages)]
        batch = ScoredBatch.of_results(messages, failed)
        batch.model_errors = len(messages) - len(errors)
        return batch, 0.0
    errors |= {kept_index[index]: reason for index, reason in failures.items()}
    probabilities = kept_scores
    if len(kept_index) < len(messages):
        probabilities = np.full(users.size, np.nan, np.float32)  # NaN: no score, where a record was refused
        probabilities[in_call] = kept_scores
    replaced = {i: unscored(messages[i], reason, model_name, scorer.source) for i, reason in errors.items()}
    _withhold_out_of_range(probabilities, counts, messages, model_name, scorer, policy, replaced)
    metadata = ModelResultMetadata("", model_name, scorer.source, start_ms, int(batch_ms))
    batch = ScoredBatch(messages, counts, probabilities, metadata, replaced, products, users)
    batch.model_errors = len(replaced) - refused
    return batch, batch_ms


def _kept(errors: dict[int, str], counts: list[int]) -> tuple[np.ndarray | slice, Sequence[int], list[int]]:
    """The pairs that go to the model, the records they belong to and their counts: all of them but the
    records in `errors` (when there are none, with no work: this runs on every batch)."""
    if not errors:
        return slice(None), range(len(counts)), counts
    kept = np.ones(len(counts), bool)
    kept[list(errors)] = False
    kept_index = np.flatnonzero(kept).tolist()
    return np.repeat(kept, counts), kept_index, [counts[index] for index in kept_index]


def refused_records(
    messages: Sequence[DataMessage],
    users: np.ndarray,
    products: np.ndarray,
    counts: list[int],
    bounds: InputBounds | None,
    model_name: str,
) -> dict[int, str]:
    """Why, by index, each record with an id the model cannot take (see the module docstring) is refused.

    Compared pair by pair on the float32 ids the model would be given: an integer id is 2**24 or more in
    float32 exactly when it is 2**24 or more, so the float32 ids tell which records to refuse.
    """
    user_limit, _ = _limit(bounds.users if bounds else None, "users")
    product_limit, _ = _limit(bounds.products if bounds else None, "products")
    outside = (users < 0) | (users >= user_limit) | (products < 0) | (products >= product_limit)
    if not outside.any():
        return {}
    records = np.unique(np.repeat(np.arange(len(counts)), counts)[outside]).tolist()
    return {index: _refusal(messages[index], model_name, bounds) for index in records}


def _limit(rows: int | None, kind: str) -> tuple[int, str]:
    """The first id of `kind` a model whose embedding has `rows` rows (None: unknown) cannot take, and why."""
    if rows is not None and rows <= FLOAT32_EXACT:
        return rows, f"its {kind} embedding has {rows} rows"
    return FLOAT32_EXACT, "ids reach the model as float32, which holds every integer only below 2**24"


def _refusal(message: DataMessage, model_name: str, bounds: InputBounds | None) -> str:
    """Why `message` is not scored: its first id the model cannot take, and the ids the model takes."""
    record = message.record
    limit, why = _limit(bounds.users if bounds else None, "users")
    if 0 <= record.user < limit:
        limit, why = _limit(bounds.products if bounds else None, "products")
        product = next(product for product in record.products if not 0 <= product < limit)
        what, kind = f"product {product} (user {record.user})", "products"
    else:
        what, kind = f"user {record.user}", "users"
    return f"{what} is outside what model {model_name!r} takes: {kind} 0 to {limit - 1} ({why}); not scored"


def _scores_by_halves(
    scorer: Scorer,
    model_name: str,
    users: np.ndarray,
    products: np.ndarray,
    counts: list[int],
    max_pairs: int,
) -> tuple[np.ndarray, dict[int, str], float]:
    """The scores of the pairs (NaN for the records that fail), why each record that fails alone failed
    (by index), and the ms of all the calls.

    One call, if it succeeds and the batch has at most `max_pairs` pairs (else one call per run of whole
    records up to that many: the size the model was tried at before it was accepted). A call that fails is
    tried again on each half of its records, down to the records that fail alone, so k bad records cost
    about 2k log2(n) calls. ScorerUnavailable is raised: splitting the batch for a server that is down
    would only call it more.
    """
    edges = [0, *accumulate(counts)] if users.size > max_pairs else []  # where each record's pairs start
    scores = np.full(users.size, np.nan, np.float32)
    failures: dict[int, str] = {}
    elapsed = 0.0
    pending = _calls_within(edges, max_pairs) if edges else [(0, len(counts))]
    while pending:
        low, high = pending.pop()
        start, end = (edges[low], edges[high]) if edges else (0, users.size)
        started = time.perf_counter()
        try:
            scores[start:end] = _call(scorer, users[start:end], products[start:end])
        except ScorerUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 (a model may raise anything; the flow must not die of it)
            if high - low == 1:
                failures[low] = f"scoring with model {model_name!r} failed: {type(error).__name__}: {error}"
            else:
                edges = edges or [0, *accumulate(counts)]
                middle = (low + high) // 2
                pending += [(middle, high), (low, middle)]
        finally:
            elapsed += time.perf_counter() - started
    return scores, failures, elapsed * 1000


def _calls_within(edges: list[int], max_pairs: int) -> list[tuple[int, int]]:
    """Runs of whole records (low, high), each of at most `max_pairs` pairs (a record alone may have more:
    the settings keep SERVING_MAX_PRODUCTS within the bound), last run first, as `pending` takes them."""
    runs, low = [], 0
    for high in range(1, len(edges)):
        if edges[high] - edges[low] > max_pairs and high - 1 > low:
            runs.append((low, high - 1))
            low = high - 1
    runs.append((low, len(edges) - 1))
    return runs[::-1]


def _call(scorer: Scorer, users: np.ndarray, products: np.ndarray) -> np.ndarray:
    """The scores of one call: one per pair (no call for no pairs)."""
    if not users.size:
        return np.empty(0, np.float32)
    probabilities = scorer.score(users, products)
    if probabilities.shape != users.shape:
        raise WrongScoreCount(f"scorer returned scores of shape {probabilities.shape} for {users.size} pairs")
    return probabilities


def _withhold_out_of_range(
    probabilities: np.ndarray,
    counts: list[int],
    messages: list[DataMessage],
    model_name: str,
    scorer: Scorer,
    policy: AdmissionPolicy,
    replaced: dict[int, ScoredMessage],
) -> None:
    """Put in `replaced` an error for each record with a score not finite or out of the policy's range
    (pairs are laid out record by record); records already there keep their error."""
    bad = out_of_range(probabilities, policy.output_range)
    if not bad.any():
        return
    record_of_pair = np.repeat(np.arange(len(messages)), counts)
    for pair in np.flatnonzero(bad).tolist():
        index = int(record_of_pair[pair])
        if index not in replaced:
            first = float(probabilities[pair])
            replaced[index] = _out_of_range(messages[index], first, model_name, scorer, policy)


def _out_of_range(
    message: DataMessage, first: float, model_name: str, scorer: Scorer, policy: AdmissionPolicy
) -> ScoredMessage:
    reason = (
        f"model {model_name!r} returned a score not finite or outside "
        f"[{policy.output_low:g}, {policy.output_high:g}] ({first!r}); scores withheld"
    )
    return unscored(message, reason, model_name, scorer.source)
