"""Plot benchmark results: `serving-plot-bench RESULTS.jsonl... --out PLOT.png [--table]`.

Reads the JSON lines `serving-bench --out FILE` appends (one per run) and draws two panels: throughput per
scenario for the unthrottled runs (median of the runs, with their range), and latency (p50 and p99) against
the offered rate for the runs at a fixed rate or, where no run had one, the scaling curve: records/s against
the main job's process count (docs/benchmarks/scaling.png). The README's plot is made this way from
`docs/benchmarks/results.jsonl`; see `docs/benchmarks.md`. `--formats` prints the table of model formats
instead (docs/benchmarks/formats.sh): the `embedded` and `call-cost` runs' medians per scorer; `--monitoring`
what outlier scoring and explanations cost (docs/benchmarks/monitoring.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def read_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Every benchmark line of `paths`; blank lines and lines that are not JSON objects are skipped."""
    results = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line.startswith("{"):
                results.append(json.loads(line))
    return results


def throughput_by_scenario(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """records/s of the unthrottled runs, per scenario (plus partitions or workers where they are not 1)."""
    by_scenario: dict[str, list[float]] = defaultdict(list)
    for result in results:
        if not isinstance(result.get("offered_rate"), (int, float)):
            by_scenario[_label(result)].append(result["records_per_s"])
    return dict(by_scenario)


def latency_by_rate(results: list[dict[str, Any]]) -> dict[str, dict[float, tuple[float, float]]]:
    """Per scenario and offered rate: the median p50 and p99 latency (ms) of the runs at that rate."""
    runs: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        rate = result.get("offered_rate")
        if isinstance(rate, (int, float)) and result["scenario"] != "swap":
            runs[_label(result)][float(rate)].append(result)
    return {
        label: {
            rate: (
                statistics.median(run["p50_ms"] for run in at_rate),
                statistics.median(run["p99_ms"] for run in at_rate),
            )
            for rate, at_rate in sorted(by_rate.items())
        }
        for label, by_rate in runs.items()
    }


def throughput_by_processes(results: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per scenario (without its process count) and process count: the median records/s of the unthrottled
    runs of the main job, where they ran on more than one process count (the scaling curve)."""
    runs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        if result.get("processes") and not isinstance(result.get("offered_rate"), (int, float)):
            label = _label({**result, "processes": None})
            runs[label][result["processes"]].append(result["records_per_s"])
    return {
        label: {count: statistics.median(rates) for count, rates in sorted(by_count.items())}
        for label, by_count in runs.items()
        if len(by_count) > 1
    }


def _provenance(results: list[dict[str, Any]]) -> str:
    """Where and when the runs were measured, as the plot's subtitle."""
    machines = sorted({result.get("machine", "unknown machine") for result in results})
    dates = sorted(result["date"][:10] for result in results if "date" in result)
    when = (
        f", {dates[0]} to {dates[-1]}"
        if dates and dates[0] != dates[-1]
        else (f", {dates[0]}" if dates else "")
    )
    return f"{len(results)} runs on {' / '.join(machines)}{when}"


def _label(result: dict[str, Any]) -> str:
    label = result["scenario"]
    if result.get("partitions", 1) != 1:
        label += f" ×{result['partitions']} partitions"
    if result.get("workers", 1) != 1:
        label += f" ×{result['workers']} workers"
    if result.get("processes"):
        label += f", main job ×{result['processes']} process{'es' if result['processes'] > 1 else ''}"
    return label


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of the unthrottled runs: per scenario, median records/s (range, runs) and the
    median p50 and p99 latency."""
    rows = defaultdict(list)
    for result in results:
        if not isinstance(result.get("offered_rate"), (int, float)):
            rows[_label(result)].append(result)
    lines = ["| scenario | records/s, median (range; runs) | p50 ms | p99 ms |", "|---|---|---|---|"]
    for label, runs in sorted(
        rows.items(), key=lambda row: -statistics.median(r["records_per_s"] for r in row[1])
    ):
        p50 = statistics.median(run["p50_ms"] for run in runs)
        p99 = statistics.median(run["p99_ms"] for run in runs)
        lines.append(f"| `{label}` | {_rates(runs)} | {p50:,.1f} | {p99:,.1f} |")
    return "\n".join(lines)


def formats_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one column per scorer (`source`): the medians of the unthrottled `embedded` runs
    (records/s with its range, p50 and p99 per record, resident memory after warm-up) and of the
    `call-cost` runs (one call at 1, 100 and 1,000 pairs, the scorer's process alone)."""
    by_source: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:  # call-cost runs are "unthrottled" too
        if (
            result["scenario"] in ("embedded", "call-cost")
            and "source" in result
            and not isinstance(result.get("offered_rate"), (int, float))
        ):
            by_source[result["source"]][result["scenario"]].append(result)
    sources = list(by_source)

    def cell(scenario: str, key: str, unit: str = "", digits: int = 1) -> list[str]:
        cells = []
        for source in sources:
            runs = by_source[source][scenario]
            values = [run[key] for run in runs if key in run]
            cells.append(f"{statistics.median(values):,.{digits}f}{unit}" if values else "-")
        return cells

    rows = [
        (
            "`embedded`: records/s, median (range; runs)",
            [
                _rates(by_source[source]["embedded"]) if by_source[source]["embedded"] else "-"
                for source in sources
            ],
        ),
        ("`embedded`: p50 per record", cell("embedded", "p50_ms", " ms")),
        ("`embedded`: p99 per record", cell("embedded", "p99_ms", " ms")),
        ("`embedded`: model call p50 (one micro-batch)", cell("embedded", "call_p50_ms", " ms")),
        ("`embedded`: model call p99", cell("embedded", "call_p99_ms", " ms")),
        ("`embedded`: resident memory after warm-up", cell("embedded", "rss_mb", " MB", 0)),
        *(
            (
                f"one call, {size:,} pair{'s' if size > 1 else ''}",
                cell("call-cost", f"call_ms_batch_{size}", " ms", 3),
            )
            for size in (1, 100, 1_000)
        ),
        ("resident memory, the scorer alone (`call-cost`)", cell("call-cost", "rss_mb", " MB", 0)),
    ]
    lines = [
        "| | " + " | ".join(f"`{source}`" for source in sources) + " |",
        "|---" * (len(sources) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines)


def monitoring_table(results: list[dict[str, Any]]) -> str:
    """Two Markdown tables (docs/benchmarks/monitoring.sh): per run kind (scenario, scorer, offered rate),
    the medians with outlier scoring and explanations both on and both off and what being on costs; and
    per scorer, what one explained record costs (`explain-cost`)."""
    runs: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        both = (result.get("outliers"), result.get("explain"))
        if result["scenario"] in ("embedded", "kafka-embedded") and both in (("on", "on"), ("off", "off")):
            offered = result["offered_rate"]
            rate = f"{offered:,.0f}/s" if isinstance(offered, (int, float)) else str(offered)
            kind = (result["scenario"], result.get("source") or result.get("model", ""), rate)
            runs[kind][both[0]].append(result)
    lines = [
        (
            "| run | offered | records/s, both on | both off | cost | p99, both on | both off "
            "| CPU per record, both on | both off |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (scenario, source, offered), by_state in runs.items():
        on, off = by_state["on"], by_state["off"]
        if not on or not off:
            continue
        rate_on, rate_off = (statistics.median(run["records_per_s"] for run in side) for side in (on, off))
        p99_on, p99_off = (statistics.median(run["p99_ms"] for run in side) for side in (on, off))
        cpu_on, cpu_off = (_median_of(side, "cpu_us_per_record", " µs") for side in (on, off))
        lines.append(
            f"| `{scenario}` {source} | {offered} | {_rates(on)} | {_rates(off)} | "
            f"{1 - rate_on / rate_off:+.1%} | {p99_on:,.1f} ms | {p99_off:,.1f} ms | {cpu_on} | {cpu_off} |"
        )
    lines += ["", "| scorer | one record asking | 16 records asking, per record |", "|---|---|---|"]
    costs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        if result["scenario"] == "explain-cost":
            costs[result["source"].split("://")[0]].append(result)
    for source, found in costs.items():
        one, sixteen = (
            statistics.median(run[f"ms_per_explained_{asking}_records"] for run in found)
            for asking in (1, 16)
        )
        lines.append(f"| `{source}` | {one:.3f} ms | {sixteen:.3f} ms |")
    return "\n".join(lines)


def latency_runs(results: list[dict[str, Any]]) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """The Kafka runs under an offered load, per delivery and offered rate (docs/benchmarks/latency.sh)."""
    runs: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        rate = result.get("offered_rate")
        if result["scenario"] == "kafka-embedded" and isinstance(rate, (int, float)):
            runs[result.get("delivery", "at-least-once")][float(rate)].append(result)
    return {delivery: dict(sorted(by_rate.items())) for delivery, by_rate in sorted(runs.items())}


def latency_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of latency against offered rate, per delivery: medians of the runs at each rate of
    the latency a read_committed reader sees (produced data message to visible result) and the flow's
    own (to its result's produce time), and the records/s served."""
    lines = [
        (
            "| delivery | offered/s | served/s | visible p50 ms | visible p99 ms | produced p50 ms | "
            "produced p99 ms | runs |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for delivery, by_rate in latency_runs(results).items():
        for rate, runs in by_rate.items():
            cells = [
                f"{statistics.median(run[key] for run in runs):,.0f}"
                for key in ("visible_p50_ms", "visible_p99_ms", "p50_ms", "p99_ms")
            ]
            served = statistics.median(run["records_per_s"] for run in runs)
            lines.append(f"| {delivery} | {rate:,.0f} | {served:,.0f} | {' | '.join(cells)} | {len(runs)} |")
    return "\n".join(lines)


def plot_latency(results: list[dict[str, Any]], out: Path, title: str) -> None:
    """Visible p50 and p99 against offered rate, a line per delivery (log scale)."""
    visible = {
        delivery: {
            rate: (
                statistics.median(run["visible_p50_ms"] for run in runs),
                statistics.median(run["visible_p99_ms"] for run in runs),
            )
            for rate, runs in by_rate.items()
        }
        for delivery, by_rate in latency_runs(results).items()
    }
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5), constrained_layout=True)
    _draw_latency(axes, visible)
    axes.set_xlabel("offered load, records/s (kafka-embedded, 1 partition)")
    axes.set_ylabel("latency a read_committed reader sees, ms")
    figure.suptitle(f"{title}\n{_provenance(results)}", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def _median_of(runs: list[dict[str, Any]], key: str, unit: str) -> str:
    """The runs' median `key`, with `unit`; '-' if none has it."""
    values = [run[key] for run in runs if key in run]
    return f"{statistics.median(values):,.2f}{unit}" if values else "-"


def _rates(runs: list[dict[str, Any]]) -> str:
    """The runs' median records/s, with their range and how many there were."""
    rates = [run["records_per_s"] for run in runs]
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f} – {max(rates):,.0f}; {len(rates)})"


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "serving-plot-bench needs matplotlib: pip install 'bytewax-model-serving[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    return pyplot


def plot(results: list[dict[str, Any]], out: Path, title: str) -> None:
    pyplot = _pyplot()
    throughput, latency = throughput_by_scenario(results), latency_by_rate(results)
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    labels = sorted(throughput, key=lambda label: statistics.median(throughput[label]))
    medians = [statistics.median(throughput[label]) for label in labels]
    spread = [
        [median - min(throughput[label]) for label, median in zip(labels, medians)],
        [max(throughput[label]) - median for label, median in zip(labels, medians)],
    ]
    left.barh(labels, medians, xerr=spread, color="tab:blue", capsize=3)
    for row, median in enumerate(medians):
        left.annotate(
            f"{median:,.0f}", (median, row), xytext=(4, -10), textcoords="offset points", fontsize=8
        )
    left.set_xlabel("records/s (median of runs; whiskers: min–max)")
    left.set_title("Throughput, unthrottled")
    if latency:
        _draw_latency(right, latency)
    elif curves := throughput_by_processes(results):
        _draw_scaling(right, curves)
    else:
        right.set_axis_off()
    figure.suptitle(f"{title}\n{_provenance(results)}", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def _draw_latency(axes: Any, latency: dict[str, dict[float, tuple[float, float]]]) -> None:
    for label, by_rate in sorted(latency.items()):
        rates = list(by_rate)
        (line,) = axes.plot(rates, [p50 for p50, _ in by_rate.values()], marker="o", label=f"{label} p50")
        axes.plot(rates, [p99 for _, p99 in by_rate.values()], marker="^", linestyle="--",
                  color=line.get_color(), label=f"{label} p99")  # fmt: skip
    axes.set_xlabel("offered load, records/s")
    axes.set_ylabel("latency, ms")
    axes.set_yscale("log")
    axes.set_title("Latency under an offered load")
    axes.legend(fontsize=8)


def _draw_scaling(axes: Any, curves: dict[str, dict[int, float]]) -> None:
    for label, by_count in sorted(curves.items()):
        axes.plot(list(by_count), list(by_count.values()), marker="o", label=label)
    counts = sorted({count for by_count in curves.values() for count in by_count})
    axes.set_xticks(counts)
    axes.set_xlabel("processes of the main job")
    axes.set_ylabel("records/s (median of runs)")
    axes.set_ylim(bottom=0)
    axes.set_title("Scaling curve")
    axes.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving-plot-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results", nargs="+", type=Path, help="JSON-lines files written by serving-bench --out"
    )
    parser.add_argument("--out", type=Path, help="the PNG to write")
    parser.add_argument(
        "--table", action="store_true", help="print a Markdown table of the unthrottled runs' medians"
    )
    parser.add_argument(
        "--formats",
        action="store_true",
        help="print a Markdown table of the embedded and call-cost runs' medians, per model format",
    )
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="print the tables of what outlier scoring and explanations cost (docs/benchmarks/monitoring.sh)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="latency against offered rate per delivery (docs/benchmarks/latency.sh): print its table, and "
        "with --out draw it instead of the throughput plot",
    )
    parser.add_argument("--title", default="bytewax-model-serving benchmarks")
    args = parser.parse_args(argv)
    results = read_results(args.results)
    if not results:
        print(f"no benchmark results in {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    if args.table:
        print(table(results))
    if args.formats:
        print(formats_table(results))
    if args.monitoring:
        print(monitoring_table(results))
    if args.latency:
        print(latency_table(results))
    if args.out is not None:
        (plot_latency if args.latency else plot)(results, args.out, args.title)
        print(f"wrote {args.out} from {len(results)} runs")
    elif not (args.table or args.formats or args.monitoring or args.latency):
        parser.error("nothing to do: give --out PLOT.png, --table, --formats, --monitoring or --latency")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
