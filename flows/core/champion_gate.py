"""Whether a shard of this process serves a champion yet: the signal the data sources wait for at start-up
(`flows.adapters.sources.model_gate` holds them back until it opens; `flows.core.shard` opens it)."""

from __future__ import annotations

import threading


class ChampionGate:
    """Whether a shard of this process serves a champion yet; shared by the process's shards and sources."""

    def __init__(self) -> None:
        self._open = threading.Event()

    def open(self) -> None:
        self._open.set()

    def is_open(self) -> bool:
        return self._open.is_set()
