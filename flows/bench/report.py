"""The JSON line every benchmark scenario prints, and appends to a results file for `serving-plot-bench`."""

from __future__ import annotations

import platform
from datetime import datetime, timezone

import numpy as np

from flows.adapters.kafka.headers import SOURCE_TIMESTAMP_HEADER


def report(
    scenario: str, records: int, offered: float | str, seconds: float, latencies_ms, **details
) -> dict:
    """The JSON line every scenario prints: the common figures first, then the scenario's own details."""
    latencies = np.asarray(latencies_ms, dtype=float)
    return {
        "scenario": scenario,
        "records": records,
        "offered_rate": offered,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        **details,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def kafka_report(
    scenario: str,
    records: int,
    offered: float | str,
    results: list,
    partitions: int,
    bootstrap: str | None,
    **details,
) -> dict:
    """The JSON line of a Kafka scenario: throughput between the first and the last result message (so
    start-up is not counted), latency from each data message's timestamp to its result's."""
    stamps = sorted(message.timestamp()[1] for message in results)
    seconds = max((stamps[-1] - stamps[0]) / 1000, 0.001)
    latencies = [
        message.timestamp()[1] - int(dict(message.headers())[SOURCE_TIMESTAMP_HEADER]) for message in results
    ]
    return report(
        scenario,
        records,
        offered,
        seconds,
        latencies,
        partitions=partitions,
        broker="external" if bootstrap else "noida-db (local)",
        **details,
    )
