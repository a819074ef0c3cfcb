"""Explanations: why a model gave a record its scores.

For a sampled fraction of records (`SERVING_EXPLAIN_FRACTION`, 1 in 10,000) and for every record whose data
message asks (the `serving-explain` header, any value; the embedded default's generator asks for one record in
1,000), the shard that scored the record splits the score of each of its top products into three parts that
add up to it:

    score = baseline + user part + product part

These are the exact Shapley values of a game of two players, the user and the product, measured against a
background of (user, product) pairs the model answered before (interventional, as SHAP's KernelExplainer
with a background set; exact, since two players have only four coalitions):

    v(none) = mean f(u', p')    v(user) = mean f(u, p')    v(product) = mean f(u', p)    v(both) = f(u, p)
    user part = ((f(u, p) - v(product)) + (v(user) - v(none))) / 2, and the product part likewise

over the background pairs (u', p'). The baseline is v(none), the model's mean score over its background. The
split needs the model only as a function of its two ids, so every scorer gets it, embedded, PMML, an ensemble
or a model server: one extra call per micro-batch that has something to explain, after the batch's own call
(the records' results are emitted in the same micro-batch, before their explanations). It costs 2B pairs per
explained product plus B per batch (B: `SERVING_EXPLAIN_BACKGROUND`), bounded per micro-batch by
`SERVING_EXPLAIN_PER_BATCH` records of `SERVING_EXPLAIN_PRODUCTS` products.

A model whose ids index embedding tables (`flows.core.embeddings`) also names, per explanation, the users
most like the record's user and the products most like each explained product, by cosine over the tables.

The background of a model that tells which ids it takes (`Scorer.input_bounds`: the embedded TensorFlow
and ONNX models) is spread evenly over those ids, so the baseline is the model's mean score over its whole
catalogue of users and products: the same in every shard, process and restart, and no record can move it.
A model that does not tell (behind a server, PMML, an ensemble) gets, per shard, the records of the first
micro-batch it explains there (one pair from each, a random product; more from the next ones until there are
`SERVING_EXPLAIN_BACKGROUND`), kept in the shard's recovery state and never changed once complete, so a record
explained after a restart is measured against the same baseline. Whoever writes the records around a new
model's first explanation then chooses its background, as for the outlier reference; the split still adds
up exactly, against that baseline, and the baseline is in every explanation.

A requested explanation is never dropped silently: a record the model refused gets an explanation that
carries the record's error, and one past the per-batch bound says so. Sampled ones past the bound are
skipped (they were a sample).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.probe import out_of_range
from flows.core.embeddings import EmbeddingTables
from flows.core.errors import ScoresOutOfRange, WrongScoreCount
from flows.core.records import DataMessage, ScoredBatch
from flows.core.scorer import InputBounds, Scorer
from flows.core.sections import Section
from flows.core.text import cut

EXPLAIN_HEADER = "serving-explain"  # a data message with this header (any value) asks for an explanation
METHOD = "shapley-two-player"


class ExplainSettings(Section):
    """Which records get an explanation and what each costs (`SERVING_EXPLAIN_*`)."""

    fraction: float = Field(
        0.0001,
        ge=0,
        le=1,
        description=(
            "share of records explained without being asked (`0`: only those whose message has the "
            f"`{EXPLAIN_HEADER}` header); see [Observability](observability.md#explanations)"
        ),
    )
    requests: bool = Field(
        True,
        description=f"`false` ignores the `{EXPLAIN_HEADER}` header (with `fraction` 0: no explanations)",
    )
    products: int = Field(3, ge=1, le=100, description="a record's top products explained, by score")
    per_batch: int = Field(
        16,
        ge=1,
        le=1_000,
        description="most records explained per micro-batch; a request past it is answered with why",
    )
    background: int = Field(
        32,
        ge=1,
        le=1_024,
        description="(user, product) pairs a model's baseline is measured on: the first it answers, by shard",
    )
    neighbours: int = Field(
        3, ge=0, le=50, description="most alike users and products named, for a model with embedding tables"
    )

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 or self.requests


@dataclass(slots=True)
class ProductExplanation:
    """One product's score, split: `score` = baseline + `user_part` + `product_part`."""

    product: int
    score: float
    user_part: float
    product_part: float
    similar_products: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Explanation:
    """Why `model_name` scored a record of `user` as it did (see the module docstring); `errors` says why
    there is no split (the record's own error, or a bound)."""

    user: int
    model_name: str
    source: str = ""
    requested: bool = False
    method: str = METHOD
    baseline: float = 0.0
    background: int = 0
    products: list[ProductExplanation] = field(default_factory=list)
    similar_users: list[int] = field(default_factory=list)
    start_time: int = 0
    duration: float = 0.0
    errors: str = ""


