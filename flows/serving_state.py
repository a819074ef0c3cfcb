"""What the shards of this process serve, and how it went: the statistics behind /state and the gauges.

Each shard registers its `ModelToServeStats` when it swaps a model in (or is restored with one); the
registry keeps a reference, so counts made while scoring are visible without further calls. Readers
get copies, merged per model across shards.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from flows.records import ModelToServeStats


class ServingState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_shard: dict[str, ModelToServeStats] = {}

    def serve(self, shard: str, stats: ModelToServeStats) -> None:
        """`shard` now serves the model `stats` describes."""
        with self._lock:
            self._by_shard[shard] = stats

    def clear(self) -> None:
        with self._lock:
            self._by_shard.clear()

    def models_by_shard(self) -> dict[str, str]:
        with self._lock:
            return {shard: stats.name for shard, stats in self._by_shard.items()}

    def per_model(self) -> list[dict[str, Any]]:
        """ModelToServeStats per model served here, summed over its shards, the newest model first."""
        with self._lock:
            shards = {shard: copy.copy(stats) for shard, stats in self._by_shard.items()}
        merged: dict[str, dict[str, Any]] = {}
        for shard, stats in sorted(shards.items()):
            entry = merged.setdefault(
                stats.name,
                {"name": stats.name, "description": stats.description, "since": stats.since, "usage": 0,
                 "duration": 0.0, "min": None, "max": 0, "shards": []},
            )  # fmt: skip
            entry["since"] = min(entry["since"], stats.since)
            entry["usage"] += stats.usage
            entry["duration"] += stats.duration
            if stats.usage:
                entry["min"] = stats.min if entry["min"] is None else min(entry["min"], stats.min)
            entry["max"] = max(entry["max"], stats.max)
            entry["shards"].append(shard)
        for entry in merged.values():
            entry["min"] = entry["min"] or 0
            entry["duration"] = round(entry["duration"], 3)
            entry["average"] = round(entry["duration"] / entry["usage"], 6) if entry["usage"] else 0.0
        return sorted(merged.values(), key=lambda entry: entry["since"], reverse=True)


# The registry of this process.
SERVING_STATE = ServingState()
