"""The console: every model event, every explanation and a sample of the results (every Nth per worker), one
readable line each, so a person can watch models being swapped and records being scored and explained.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.core.challenger import merge_reports
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.explanations import Explanation, ExplanationMessage
from flows.core.records import RecommenderResult, ScoredMessage

TOP_PRODUCTS = 3


def describe_result(result: RecommenderResult) -> str:
    """One line: the user, their best products, which model scored them, and the outlier score of a record
    the model's detector flags (1 or more)."""
    metadata = result.metadata
    user = f"user {result.input_record.user:>4}"
    if metadata.errors:
        return f"{user}: no scores ({metadata.errors})"
    ranked = sorted(zip(result.model_result.probabilities, result.model_result.products), reverse=True)
    best = ", ".join(f"{product} ({probability:.2f})" for probability, product in ranked[:TOP_PRODUCTS])
    outlier = metadata.outlier_score
    flagged = f", outlier {outlier:.1f}" if outlier is not None and outlier >= 1 else ""
    return (
        f"{user}: top of {len(ranked):>2} products {best}  "
        f"[{metadata.model_name}, batch {metadata.duration} ms{flagged}]"
    )


def describe_explanation(explanation: Explanation) -> str:
    """One line per explained product: 'user 412, product 163: 0.75 = 0.31 baseline +0.29 user +0.15
    product; like 170, 158 [model]', or why the record has no split."""
    head = f"explained user {explanation.user}"
    tag = f"[{explanation.model_name}{', asked' if explanation.requested else ''}]"
    if explanation.errors:
        return f"{head}: {explanation.errors} {tag}"
    if not explanation.products:
        return f"{head}: no products to split {tag}"
    lines = []
    for part in explanation.products:
        like = f"; like {', '.join(map(str, part.similar_products))}" if part.similar_products else ""
        lines.append(
            f"{head}, product {part.product}: {part.score:.2f} = {explanation.baseline:.2f} baseline "
            f"{part.user_part:+.2f} user {part.product_part:+.2f} product{like} {tag}"
        )
    return "\n".join(lines)


class _ConsolePartition(StatelessSinkPartition[Sequence[ScoredMessage]]):
    def __init__(self, every: int, stream: TextIO) -> None:
        self.every = every
        self.stream = stream
        self.seen = 0

    def write_batch(self, batches: list[Sequence[ScoredMessage]]) -> None:
        lines: list[str] = []
        for batch in batches:
            first = self.every - self.seen % self.every - 1  # the batch's first result due for the console
            lines.extend(describe_result(item.result) for item in batch[first :: self.every])
            self.seen += len(batch)
        if lines:
            print("\n".join(lines), file=self.stream, flush=True)


class ConsoleResultSink(DynamicSink[Sequence[ScoredMessage]]):
    """Prints every `every`-th result per worker (0: none), from batches of results."""

    def __init__(self, every: int, stream: TextIO = sys.stdout) -> None:
        self.every = every
        self.stream = stream

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Sequence[ScoredMessage]]:
        return _ConsolePartition(self.every or 1 << 62, self.stream)


class _ExplanationPartition(StatelessSinkPartition[list[ExplanationMessage]]):
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write_batch(self, batches: list[list[ExplanationMessage]]) -> None:
        lines = [describe_explanation(item.explanation) for batch in batches for item in batch]
        if lines:
            print("\n".join(lines), file=self.stream, flush=True)


class ConsoleExplanationSink(DynamicSink[list[ExplanationMessage]]):
    """Prints every explanation (they are a sample, or asked for), one line per explained product."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[list[ExplanationMessage]]:
        return _ExplanationPartition(self.stream)


class _EventPartition(StatelessSinkPartition[ModelEvent | ChallengerReport]):
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write_batch(self, items: list[ModelEvent | ChallengerReport]) -> None:
        # The shards' reports of one window, which a promote or retire closes together, make one line.
        windows: dict[tuple[str, int, str], list[ChallengerReport]] = {}
        for item in items:
            if isinstance(item, ChallengerReport):
                windows.setdefault((item.challenger, item.window, item.closed_by), []).append(item)
        for item in items:
            # Per-shard successes repeat the flow-wide "accepted" line once per shard; failures do not.
            if isinstance(item, ModelEvent) and item.shard and item.kind in PER_SHARD_SUCCESSES:
                continue
            if isinstance(item, ChallengerReport):
                reports = windows.pop((item.challenger, item.window, item.closed_by), None)
                if reports is None:
                    continue  # printed with the first of its window
                item = merge_reports(reports)
            print(f"** {item}", file=self.stream, flush=True)


PER_SHARD_SUCCESSES = ("swapped", "restored", "challenging")


class ConsoleEventSink(DynamicSink[ModelEvent | ChallengerReport]):
    """Prints model events (accepted, rejected, re-sent after a restart, shard failures, drift) and
    challenger reports."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[ModelEvent | ChallengerReport]:
        return _EventPartition(self.stream)