@dataclass(slots=True)
class ExplanationMessage:
    """An explanation on its way out, with the data message's origin (a sink writes its coordinates beside
    the explanation, as beside the result) and the batch's trace context."""

    explanation: Explanation
    entered_ns: int
    origin: Any = None
    trace_context: str = ""


@dataclass
class Background:
    """A model's background pairs on one shard (see the module docstring), as the model is given them."""

    users: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    products: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))

    def __len__(self) -> int:
        return int(self.users.size)

    @classmethod
    def spread_over(cls, bounds: InputBounds, size: int) -> Background:
        """`size` pairs of ids spread evenly over the ids the model takes, users and products paired in
        a fixed shuffle: the same in every shard and process, and no record can choose it."""
        users = np.floor(np.linspace(0, bounds.users, size, endpoint=False)).astype(np.float32)
        products = np.floor(np.linspace(0, bounds.products, size, endpoint=False)).astype(np.float32)
        return cls(users, np.random.default_rng(0).permutation(products))

    def take(self, batch: ScoredBatch, answered: np.ndarray, size: int, rng: np.random.Generator) -> None:
        """Add one pair of each answered record of `batch` with products, until `size` pairs."""
        wanted = size - len(self)
        if wanted <= 0 or batch.users is None or batch.products is None:
            return
        counts = np.asarray(batch.counts, np.int64)
        records = np.flatnonzero(answered & (counts > 0))[:wanted]
        if not records.size:
            return
        starts = np.asarray(batch.starts, np.int64)[records]
        picked = starts + rng.integers(0, counts[records])
        self.users = np.concatenate([self.users, batch.users[picked].astype(np.float32)])
        self.products = np.concatenate([self.products, batch.products[picked].astype(np.float32)])


def requested(message: DataMessage) -> bool:
    """Whether the data message asks for an explanation: its source says so (a Kafka origin does for a
    message with the `serving-explain` header)."""
    return getattr(message.origin, "explanation_requested", False) is True


