"""What one serving flow shares between its steps within a process: the scorer cache, the telemetry, the
serving statistics and the gate that holds the data sources back until a champion is ready.

They cannot be Bytewax state (a scorer is not picklable, and a process loads each model once however many
shards it holds), so they live beside the dataflow. Passing one context to `serve` (instead of module-level
singletons) keeps two flows in one process apart: each has its own statistics on its own /state, and a test
starts from a fresh context instead of resetting globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.core.admission.policy import AdmissionPolicy
from flows.core.champion_gate import ChampionGate
from flows.core.scorer_cache import ScorerCache
from flows.core.serving_state import ServingState
from flows.core.telemetry import Telemetry


@dataclass(frozen=True)
class ServingContext:
    """The process-side companions of one serving flow; see the module docstring."""

    cache: ScorerCache
    state: ServingState
    telemetry: Telemetry
    # Opened by the first shard of this process that serves a champion; the data sources wait for it.
    champion_gate: ChampionGate = field(default_factory=ChampionGate)

    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy of this flow: the cache's, so what loads a model and what judges it and
        scores with it cannot follow two policies."""
        return self.cache.policy

    @classmethod
    def create(
        cls, policy: AdmissionPolicy | None = None, cache: ScorerCache | None = None
    ) -> ServingContext:
        """A fresh context: an empty cache (with `policy`, or the default policy), empty
        statistics, telemetry off until installed."""
        state = ServingState()
        return cls(cache if cache is not None else ScorerCache(policy), state, Telemetry(state))
