"""The last minutes of a process, for the live page: a bounded history behind `/state`'s `"history"`.

`ServingState` holds the latest figures (what each shard serves, the last drift window, the challengers'
totals); an operator looking at a page wants their course too. This keeps, per process and in memory only
(a restart starts it again; the totals in `/state` survive restarts, this does not):

- per model, records and model-call times in buckets of `BUCKET_S` seconds aligned on the wall clock, so
  that buckets of several processes add up;
- the model events, per-shard repeats of one flow-wide change folded into one entry with a shard count;
- per model, its drift windows (PSI per feature, the threshold) and its outlier windows (the rate);
- per challenger, its reports (one per shard and window);
- per data partition, its lag, at most one point per bucket.

Everything is bounded by `LENGTH` entries per series and `MAX_SERIES` series per kind (the oldest series
goes first), whatever the topics carry: names come from model messages and are cut before they get here.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from flows.core.events import ChallengerReport, ModelEvent

BUCKET_S = 5
LENGTH = 120  # buckets (10 minutes of throughput), events, windows or reports per series
MAX_SERIES = 16  # models, challengers or partitions followed at once
FOLD_WITHIN_MS = 30_000  # a per-shard event repeating the previous one this soon is folded into it


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bucket_start(at_ms: int) -> int:
    """The start of the wall-clock bucket `at_ms` falls in: the same in every process."""
    return at_ms - at_ms % (BUCKET_S * 1000)


@dataclass(slots=True)
class _Bucket:
    """What one model scored in one process during one bucket."""

    start_ms: int
    records: int = 0
    errors: int = 0
    calls: int = 0
    call_ms: float = 0.0
    max_call_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.start_ms,
            "records": self.records,
            "errors": self.errors,
            "calls": self.calls,
            "call_ms": round(self.call_ms, 3),
            "max_call_ms": round(self.max_call_ms, 3),
        }


class _Series:
    """Bounded series keyed by name: at most MAX_SERIES names, LENGTH entries each, the oldest name
    dropped."""

    def __init__(self) -> None:
        self._by_name: OrderedDict[str, deque[Any]] = OrderedDict()

    def of(self, name: str) -> deque[Any]:
        series = self._by_name.get(name)
        if series is None:
            series = self._by_name[name] = deque(maxlen=LENGTH)
            while len(self._by_name) > MAX_SERIES:
                self._by_name.popitem(last=False)
        return series

    def copy(self, convert: Any = dict) -> dict[str, list[Any]]:
        return {name: [convert(entry) for entry in series] for name, series in self._by_name.items()}

    def clear(self) -> None:
        self._by_name.clear()


class History:
    """The bounded recent course of one process's serving (see the module's docstring). Thread-safe: the
    dataflow writes, the state endpoint's threads read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._throughput = _Series()
        self._events: deque[dict[str, Any]] = deque(maxlen=LENGTH)
        self._drift = _Series()
        self._outliers = _Series()
        self._challengers = _Series()
        self._lag = _Series()

    def scored(
        self, model_name: str, records: int, errors: int, call_ms: float, at_ms: int | None = None
    ) -> None:
        """One model call of `model_name` answered `records` (`errors` of them with an error) in `call_ms`."""
        start = bucket_start(now_ms() if at_ms is None else at_ms)
        with self._lock:
            series = self._throughput.of(model_name)
            if not series or series[-1].start_ms != start:
                series.append(_Bucket(start))
            bucket = series[-1]
            bucket.records += records
            bucket.errors += errors
            bucket.calls += 1
            bucket.call_ms += call_ms
            bucket.max_call_ms = max(bucket.max_call_ms, call_ms)

    def event(self, event: ModelEvent, at_ms: int | None = None) -> None:
        """A model event; the same change on several shards becomes one entry counting them."""
        at_ms = now_ms() if at_ms is None else at_ms
        entry = {
            "t": at_ms,
            "kind": str(event.kind),
            "model": event.model_name,
            "previous": event.previous_model,
            "reason": event.reason,
            "shards": 1 if event.shard else 0,
        }
        with self._lock:
            last = self._events[-1] if self._events else None
            if (
                event.shard
                and last is not None
                and last["shards"]
                and at_ms - last["t"] <= FOLD_WITHIN_MS
                and all(last[key] == entry[key] for key in ("kind", "model", "previous", "reason"))
            ):
                last["shards"] += 1
                return
            self._events.append(entry)

    def drift(self, model_name: str, drift: dict[str, Any], at_ms: int | None = None) -> None:
        """The drift monitor of `model_name` published `drift`; a new window is a new point."""
        if not drift.get("windows"):
            return
        with self._lock:
            series = self._drift.of(model_name)
            if series and series[-1]["window"] == drift["windows"]:
                return
            series.append(
                {
                    "t": now_ms() if at_ms is None else at_ms,
                    "window": drift["windows"],
                    "drifting": drift.get("drifting", False),
                    "threshold": drift.get("threshold"),
                    "psi": {name: feature["psi"] for name, feature in drift.get("features", {}).items()},
                }
            )

    def outliers(self, model_name: str, outliers: dict[str, Any], at_ms: int | None = None) -> None:
        """The outlier detector of `model_name` published `outliers`; a new window is a new point."""
        if not outliers.get("windows") or not outliers.get("rates"):
            return
        with self._lock:
            series = self._outliers.of(model_name)
            if series and series[-1]["window"] == outliers["windows"]:
                return
            series.append(
                {
                    "t": now_ms() if at_ms is None else at_ms,
                    "window": outliers["windows"],
                    "rate": outliers["rates"][-1],
                    "alerting": outliers.get("alerting", False),
                    "threshold": outliers.get("threshold"),
                }
            )

    def challenger(self, report: ChallengerReport) -> None:
        with self._lock:
            self._challengers.of(report.challenger).append(
                {
                    "t": report.end_time,
                    "shard": report.shard,
                    "mode": report.mode,
                    "champion": report.champion,
                    "records": report.records,
                    "challenger_records": report.challenger_records,
                    "challenger_errors": report.challenger_errors,
                    "top_k_agreement": report.top_k_agreement,
                    "mean_abs_diff": report.mean_abs_diff,
                    "champion_batch_ms": report.champion_batch_ms,
                    "challenger_batch_ms": report.challenger_batch_ms,
                }
            )

    def lag(self, topic: str, partition: int, lag: int, at_ms: int) -> None:
        """A partition's lag; within one bucket the newest measurement replaces the previous one."""
        point = {"t": at_ms, "lag": lag}
        with self._lock:
            series = self._lag.of(f"{topic}[{partition}]")
            if series and bucket_start(series[-1]["t"]) == bucket_start(at_ms):
                series[-1] = point
            else:
                series.append(point)

    def document(self) -> dict[str, Any]:
        """The history as `/state` shows it (copies: the flow goes on writing)."""
        with self._lock:
            return {
                "bucket_s": BUCKET_S,
                "length": LENGTH,
                "throughput": self._throughput.copy(_Bucket.as_dict),
                "events": [dict(entry) for entry in self._events],
                "drift": self._drift.copy(),
                "outliers": self._outliers.copy(),
                "challengers": self._challengers.copy(),
                "lag": self._lag.copy(),
            }

    def clear(self) -> None:
        with self._lock:
            for series in (self._throughput, self._drift, self._outliers, self._challengers, self._lag):
                series.clear()
            self._events.clear()