class Explainer:
    """Chooses a shard's records to explain and explains them (see the module docstring)."""

    def __init__(self, settings: ExplainSettings, policy: AdmissionPolicy, seed: int | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.rng = np.random.default_rng(seed)

    def explain(self, batch: ScoredBatch, scorer: Scorer, background: Background) -> list[ExplanationMessage]:
        """The explanations of `batch`'s chosen records, scored by `scorer` (the model that answered it)."""
        asked, sampled = self._chosen(batch.messages)
        if not asked and not sampled:
            return []
        answered = batch.answered()
        background.take(batch, answered, self.settings.background, self.rng)
        out: list[ExplanationMessage] = []
        chosen: list[tuple[int, bool]] = []
        for index in asked:
            if not answered[index]:
                out.append(self._refused(batch, index))
            elif len(chosen) < self.settings.per_batch:
                chosen.append((index, True))
            else:
                reason = (
                    f"not explained: more than {self.settings.per_batch} records of one micro-batch asked "
                    "(SERVING_EXPLAIN_PER_BATCH)"
                )
                out.append(self._without_split(batch, index, True, reason))
        room = self.settings.per_batch - len(chosen)
        chosen += [(index, False) for index in sampled if answered[index]][: max(room, 0)]
        if chosen:
            out += self._split(batch, chosen, scorer, background)
        return out

    def _chosen(self, messages: Sequence[DataMessage]) -> tuple[list[int], list[int]]:
        """The records that asked, and a sample of the others (each with probability `fraction`)."""
        asked = (
            [i for i, message in enumerate(messages) if requested(message)] if self.settings.requests else []
        )
        count = self.rng.binomial(len(messages), self.settings.fraction) if self.settings.fraction else 0
        if not count:
            return asked, []
        taken = set(asked)
        sampled = self.rng.choice(len(messages), size=count, replace=False).tolist()
        return asked, sorted(index for index in sampled if index not in taken)

    def _split(
        self, batch: ScoredBatch, chosen: list[tuple[int, bool]], scorer: Scorer, background: Background
    ) -> list[ExplanationMessage]:
        """The split of each chosen record's top products, from one batched call (more past the bound)."""
        top = [self._top_products(batch, index) for index, _ in chosen]
        users = np.asarray([batch.messages[index].record.user for index, _ in chosen], np.float32)
        products = np.concatenate([p for p, _ in top]) if top else np.empty(0, np.float32)
        b = len(background)
        if not b:  # no answered record with products yet, so none chosen has any: nothing to split
            return [self._unsplit(batch, index, asked, scorer) for index, asked in chosen]
        pair_users = np.concatenate(
            [background.users, np.repeat(users, b), np.tile(background.users, products.size)]
        )
        pair_products = np.concatenate(
            [background.products, np.tile(background.products, users.size), np.repeat(products, b)]
        )
        start_ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        try:
            values = self._call(scorer, pair_users, pair_products)
        except Exception as error:  # noqa: BLE001 (a model may raise anything; the flow must not die of it)
            model = batch.metadata.model_name
            reason = f"explanation call to model {model!r} failed: {type(error).__name__}: {error}"
            return [self._without_split(batch, index, asked, reason) for index, asked in chosen]
        duration = (time.perf_counter() - started) * 1000
        means = values.astype(np.float64).reshape(-1, b).mean(axis=1)
        v_none, v_user, v_product = means[0], means[1 : 1 + users.size], means[1 + users.size :]
        tables = getattr(scorer, "embeddings", None)
        tables = tables if isinstance(tables, EmbeddingTables) else None
        out, at = [], 0
        for (index, asked), v_u, (ids, scores) in zip(chosen, v_user, top):
            parts = []
            for product, score in zip(ids.tolist(), scores.tolist()):
                v_p = v_product[at]
                at += 1
                user_part = float(((score - v_p) + (v_u - v_none)) / 2)
                parts.append(
                    ProductExplanation(
                        int(product),
                        score,
                        user_part,
                        float(score - v_none - user_part),
                        tables.similar_products(int(product), self.settings.neighbours) if tables else [],
                    )
                )
            message = batch.messages[index]
            explanation = self._explanation(batch, index, asked)
            explanation.baseline = float(v_none)
            explanation.background = b
            explanation.products = parts
            explanation.similar_users = (
                tables.similar_users(message.record.user, self.settings.neighbours) if tables else []
            )
            explanation.start_time, explanation.duration = start_ms, duration
            out.append(
                ExplanationMessage(explanation, message.entered_ns, message.origin, batch.trace_context)
            )
        return out

    def _unsplit(self, batch: ScoredBatch, index: int, asked: bool, scorer: Scorer) -> ExplanationMessage:
        """A record without products: nothing to split, its user's neighbours still named."""
        message = batch.messages[index]
        explanation = self._explanation(batch, index, asked)
        tables = getattr(scorer, "embeddings", None)
        if isinstance(tables, EmbeddingTables):
            explanation.similar_users = tables.similar_users(message.record.user, self.settings.neighbours)
        return ExplanationMessage(explanation, message.entered_ns, message.origin, batch.trace_context)

    def _call(self, scorer: Scorer, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """The model's scores of the pairs, in calls of at most the policy's batch bound; WrongScoreCount or
        ScoresOutOfRange for scores it cannot use (a model that passed its probe can still misbehave)."""
        step = self.policy.max_batch_pairs
        parts = [
            scorer.score(users[at : at + step], products[at : at + step]) for at in range(0, users.size, step)
        ]
        values = np.concatenate(parts) if parts else np.empty(0, np.float32)
        if values.shape != users.shape:
            raise WrongScoreCount(f"the model returned {values.size} scores for {users.size} pairs")
        if out_of_range(values, self.policy.output_range).any():
            raise ScoresOutOfRange("the model returned a score not finite or out of range")
        return values

    def _top_products(self, batch: ScoredBatch, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The record's `products` best products (float32 ids, as the model takes them) and their scores."""
        start, count = batch.starts[index], batch.counts[index]
        scores = batch.scores[start : start + count].astype(np.float64)
        best = np.argsort(-scores, kind="stable")[: self.settings.products]
        ids = np.asarray(batch.messages[index].record.products, np.float32)[best]
        return ids, scores[best]

    def _explanation(self, batch: ScoredBatch, index: int, asked: bool) -> Explanation:
        metadata = batch.metadata
        user = batch.messages[index].record.user
        return Explanation(user, metadata.model_name, metadata.source, asked)

    def _without_split(self, batch: ScoredBatch, index: int, asked: bool, reason: str) -> ExplanationMessage:
        explanation = self._explanation(batch, index, asked)
        explanation.errors = cut(reason)
        message = batch.messages[index]
        return ExplanationMessage(explanation, message.entered_ns, message.origin, batch.trace_context)

    def _refused(self, batch: ScoredBatch, index: int) -> ExplanationMessage:
        """A requested record the model did not answer with scores: its explanation carries the error."""
        result = batch.replaced[index].result
        error = result.metadata.errors or "its result was not made by the model's batch call"
        explained = self._without_split(batch, index, True, f"not explained: {error}")
        explained.explanation.model_name = result.metadata.model_name or batch.metadata.model_name
        return explained
