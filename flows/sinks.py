"""Where results and model events go when Kafka is not configured: the console, and JSON-lines files.

The console shows every model event and a sample of the results (every Nth per worker), one readable
line each, so a person can watch models being swapped and records being scored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.avro import RESULT
from flows.records import ModelEvent, RecommenderResult, ScoredMessage

TOP_PRODUCTS = 3


def describe_result(result: RecommenderResult) -> str:
    """One line: the user, their best products and which model scored them."""
    metadata = result.metadata
    user = f"user {result.input_record.user:>4}"
    if metadata.errors:
        return f"{user}: no scores ({metadata.errors})"
    ranked = sorted(zip(result.model_result.probabilities, result.model_result.products), reverse=True)
    best = ", ".join(f"{product} ({probability:.2f})" for probability, product in ranked[:TOP_PRODUCTS])
    return f"{user}: top of {len(ranked):>2} products {best}  [{metadata.model_name}, batch {metadata.duration} ms]"


class _ConsolePartition(StatelessSinkPartition[ScoredMessage]):
    def __init__(self, every: int, stream: TextIO) -> None:
        self.every = every
        self.stream = stream
        self.seen = 0

    def write_batch(self, items: list[ScoredMessage]) -> None:
        lines = []
        for item in items:
            self.seen += 1
            if self.seen % self.every == 0:
                lines.append(describe_result(item.result))
        if lines:
            print("\n".join(lines), file=self.stream, flush=True)


class ConsoleResultSink(DynamicSink[ScoredMessage]):
    """Prints every `every`-th result per worker (0: none)."""

    def __init__(self, every: int, stream: TextIO = sys.stdout) -> None:
        self.every = every
        self.stream = stream

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[ScoredMessage]:
        return _ConsolePartition(self.every or 1 << 62, self.stream)


class _EventPartition(StatelessSinkPartition[ModelEvent]):
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write_batch(self, items: list[ModelEvent]) -> None:
        for event in items:
            # Per-shard successes repeat the flow-wide "accepted" line once per shard; failures do not.
            if event.shard and event.kind in ("swapped", "restored"):
                continue
            print(f"** {event}", file=self.stream, flush=True)


class ConsoleEventSink(DynamicSink[ModelEvent]):
    """Prints model events: accepted, rejected, re-sent after a restart, and shard failures."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[ModelEvent]:
        return _EventPartition(self.stream)


def _drop_torn_last_line(path: Path) -> None:
    """Cuts a partial last line left by a crash mid-write.

    The line belonged to an epoch that was not snapshotted, so recovery replays its record;
    appending after the fragment would instead leave a line that is not JSON.
    """
    with open(path, "rb+") as file:
        content = file.read()
        if content and not content.endswith(b"\n"):
            file.truncate(content.rfind(b"\n") + 1)


class _JsonLinesPartition(StatelessSinkPartition[ScoredMessage]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _drop_torn_last_line(path)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the partition's life)

    def write_batch(self, items: list[ScoredMessage]) -> None:
        self.file.write("".join(json.dumps(RESULT.to_avro(item.result)) + "\n" for item in items))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonLinesResultSink(DynamicSink[ScoredMessage]):
    """Appends results, in the RecommenderResult Avro schema's JSON shape, to DIR/results-W.jsonl."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[ScoredMessage]:
        return _JsonLinesPartition(self.directory / f"results-{worker_index}.jsonl")
