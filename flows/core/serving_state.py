"""What the shards of this process serve, and how it went: the statistics behind /state and the gauges.
It also keeps how far behind the data topic the partitions this process reads are (their lag), because
the flow keeps its offsets in its recovery store, where Kafka's own tools cannot see them.

Each shard registers its `ModelToServeStats` when it swaps a model in (or is restored with one); the
registry keeps a reference, so counts made while scoring are visible without further calls. Readers
get copies, merged per model across shards.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from flows.core.challenger import merge_reports
from flows.core.events import ChallengerReport, ModelEvent, ModelToServeStats
from flows.core.explanations import ExplanationMessage
from flows.core.history import History

MAX_CHALLENGERS_SHOWN = 8
EXPLANATIONS_SHOWN = 10  # the latest explanations kept per model, for /state and the live page
MODELS_EXPLAINED_SHOWN = 8  # models whose explanations are kept, the most recently explained


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far behind one data partition this process is: `end_offset` (the topic's newest offset + 1, as
    the broker answered at `measured_ms`, Unix milliseconds) minus `next_offset` (the next offset the flow
    will read). `unread`: a partition added to the topic after the flow started, which it reads only after
    a restart; `next_offset` is then its first offset, and every process reports it."""

    topic: str
    partition: int
    next_offset: int
    end_offset: int
    measured_ms: int
    unread: bool = False

    @property
    def lag(self) -> int:
        return max(0, self.end_offset - self.next_offset)


