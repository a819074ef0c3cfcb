"""A new champion on probation: watched on each shard beside the champion it replaced, which stays loaded,
and rolled back to it if it turns bad in service.

Admission asks a model what it can before it serves (`flows.core.admission`), but a model can still answer
the probe and its trial well and real traffic badly: errors for ids or products it was not asked about, or
calls far slower than the trial measured. Without this, such a model served until the next one was
published (1,145 of 1,283 records answered with errors, in a red-team run). So for its first
`SERVING_ROLLBACK_RECORDS` records on a shard, a new champion's answers are counted; when more than
`SERVING_ROLLBACK_ERROR_RATE` of them are errors (after at least `MIN_RECORDS`), or `SLOW_CALLS` of its calls
take more than `SERVING_ROLLBACK_SLOW_FACTOR` times what its trial measured for as many pairs, the shard
goes back to the previous champion, still loaded, and says why in a `rolled-back` event. The shard remembers
the model it rolled back from, so the model holder sending it again (after a restart) brings back the
previous champion instead (`ModelUpdate.fallback`). Each shard judges its own traffic: they agree when the
traffic is spread evenly, as the flow spreads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from flows.core.scorer import Scorer
from flows.core.sections import Section

MIN_RECORDS = 100  # fewer answers say too little about an error rate
SLOW_CALLS = 3  # slow calls before a rollback: one can be the machine, not the model
SLOW_FLOOR_MS = 50.0  # a call this fast is never slow, whatever the trial measured


class RollbackSettings(Section):
    """When a new champion goes back to the previous one (`SERVING_ROLLBACK_*`)."""

    records: int = Field(
        10_000,
        ge=0,
        description=(
            "records each shard watches a new champion for, with the champion it replaced kept loaded (`0`: "
            "no probation, no rollback)"
        ),
    )
    error_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "a new champion whose answers on a shard are errors more often than this (after 100 records) is "
            "rolled back to the previous champion"
        ),
    )
    slow_factor: float = Field(
        20.0,
        gt=1,
        description=(
            "a new champion with 3 calls on a shard slower than this many times what its trial measured for "
            "as many pairs (and over 50 ms) is rolled back"
        ),
    )


@dataclass
class Probation:
    """The count of a new champion's answers on one shard, and the champion it replaced, still loaded."""

    fallback: Scorer
    fallback_digest: str
    fallback_name: str
    fallback_description: str = ""
    records: int = 0
    errors: int = 0
    slow_calls: int = 0

    def verdict(
        self,
        scorer: Scorer,
        records: int,
        errors: int,
        pairs: int,
        call_ms: float,
        settings: RollbackSettings,
    ) -> str | None:
        """Count one scored batch of the new champion `scorer`; why it must go back, or None."""
        self.records += records
        self.errors += errors
        expected_ms = _expected_ms(scorer, pairs)
        if expected_ms is not None and call_ms > max(SLOW_FLOOR_MS, settings.slow_factor * expected_ms):
            self.slow_calls += 1
            if self.slow_calls >= SLOW_CALLS:
                return (
                    f"{self.slow_calls} calls slower than {settings.slow_factor:g} x what its trial measured "
                    f"(the last: {call_ms:.0f} ms for {pairs:,} pairs, against {expected_ms:.1f} ms; "
                    "SERVING_ROLLBACK_SLOW_FACTOR)"
                )
        if self.records >= MIN_RECORDS and self.errors > settings.error_rate * self.records:
            return (
                f"{self.errors:,} of its first {self.records:,} answers on this shard were errors, over "
                f"{settings.error_rate:g} (SERVING_ROLLBACK_ERROR_RATE)"
            )
        return None

    def served(self, settings: RollbackSettings) -> bool:
        """Whether the new champion has served its probation."""
        return self.records >= settings.records


def _expected_ms(scorer: Scorer, pairs: int) -> float | None:
    """What the trial of `scorer` says a call of `pairs` pairs costs (None: it had no trial)."""
    trial = getattr(scorer, "trial", None)
    if trial is None or not trial.max_pairs:
        return None
    return trial.call_ms * max(pairs, 1) / trial.max_pairs
