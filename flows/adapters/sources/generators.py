"""The embedded default's inputs: a data-load generator and a model-update generator.

Like the original's: each record is a user (random 0-999) and 1-30 products (random 0-299); models
alternate between the shipped versions at a fixed interval. Both are resumable Bytewax sources, so a
flow running with recovery picks up where its last snapshot left off.

Records are generated in fixed blocks from a seed, so the n-th record of a partition is the same
whatever the timing, the number of workers or a restart in between.

With `shift_after`, the data drifts for a while, to show drift monitoring (`flows.core.drift`): from record
`shift_after` of each partition to record `2 * shift_after`, most products come from a newly popular
range (the last sixth of the catalogue), then the data is as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows.adapters.scorers.archive import pack_directory
from flows.adapters.sources.pacing import Pace
from flows.core.descriptors import CANARY, CHALLENGER, PROMOTE, RETIRE, SHADOW, ModelDescriptor, ModelType
from flows.core.errors import ConfigurationError
from flows.core.model_formats import ONNX_MODEL_FILE, PMML_MODEL_FILE, SAVED_MODEL_FILE
from flows.core.model_holder import CaughtUp
from flows.core.records import DataMessage, RecommenderRecord

USERS = 1000
PRODUCTS = 300
MAX_PRODUCTS_PER_RECORD = 30
BLOCK = 256
POPULAR_PRODUCTS = range(PRODUCTS - PRODUCTS // 6, PRODUCTS)  # the shifted data's favourites
POPULAR_SHARE = 0.8


def generate_block(seed: int, partition: int, block: int, shifted: bool = False) -> list[RecommenderRecord]:
    """Records [block * BLOCK, (block + 1) * BLOCK) of one partition (as they are while `shifted`)."""
    rng = np.random.default_rng([seed, partition, block, 1] if shifted else [seed, partition, block])
    users = rng.integers(0, USERS, BLOCK).tolist()
    counts = rng.integers(1, MAX_PRODUCTS_PER_RECORD + 1, BLOCK)
    pairs = int(counts.sum())
    products_array = rng.integers(0, PRODUCTS, pairs)
    if shifted:
        popular = rng.random(pairs) < POPULAR_SHARE
        products_array[popular] = rng.integers(
            POPULAR_PRODUCTS.start, POPULAR_PRODUCTS.stop, int(popular.sum())
        )
    products = products_array.tolist()
    records = []
    offset = 0
    for user, count in zip(users, counts.tolist()):
        records.append(RecommenderRecord(user, products[offset : offset + count]))
        offset += count
    return records


class _Blocks:
    """The records of one generator partition by position, a block generated at a time."""

    def __init__(self, seed: int, partition: int, shift_after: int = 0) -> None:
        self.seed = seed
        self.partition = partition
        self.shift_after = shift_after
        self.key: tuple[int, bool] | None = None
        self.block: list[RecommenderRecord] = []

    def records(self, start: int, end: int) -> list[RecommenderRecord]:
        """Records [start, end), a slice of a block at a time."""
        records: list[RecommenderRecord] = []
        position = start
        while position < end:
            block_number, offset = divmod(position, BLOCK)
            shifted = self.shift_after > 0 and self.shift_after <= position < 2 * self.shift_after
            stop = min(end, (block_number + 1) * BLOCK, self._next_change(position, end))
            if (block_number, shifted) != self.key:
                self.block = generate_block(self.seed, self.partition, block_number, shifted)
                self.key = (block_number, shifted)
            records += self.block[offset : offset + stop - position]
            position = stop
        return records

    def _next_change(self, position: int, end: int) -> int:
        """Where the data next starts or stops drifting after `position`; `end` if it never does."""
        changes = (self.shift_after, 2 * self.shift_after) if self.shift_after > 0 else ()
        return min((change for change in changes if change > position), default=end)


def generated_records(
    seed: int, count: int, partition: int = 0, shift_after: int = 0
) -> Iterator[RecommenderRecord]:
    """The first `count` records of one generator partition (drifting from `shift_after`: see above)."""
    blocks = _Blocks(seed, partition, shift_after)
    for start in range(0, count, BLOCK):
        yield from blocks.records(start, min(count, start + BLOCK))


def partition_share(total: int, partitions: int, index: int) -> int:
    """How many of `total` records partition `index` of `partitions` produces."""
    return total // partitions + (1 if index < total % partitions else 0)


class AskingForExplanation:
    """The origin of a generated record that asks for an explanation, as a Kafka message with the
    `serving-explain` header does (`flows.core.explanations`)."""

    explanation_requested = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AskingForExplanation)

    def __hash__(self) -> int:
        return hash(AskingForExplanation)


ASKING = AskingForExplanation()


class _DataPartition(StatefulSourcePartition[DataMessage, int]):
    def __init__(
        self,
        seed: int,
        index: int,
        limit: int | None,
        rate: float,
        batch: int,
        resume: int | None,
        shift_after: int = 0,
        explain_every: int = 0,
    ):
        self.blocks = _Blocks(seed, index, shift_after)
        self.explain_every = explain_every
        self.limit = limit
        self.rate = rate
        self.batch = batch
        self.emitted = resume or 0
        self.pace = Pace(rate, first=self.emitted)
        self.wake: datetime | None = None

    def _due(self) -> int:
        due = self.pace.due()
        return self.batch if due is None else max(due - self.emitted, 0)

    def next_batch(self) -> list[DataMessage]:
        count = min(self._due(), self.batch)
        if self.limit is not None:
            if self.emitted >= self.limit:
                raise StopIteration()
            count = min(count, self.limit - self.emitted)
        if count == 0:
            self.wake = datetime.now(timezone.utc) + timedelta(seconds=1 / self.rate)
            return []
        self.wake = None
        now = time.time_ns()
        end = self.emitted + count
        messages = [DataMessage(record, now) for record in self.blocks.records(self.emitted, end)]
        if self.explain_every:
            for position in range(-(self.emitted + 1) % self.explain_every, count, self.explain_every):
                messages[position].origin = ASKING
        self.emitted = end
        return messages

    def next_awake(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> int:
        return self.emitted


class DataGenerator(FixedPartitionedSource[DataMessage, int]):
    """RecommenderRecords at `rate` records/s in total (0: unthrottled), `records` in all (0: unbounded);
    with `shift_after`, drifting for a while (see the module docstring); with `explain_every`, every that
    many-th record of a partition asks for an explanation."""

    def __init__(
        self,
        records: int,
        rate: float,
        partitions: int = 1,
        batch: int = 500,
        seed: int = 42,
        shift_after: int = 0,
        explain_every: int = 0,
    ) -> None:
        self.records = records
        self.explain_every = explain_every
        self.shift_after = shift_after
        self.rate = rate
        self.partitions = partitions
        self.batch = batch
        self.seed = seed

    def list_parts(self) -> list[str]:
        return [f"data-{index}" for index in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DataPartition:
        index = int(for_part.rsplit("-", 1)[1])
        limit = partition_share(self.records, self.partitions, index) if self.records else None
        rate = self.rate / self.partitions
        return _DataPartition(
            self.seed, index, limit, rate, self.batch, resume_state, self.shift_after, self.explain_every
        )


# The file that marks a model directory as each embedded format.
MODEL_FILES = {
    SAVED_MODEL_FILE: ModelType.TENSORFLOWSAVED,
    ONNX_MODEL_FILE: ModelType.ONNX,
    PMML_MODEL_FILE: ModelType.PMML,
}


def model_types_in(directory: Path) -> list[ModelType]:
    """The formats whose file `directory` holds, in the order of MODEL_FILES."""
    return [model_type for mark, model_type in MODEL_FILES.items() if (directory / mark).is_file()]


@lru_cache(maxsize=8)
def shipped_model(models_dir: Path, version: str) -> ModelDescriptor:
    """The shipped model `version` as a descriptor carrying it inline: a SavedModel, an ONNX model when its
    directory holds `model.onnx` (the shipped `1-onnx` and `2-onnx` are the ONNX twins of 1 and 2), a PMML
    model when it holds `model.pmml` (the shipped `1-pmml`)."""
    directory = models_dir / version
    found = model_types_in(directory)
    if not found:
        raise ConfigurationError(
            f"no shipped model version {version!r}: {directory} holds none of {', '.join(MODEL_FILES)}"
        )
    model_type = found[0]
    return ModelDescriptor(
        f"recommender-v{version}",
        f"recommender version {version} ({directory})",
        model_type,
        model_bytes=pack_directory(directory),
    )


def scheduled_model(models_dir: Path, entry: str) -> ModelDescriptor:
    """One entry of the model generator's schedule (`SERVING_MODEL_VERSIONS`), or ValueError saying why not.

    `2` is shipped version 2 as champion; `2:shadow` or `2:canary:0.25` is it as a challenger, on that
    fraction (default 1) of records or users; `promote:2` and `retire:2` act on the challenger
    `recommender-v2`.
    """
    parts = [part.strip() for part in entry.split(":")]
    if parts[0] in (PROMOTE, RETIRE) and len(parts) == 2:
        return ModelDescriptor(f"recommender-v{parts[1]}", "", ModelType.UNKNOWN, command=parts[0])
    model = shipped_model(models_dir, parts[0])
    if len(parts) == 1:
        return model
    if parts[1] not in (SHADOW, CANARY) or len(parts) > 3:
        raise ConfigurationError(
            f"model schedule entry {entry!r}: expected VERSION, VERSION:shadow|canary[:FRACTION], "
            "promote:VERSION or retire:VERSION"
        )
    fraction = float(parts[2]) if len(parts) == 3 else 1.0
    return replace(model, role=CHALLENGER, mode=parts[1], fraction=fraction)


POLL_AT_MOST = timedelta(milliseconds=10)


class _ModelPartition(StatefulSourcePartition[ModelDescriptor | CaughtUp, int]):
    def __init__(
        self,
        models: list[ModelDescriptor],
        interval: float,
        count: int | None,
        open_for: float,
        resume: int | None,
    ):
        self.models = models
        self.interval = interval
        self.count = count
        self.open_until = time.monotonic() + open_for
        self.sent = resume or 0
        # The first model goes out at once; after a restart the next one waits a full interval.
        self.next_at = datetime.now(timezone.utc) + (timedelta(seconds=interval) if resume else timedelta(0))
        # Like the Kafka models source, say once per start that what "was there" has been sent: the model
        # holder then starts (or, after a restart, re-sends its model) on an input, not on a timer.
        self.marker: CaughtUp | None = CaughtUp("models", 1)

    def _done(self) -> bool:
        return self.count is not None and self.sent >= self.count

    def next_batch(self) -> list[ModelDescriptor | CaughtUp]:
        batch = self._models_due()
        if self.marker is not None:
            batch, self.marker = [*batch, self.marker], None
        return batch

    def _models_due(self) -> list[ModelDescriptor | CaughtUp]:  # the batch, which may take a marker
        if self._done():
            if time.monotonic() < self.open_until or self.marker is not None:
                return []
            raise StopIteration()
        if datetime.now(timezone.utc) < self.next_at:
            return []
        model = self.models[self.sent % len(self.models)]
        self.sent += 1
        self.next_at = datetime.now(timezone.utc) + timedelta(seconds=self.interval)
        return [model]

    def next_awake(self) -> datetime | None:
        # Short naps only. A stateful step takes a later epoch's records only once every input has moved
        # past the epoch, and a sleeping input moves on only when polled: waking at the next model's time
        # held the records of each new epoch back for up to that long (a second at a time, measured).
        if self._done() and time.monotonic() >= self.open_until:
            return None  # Poll now: the next call ends the input.
        return min(self.next_at, datetime.now(timezone.utc) + POLL_AT_MOST)

    def snapshot(self) -> int:
        return self.sent


class ModelGenerator(FixedPartitionedSource[ModelDescriptor | CaughtUp, int]):
    """Model updates every `interval` seconds, round-robin over `models`.

    With `count`, it stops after that many updates (a bounded run); without, it runs forever. With
    `open_for`, a bounded run's input stays open that many seconds after the start: the model holder
    waits for loads in progress when its input ends, so the model input should end with the data's.
    """

    def __init__(
        self, models: list[ModelDescriptor], interval: float, count: int | None = None, open_for: float = 0.0
    ) -> None:
        if not models:
            raise ConfigurationError("the model generator needs at least one model")
        self.models = models
        self.interval = interval
        self.count = count
        self.open_for = open_for

    def list_parts(self) -> list[str]:
        return ["models"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ModelPartition:
        return _ModelPartition(self.models, self.interval, self.count, self.open_for, resume_state)


def models_in_bounded_run(records: int, rate: float, interval: float) -> int | None:
    """Model updates a run of `records` at `rate` sees: one at start, then one per interval it lasts."""
    if not records:
        return None
    if rate <= 0:
        return 1
    return 1 + math.floor(records / rate / interval)
