"""Ask running flows what they serve: `python -m flows.tools.query_state [URL ...]`.

Each process of a flow answers `GET /state` for its own shards; given several URLs (one per process),
the tool merges their statistics per model and prints one line per model, then the Kafka lag summed over
the data partitions the processes read (the flow keeps its offsets in its recovery store, so Kafka's
consumer-group tools show none). With `--challengers`, it merges the challengers' reports instead
(`flows.core.challenger`), one line per challenger; with `--lag`, the lag per partition, each with its age
(a partition whose end the broker did not tell keeps its last figure), and any partition added to the topic
after the flow started, which no process reads until a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

import urllib3

from flows.adapters.observability.state_merge import (
    PeerDocumentError,
    merge,
    merge_challengers,
    merge_lag,
    read_document,
)
from flows.core.errors import ServingError
from flows.core.vocabulary import Mode

DEFAULT_URL = "http://localhost:8081/state"


class StateUnavailable(ServingError, RuntimeError):
    """A process's /state answered with an HTTP error status."""


def fetch(url: str, timeout_s: float) -> dict[str, Any]:
    """The /state document at `url`, checked as `/cluster` checks its peers': StateUnavailable for an HTTP
    error status, PeerDocumentError for a document that is not one, each naming the URL."""
    response = urllib3.request("GET", url, timeout=timeout_s, retries=False)
    if response.status != 200:
        raise StateUnavailable(f"{url}: HTTP {response.status}")
    try:
        return read_document(response.data)
    except ValueError as error:
        raise PeerDocumentError(f"{url}: {error}") from None


def render_lag(lag: dict[str, Any], per_partition: bool) -> str:
    if not lag["partitions"]:
        return (
            "Kafka lag: no data partition measured (the embedded default, or no answer from the broker yet)"
        )
    oldest = max(entry.get("age_s", 0.0) for entry in lag["partitions"])
    unread = sum(1 for entry in lag["partitions"] if entry.get("unread"))
    head = (
        f"Kafka lag: {lag['total']:,} messages over {len(lag['partitions'])} data partitions, "
        f"measured up to {oldest:g} s ago"
    )
    if unread:
        head += f"; {unread} unread (added after the flow started: it reads them after a restart)"
    lines = [head]
    if per_partition:
        lines.extend(_partition_line(entry) for entry in lag["partitions"])
    return "\n".join(lines)


def _partition_line(entry: dict[str, Any]) -> str:
    where = f"{entry['topic']}[{entry['partition']}]: {entry['lag']:,}"
    age = f"measured {entry.get('age_s', 0.0):g} s ago"
    if entry.get("unread"):
        return f"{where} unread (offsets {entry['next_offset']:,} to {entry['end_offset']:,}; {age})"
    return f"{where} (next offset {entry['next_offset']:,}, end {entry['end_offset']:,}; {age})"


def render_challengers(challengers: list[dict[str, Any]]) -> str:
    lines = []
    for entry in challengers:
        head = f"{entry['challenger']} ({entry['mode']} {entry['fraction']:g} of {entry['champion']})"
        comparison = (
            f"top-{entry['top_k']} agreement {entry['top_k_agreement']:.3f}, "
            f"mean |diff| {entry['mean_abs_diff']:.4f}"
            if entry["mode"] == Mode.SHADOW
            else f"answered {entry['challenger_records']:,}"
        )
        lines.append(
            f"{head}: {entry['records']:,} records, {entry['challenger_records']:,} to the challenger, "
            f"{entry['challenger_errors']:,} errors; {comparison}; {entry['windows']} windows, "
            f"last closed by {entry['closed_by']}"
        )
    return "\n".join(lines) or "no challenger reports"


def render(models: list[dict[str, Any]]) -> str:
    lines = [
        (
            f"{'model':<22} {'since (UTC)':<19} {'records':>10} {'avg ms/rec':>10} "
            f"{'min ms':>7} {'max ms':>7}  shards"
        )
    ]
    for model in models:
        since = datetime.fromtimestamp(model["since"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{model['name']:<22} {since:<19} {model['usage']:>10,} {model['average']:>10.4f} "
            f"{model['min']:>7} {model['max']:>7}  {len(model['shards'])}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="serving-query-state", description=__doc__.split("\n")[0])
    parser.add_argument(
        "urls", nargs="*", default=[DEFAULT_URL], help=f"state endpoints (default {DEFAULT_URL})"
    )
    parser.add_argument("--json", action="store_true", help="print the merged statistics as JSON")
    parser.add_argument(
        "--challengers", action="store_true", help="the challengers' merged reports instead of the models"
    )
    parser.add_argument(
        "--lag", action="store_true", help="the Kafka lag per data partition instead of the models"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each endpoint")
    args = parser.parse_args()
    try:
        documents = [fetch(url, args.timeout) for url in args.urls]
    except (urllib3.exceptions.HTTPError, RuntimeError, ValueError) as error:
        print(f"cannot read the flow's state: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.challengers:
        challengers = merge_challengers(documents)
        print(json.dumps(challengers, indent=2) if args.json else render_challengers(challengers))
        return
    lag = merge_lag(documents)
    if args.lag:
        print(json.dumps(lag, indent=2) if args.json else render_lag(lag, per_partition=True))
        return
    models = merge(documents)
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        print(render(models))
        print(render_lag(lag, per_partition=False))


if __name__ == "__main__":
    main()
