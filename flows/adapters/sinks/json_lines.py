"""Results as JSON lines, one file per worker (SERVING_OUTPUT_DIR): the record of a run a person or a test
can read back, in the RecommenderResult Avro schema's JSON shape. It survives a crash without a torn line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.core.records import ScoredMessage
from flows.wire.avro import RESULT


def _drop_torn_last_line(path: Path) -> None:
    """Cuts a partial last line left by a crash mid-write.

    The line belonged to an epoch that was not snapshotted, so recovery replays its record;
    appending after the fragment would instead leave a line that is not JSON.
    """
    with open(path, "rb+") as file:
        content = file.read()
        if content and not content.endswith(b"\n"):
            file.truncate(content.rfind(b"\n") + 1)


class _JsonLinesPartition(StatelessSinkPartition[Sequence[ScoredMessage]]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _drop_torn_last_line(path)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the partition's life)

    def write_batch(self, batches: list[Sequence[ScoredMessage]]) -> None:
        lines = (json.dumps(RESULT.to_avro(item.result)) + "\n" for batch in batches for item in batch)
        self.file.write("".join(lines))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonLinesResultSink(DynamicSink[Sequence[ScoredMessage]]):
    """Appends batches of results, in the RecommenderResult Avro schema's JSON shape, to
    DIR/results-W.jsonl."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Sequence[ScoredMessage]]:
        return _JsonLinesPartition(self.directory / f"results-{worker_index}.jsonl")
