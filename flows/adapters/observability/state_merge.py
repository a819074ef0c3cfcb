"""Several processes' `/state` documents as one: what `serving-query-state` prints and what the live page
of a cluster shows (`flows.adapters.observability.state_server`, `/cluster`).

Each process answers for its own shards, drift monitors, outlier detectors, challenger reports and data
partitions; a model is served by shards in every process, a partition is read by one process at a time (two
during a rescale: the newer measurement counts), and history buckets are aligned on the wall clock, so they
add up.

A process's answer is read with `read_document`: whoever answers at a peer's address may send anything, so
what the merge reads is checked first (types, finite numbers, nesting), and a bad answer is refused with
the reason, leaving the other processes' documents to merge.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from flows.core.challenger import merge_reports
from flows.core.errors import ServingError
from flows.core.events import ChallengerReport
from flows.core.serving_state import EXPLANATIONS_SHOWN, merge_model_stats

REPORT_FIELDS = tuple(ChallengerReport.__dataclass_fields__)


class PeerDocumentError(ServingError, ValueError):
    """A peer's /state document that cannot be merged, with the reason."""


def merge(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model over all processes' /state documents."""
    return merge_model_stats(model for document in documents for model in document["models"])


def merge_challengers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per challenger over all processes' /state documents: counts summed, means weighted."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        for entry in document.get("challengers", []):
            by_name.setdefault(entry["challenger"], []).append(entry)
    merged = []
    for entries in by_name.values():
        reports = [ChallengerReport(**{name: entry[name] for name in REPORT_FIELDS}) for entry in entries]
        total = asdict(merge_reports(reports))
        latest = max(entries, key=lambda entry: entry["end_time"])
        merged.append(
            {**total, "shard": None, "window": None, "windows": sum(entry["windows"] for entry in entries),
             "closed_by": latest["closed_by"], "processes": len(entries)}
        )  # fmt: skip
    return sorted(merged, key=lambda entry: entry["end_time"], reverse=True)


def merge_lag(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The lag per data partition over all processes' /state documents, and its sum. A partition is read by
    one process at a time; where two documents name it (one taken just before a restart), the newer
    measurement counts."""
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for document in documents:
        for entry in document.get("lag", []):
            key = (entry["topic"], entry["partition"])
            if key not in newest or entry["measured_ms"] > newest[key]["measured_ms"]:
                newest[key] = entry
    partitions = [newest[key] for key in sorted(newest)]
    return {"total": sum(entry["lag"] for entry in partitions), "partitions": partitions}


def merge_history(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' histories as one: throughput buckets of one model and start time added, events,
    drift windows, challenger reports and lag points put together in time order (each bounded as one
    process's is, the newest kept)."""
    histories = [document["history"] for document in documents if document.get("history")]
    if not histories:
        return {}
    length = max(history["length"] for history in histories)
    throughput: dict[str, dict[int, dict[str, Any]]] = {}
    for history in histories:
        for model, buckets in history["throughput"].items():
            into = throughput.setdefault(model, {})
            for bucket in buckets:
                total = into.setdefault(bucket["t"], {**bucket, "records": 0, "errors": 0, "calls": 0,
                                                     "call_ms": 0.0, "max_call_ms": 0.0})  # fmt: skip
                for field in ("records", "errors", "calls", "call_ms"):
                    total[field] += bucket[field]
                total["max_call_ms"] = max(total["max_call_ms"], bucket["max_call_ms"])
    return {
        "bucket_s": histories[0]["bucket_s"],
        "length": length,
        "throughput": {
            model: [by_start[t] for t in sorted(by_start)][-length:] for model, by_start in throughput.items()
        },
        "events": sorted(
            (event for history in histories for event in history["events"]), key=lambda e: e["t"]
        )[-length:],
        "drift": _by_name_in_time_order([history["drift"] for history in histories], length),
        "outliers": _by_name_in_time_order([history.get("outliers", {}) for history in histories], length),
        "challengers": _by_name_in_time_order([history["challengers"] for history in histories], length),
        "lag": _by_name_in_time_order([history["lag"] for history in histories], length),
    }


def _by_name_in_time_order(
    series: list[dict[str, list[dict[str, Any]]]], length: int
) -> dict[str, list[dict[str, Any]]]:
    merged: dict[str, list[dict[str, Any]]] = {}
    for by_name in series:
        for name, points in by_name.items():
            merged.setdefault(name, []).extend(points)
    return {name: sorted(points, key=lambda point: point["t"])[-length:] for name, points in merged.items()}


def merge_documents(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One `/state` document for a cluster: the same fields as one process's, merged."""
    drift, outliers = (_most_windows(documents, part) for part in ("drift", "outliers"))
    shards: dict[str, str] = {}
    for document in documents:
        shards.update(document.get("shards", {}))
    lag = merge_lag(documents)
    return {
        "time": max((document.get("time", 0) for document in documents), default=0),
        "models": merge(documents),
        "shards": shards,
        "drift": drift,
        "outliers": outliers,
        "explanations": merge_explanations(documents),
        "challengers": merge_challengers(documents),
        "lag": lag["partitions"],
        "history": merge_history(documents),
    }


def merge_explanations(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: the records explained, summed over the processes, and the latest explanations of all of
    them, newest first (as many as one process shows)."""
    merged: dict[str, dict[str, Any]] = {}
    for document in documents:
        for model, entry in document.get("explanations", {}).items():
            into = merged.setdefault(model, {"explained": 0, "latest": []})
            into["explained"] += entry["explained"]
            into["latest"].extend(entry["latest"])
    for entry in merged.values():
        entry["latest"] = sorted(entry["latest"], key=lambda item: -item["start_time"])[:EXPLANATIONS_SHOWN]
    return merged


def _most_windows(documents: list[dict[str, Any]], part: str) -> dict[str, dict[str, Any]]:
    """Per model, the `part` entry (drift, outliers) of the process whose monitor closed the most windows:
    a model's monitor runs in one process; another may show one it has since forgotten."""
    chosen: dict[str, dict[str, Any]] = {}
    for document in documents:
        for model, entry in document.get(part, {}).items():
            if model not in chosen or entry.get("windows", 0) > chosen[model].get("windows", 0):
                chosen[model] = entry
    return chosen


MAX_DEPTH = 32  # a /state document nests 5 deep; deeper is not one, and could overflow the JSON encoder


class _Checked(BaseModel):
    """A part of a process's /state document: the fields the merge reads, typed; others kept as they are."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class _Model(_Checked):
    name: str
    description: str
    since: int
    usage: int
    duration: float
    min: int
    max: int
    shards: list[str]


class _Challenger(_Checked):
    challenger: str
    champion: str
    mode: str
    fraction: float
    shard: str | None
    window: int | None
    closed_by: str
    records: int
    challenger_records: int
    challenger_errors: int
    compared_records: int
    compared_pairs: int
    top_k: int
    top_k_agreement: float
    mean_abs_diff: float
    champion_batch_ms: float
    challenger_batch_ms: float
    start_time: int
    end_time: int
    windows: int


class _Lag(_Checked):
    topic: str
    partition: int
    next_offset: int
    end_offset: int
    measured_ms: int
    lag: int


class _Monitor(_Checked):
    """A drift monitor's or outlier detector's entry: the merge reads how many windows it closed."""

    windows: int = 0


class _Explained(_Checked):
    user: int
    model_name: str
    start_time: int


class _Explanations(_Checked):
    explained: int
    latest: list[_Explained]


class _Point(_Checked):
    t: int


class _Bucket(_Point):
    records: int
    errors: int
    calls: int
    call_ms: float
    max_call_ms: float


class _History(_Checked):
    bucket_s: int
    length: int
    throughput: dict[str, list[_Bucket]]
    events: list[_Point]
    drift: dict[str, list[_Point]]
    outliers: dict[str, list[_Point]] = {}  # not in the documents of processes from before outlier scores
    challengers: dict[str, list[_Point]]
    lag: dict[str, list[_Point]]


class _Document(_Checked):
    time: int = 0
    models: list[_Model]
    shards: dict[str, str] = {}
    drift: dict[str, _Monitor] = {}
    outliers: dict[str, _Monitor] = {}
    explanations: dict[str, _Explanations] = {}  # not in the documents of processes from before explanations
    challengers: list[_Challenger] = []
    lag: list[_Lag] = []
    history: _History | None = None


def read_document(body: bytes) -> dict[str, Any]:
    """A process's /state document from the body of its answer; ValueError saying what is wrong with it
    (not JSON, NaN or Infinity, nested too deep, a field missing or of the wrong type)."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise PeerDocumentError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(value)
    try:
        return _Document.model_validate(value).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise PeerDocumentError(
            f"not a /state document: {where}: {first['msg']} ({error.error_count()} errors)"
        ) from None


def _no_constant(name: str) -> Any:
    raise PeerDocumentError(f"{name} in the JSON: a /state document has finite numbers only")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise PeerDocumentError(f"{text[:20]} is out of range: a /state document has finite numbers only")
    return number


def _check_depth(value: Any) -> None:
    """ValueError if `value` nests deeper than MAX_DEPTH (checked without recursion, which it could
    overflow)."""
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PeerDocumentError(f"JSON nested deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