class ServingState:
    """The statistics of the shards this process serves for one flow (see `flows.core.context`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_shard: dict[str, ModelToServeStats] = {}
        self._drift: dict[str, dict[str, Any]] = {}
        self._outliers: dict[str, dict[str, Any]] = {}
        # Per model: how many records were explained here, and the latest explanations (as /state shows them).
        self._explained: dict[str, int] = {}
        self._explanations: dict[str, deque[dict[str, Any]]] = {}
        # Per challenger: its reports merged, how many, and what closed the last one.
        self._challengers: dict[str, tuple[ChallengerReport, int, str]] = {}
        self._lag: dict[tuple[str, int], PartitionLag] = {}
        self.history = History()  # the recent course of all of the above, for the live page

    def serve(self, shard: str, stats: ModelToServeStats) -> None:
        """`shard` now serves the model `stats` describes."""
        with self._lock:
            self._by_shard[shard] = stats

    def drift(self, model_name: str, drift: dict[str, Any]) -> None:
        """The drift monitor of `model_name` (in this process) says `drift` about its last window."""
        with self._lock:
            self._drift[model_name] = drift
        self.history.drift(model_name, drift)

    def forget_drift(self, model_name: str) -> None:
        with self._lock:
            self._drift.pop(model_name, None)

    def drift_per_model(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(drift) for name, drift in self._drift.items()}

    def outliers(self, model_name: str, outliers: dict[str, Any]) -> None:
        """The outlier detector of `model_name` (in this process) says `outliers` about its windows."""
        with self._lock:
            self._outliers[model_name] = outliers
        self.history.outliers(model_name, outliers)

    def forget_outliers(self, model_name: str) -> None:
        with self._lock:
            self._outliers.pop(model_name, None)

    def outliers_per_model(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(outliers) for name, outliers in self._outliers.items()}

    def explained(self, explained: Iterable[ExplanationMessage]) -> None:
        """A shard of this process explained these records."""
        with self._lock:
            for item in explained:
                name = item.explanation.model_name
                self._explained[name] = self._explained.get(name, 0) + 1
                # Moved to the end, so the model explained longest ago is the first to go.
                latest = self._explanations.pop(name, None) or deque(maxlen=EXPLANATIONS_SHOWN)
                latest.appendleft(asdict(item.explanation))
                self._explanations[name] = latest
            while len(self._explanations) > MODELS_EXPLAINED_SHOWN:
                gone = next(iter(self._explanations))
                del self._explanations[gone]
                self._explained.pop(gone, None)

    def explanations_per_model(self) -> dict[str, dict[str, Any]]:
        """Per model: how many records were explained here and the latest explanations, newest first."""
        with self._lock:
            return {
                name: {"explained": self._explained.get(name, 0), "latest": list(latest)}
                for name, latest in self._explanations.items()
            }

    def challenger(self, report: ChallengerReport) -> None:
        """Add a challenger report of a shard of this process to its challenger's totals."""
        with self._lock:
            so_far = self._challengers.pop(report.challenger, None)
            totals = merge_reports([so_far[0], report]) if so_far else report
            windows = so_far[1] + 1 if so_far else 1
            self._challengers[report.challenger] = (totals, windows, report.closed_by)  # the latest last
            while len(self._challengers) > MAX_CHALLENGERS_SHOWN:
                self._challengers.pop(next(iter(self._challengers)))
        self.history.challenger(report)

    def challengers(self) -> list[dict[str, Any]]:
        """What each recent challenger did in this process, summed over its shards' reports, the latest
        first."""
        with self._lock:
            entries = list(reversed(self._challengers.values()))
        return [
            {**asdict(totals), "shard": None, "window": None, "windows": windows, "closed_by": closed_by}
            for totals, windows, closed_by in entries
        ]

    def partition_lag(self, lag: PartitionLag) -> None:
        """A data partition read by this process was measured (`flows.adapters.kafka.data_source`)."""
        with self._lock:
            self._lag[(lag.topic, lag.partition)] = lag
        self.history.lag(lag.topic, lag.partition, lag.lag, lag.measured_ms)

    def scored(self, model_name: str, records: int, errors: int, call_ms: float) -> None:
        """A shard of this process answered `records` with `model_name` in one call of `call_ms`."""
        self.history.scored(model_name, records, errors, call_ms)

    def event(self, event: ModelEvent) -> None:
        """A model event passed through this process."""
        self.history.event(event)

    def lag_per_partition(self) -> list[dict[str, Any]]:
        """The last measurement of each data partition this process reads (and of those nobody reads), with
        its lag and `age_s`: a measurement that fails keeps the last figure, whose age then grows."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            measured = sorted(self._lag.values(), key=lambda lag: (lag.topic, lag.partition))
        return [
            {**asdict(lag), "lag": lag.lag, "age_s": round(max(0, now_ms - lag.measured_ms) / 1000, 1)}
            for lag in measured
        ]

    def clear(self) -> None:
        with self._lock:
            self._lag.clear()
            self._by_shard.clear()
            self._drift.clear()
            self._outliers.clear()
            self._explained.clear()
            self._explanations.clear()
            self._challengers.clear()
        self.history.clear()

    def models_by_shard(self) -> dict[str, str]:
        with self._lock:
            return {shard: stats.name for shard, stats in self._by_shard.items()}

    def per_model(self) -> list[dict[str, Any]]:
        """ModelToServeStats per model served here, summed over its shards, the newest model first."""
        with self._lock:  # asdict copies the counts: scoring goes on updating the originals
            entries = [
                {**asdict(stats), "shards": [shard]} for shard, stats in sorted(self._by_shard.items())
            ]
        return merge_model_stats(entries)


def merge_model_stats(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model name over `entries` (per shard, or per process from several /state documents):
    usage and duration summed, `min` over the entries that scored anything, `since` the earliest, shards
    listed; with the average per record. The newest model first."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        into = merged.setdefault(
            entry["name"],
            {"name": entry["name"], "description": entry["description"], "since": entry["since"], "usage": 0,
             "duration": 0.0, "min": None, "max": 0, "shards": []},
        )  # fmt: skip
        into["since"] = min(into["since"], entry["since"])
        into["usage"] += entry["usage"]
        into["duration"] += entry["duration"]
        if entry["usage"]:
            into["min"] = entry["min"] if into["min"] is None else min(into["min"], entry["min"])
        into["max"] = max(into["max"], entry["max"])
        into["shards"].extend(entry["shards"])
    for into in merged.values():
        into["min"] = into["min"] or 0
        into["duration"] = round(into["duration"], 3)
        into["average"] = round(into["duration"] / into["usage"], 6) if into["usage"] else 0.0
    return sorted(merged.values(), key=lambda into: into["since"], reverse=True)
