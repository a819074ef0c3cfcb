"""Back-pressure at start-up: a process reads no data until one of its shards serves a champion.

A deploy or a restart with records waiting on the data topic is the most common event in production. The
data side can read a backlog far faster than a model loads (about a second for the shipped SavedModel, up
to the load deadline for a large one): read at full speed, 24,000 records reached one shard before its
first model was ready, and everything past the hold limit became a "no model yet" error result. Holding
them all instead would cost memory in proportion to the backlog.

So the records stay where they are until a model can score them: each data partition of a process returns
nothing from its polls until a shard of that process has swapped in a champion (`ChampionGate.open`, called
by `flows.core.shard`), and its consumer does not fetch meanwhile (`hold_fetching`), which leaves the cores
to the model's load. Records already on their way to a shard whose champion is loading are held there (see
`ShardLogic._hold`). A process waits at most `wait_s` (SERVING_DATA_WAIT_FOR_MODEL): with no model on the
models topic at all, or in a process that owns no shard, it then reads, and the shards' hold limit applies
as before. The recovery state is the inner source's, untouched. The Kafka data source measures the lag of
a waiting partition as of any other (`flows.adapters.kafka.lag_probe`), so a backlog shows on /state and
the lag gauge before the first model is ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows.adapters.sources.wrapping import PartitionWrapper, SourceWrapper
from flows.core.champion_gate import ChampionGate

LOG = logging.getLogger(__name__)
CHECK_EVERY = timedelta(milliseconds=20)


class _GatedPartition(PartitionWrapper):
    def __init__(self, inner: StatefulSourcePartition, gate: ChampionGate, wait_s: float, name: str) -> None:
        super().__init__(inner)
        self.gate = gate
        self.name = name
        self.wait_s = wait_s
        self.deadline = time.monotonic() + wait_s
        self.waiting = True
        self.hold_fetching(True)

    def next_batch(self) -> Iterable[Any]:
        if self.waiting:
            if not self._done_waiting():
                return []
            self.hold_fetching(False)
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        if self.waiting:
            return datetime.now(timezone.utc) + CHECK_EVERY
        return self.inner.next_awake()

    def _done_waiting(self) -> bool:
        if self.gate.is_open():
            self.waiting = False
        elif time.monotonic() >= self.deadline:
            self.waiting = False
            LOG.warning(
                "data partition %s: no champion ready in this process after %g s "
                "(SERVING_DATA_WAIT_FOR_MODEL); reading anyway, shards hold records up to SERVING_HOLD_LIMIT",
                self.name,
                self.wait_s,
            )
        return not self.waiting


class WaitForChampion(SourceWrapper):
    """`inner`, whose partitions read nothing until `gate` opens or `wait_s` seconds have passed."""

    def __init__(self, inner: FixedPartitionedSource, gate: ChampionGate, wait_s: float) -> None:
        super().__init__(inner)
        self.gate = gate
        self.wait_s = wait_s

    def build_part(self, step_id: str, for_part: str, resume_state: object) -> PartitionWrapper:
        inner = self.inner.build_part(step_id, for_part, resume_state)
        return _GatedPartition(inner, self.gate, self.wait_s, f"{step_id}/{for_part}")
