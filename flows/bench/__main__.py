"""The benchmark's command line; the scenarios are described in `flows.bench`."""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path

from flows import bench
from flows.adapters.sources.generators import shipped_model
from flows.bench.call_cost import run_call_cost, run_ensemble_cost
from flows.bench.explain_cost import run_explain_cost
from flows.bench.flood import run_model_flood
from flows.bench.in_process import remote_model, run_in_process, run_swap
from flows.bench.kafka import run_kafka_embedded
from flows.bench.kafka_baseline import run_kafka_baseline
from flows.bench.profile import profiled
from flows.bench.start_up import run_start_up
from flows.core.descriptors import CANARY, CHALLENGER, SHADOW, ModelDescriptor
from flows.runtime.settings import Settings

SCENARIOS = (
    "embedded", "kafka-embedded", "kafka-baseline", "swap", "model-flood", "call-cost", "ensemble-cost",
    "explain-cost", "start-up",
    "tfserving-grpc", "tfserving-rest", "v2-grpc", "v2-rest", "tfserving-grpcs", "tfserving-https",
)  # fmt: skip
REMOTE_SCENARIOS = SCENARIOS[9:]


def main() -> None:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-bench", description=bench.__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="embedded")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument(
        "--rate", type=float, default=0, help="offered records/s (default: as fast as possible)"
    )
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers in this process")
    parser.add_argument("--shards", type=int, default=settings.flow.shards)
    parser.add_argument("--batch", type=int, default=1000, help="records per source batch")
    parser.add_argument(
        "--model-version",
        default="1",
        help="a shipped model: 1, 2, their ONNX twins 1-onnx, 2-onnx, or the PMML 1-pmml",
    )
    parser.add_argument(
        "--rounds", type=int, default=300, help="call-cost, explain-cost: calls per batch size"
    )
    parser.add_argument(
        "--via",
        choices=REMOTE_SCENARIOS,
        help="explain-cost: the model behind this local server (a black box over the network)",
    )
    parser.add_argument(
        "--tracing",
        choices=["off", "on"],
        default="off",
        help="in-process scenarios: export every span over OTLP",
    )
    parser.add_argument(
        "--drift",
        choices=["off", "on"],
        default="on",
        help="in-process scenarios: monitor drift, as the main job does by default",
    )
    parser.add_argument(
        "--outliers",
        choices=["off", "on"],
        default="on",
        help="in-process and kafka-embedded: score every record as an outlier or not, as the main job does",
    )
    parser.add_argument(
        "--explain",
        choices=["off", "on"],
        default="on",
        help="in-process and kafka-embedded: explain a share of records (SERVING_EXPLAIN_*), as the main job",
    )
    parser.add_argument(
        "--challenger",
        choices=["off", SHADOW, CANARY],
        default="off",
        help="embedded scenario: run the other shipped version beside the model as a challenger",
    )
    parser.add_argument(
        "--challenger-fraction",
        type=float,
        default=1.0,
        help="the challenger's share of records (shadow) or users (canary); default 1",
    )
    parser.add_argument(
        "--bad-every",
        type=int,
        default=0,
        help="in-process scenarios: give every N-th record a user no model can take (2**63-1); default none",
    )
    parser.add_argument(
        "--bootstrap-servers", help="kafka scenarios: use this broker instead of starting one"
    )
    parser.add_argument("--partitions", type=int, default=1, help="kafka scenarios: data topic partitions")
    parser.add_argument(
        "--processes",
        type=int,
        help="kafka-embedded: run the main job as this many processes of one cluster (pre-loaded topic); "
        "default: the flow in this process",
    )
    parser.add_argument(
        "--delivery",
        choices=("at-least-once", "exactly-once"),
        default="at-least-once",
        help="kafka-embedded: SERVING_KAFKA_DELIVERY",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=1.0,
        help="kafka-embedded in this process: the epoch in seconds (exactly-once commits once per epoch)",
    )
    parser.add_argument(
        "--swap-after",
        type=float,
        default=2.0,
        help="swap and model-flood scenarios: seconds before v2 (the flood) is published",
    )
    parser.add_argument(
        "--flood", type=int, default=40, help="model-flood scenario: model messages that arrive at once"
    )
    parser.add_argument(
        "--then-version",
        help="start-up: publish this shipped model once warm, and time its load while records keep coming",
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        help="start-up: run the main job from this directory (another commit's tree, to compare with)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run under cProfile and add where a record's time goes (us per record, see flows.bench.profile)",
    )
    parser.add_argument(
        "--out", type=Path, help="also append the JSON line to this file (for serving-plot-bench)"
    )
    args = parser.parse_args()
    if args.profile and args.processes:
        parser.error("--profile profiles this process: leave --processes out")
    models_dir = settings.generator.models_dir
    run = partial(_run, args, models_dir)
    result = profiled(run, args.records) if args.profile else run()
    line = json.dumps(result)
    print(line, flush=True)
    if args.out is not None:
        with open(args.out, "a", encoding="utf-8") as results:
            results.write(line + "\n")


def _run(args: argparse.Namespace, models_dir: Path) -> dict:
    """The scenario `args` names, run once (shipped models from `models_dir`): its report."""
    in_process = (
        args.records, args.rate, args.workers, args.shards, args.batch, args.tracing == "on",
        args.drift == "on",
    )  # fmt: skip
    if args.scenario == "embedded":
        model = shipped_model(models_dir, args.model_version)
        return run_in_process(
            args.scenario,
            model,
            *in_process,
            challenger=_challenger(args, models_dir),
            bad_every=args.bad_every,
            outliers=args.outliers == "on",
            explain=args.explain == "on",
        )
    if args.scenario == "call-cost":
        return run_call_cost(shipped_model(models_dir, args.model_version), args.rounds)
    if args.scenario == "explain-cost":
        with ExitStack() as stack:
            model = (
                remote_model(args.via, args.model_version, stack)
                if args.via
                else shipped_model(models_dir, args.model_version)
            )
            return run_explain_cost(model, args.rounds, seed=1)
    if args.scenario == "ensemble-cost":
        return run_ensemble_cost(models_dir, args.rounds)
    if args.scenario == "swap":
        return run_swap(args.records, args.rate, args.swap_after, args.shards, args.batch)
    if args.scenario == "model-flood":
        return run_model_flood(args.records, args.rate, args.flood, args.swap_after, args.shards, args.batch)
    if args.scenario in REMOTE_SCENARIOS:
        with ExitStack() as stack:
            model = remote_model(args.scenario, args.model_version, stack)
            return run_in_process(
                args.scenario,
                model,
                *in_process,
                bad_every=args.bad_every,
                outliers=args.outliers == "on",
                explain=args.explain == "on",
            )
    if args.scenario == "start-up":
        versions = (args.model_version, args.then_version)
        return run_start_up(args.records, args.bootstrap_servers, models_dir, *versions, args.checkout)
    if args.scenario == "kafka-baseline":
        return run_kafka_baseline(args.records, args.bootstrap_servers, args.partitions, args.model_version)
    return run_kafka_embedded(
        args.records,
        args.rate,
        args.bootstrap_servers,
        args.partitions,
        args.model_version,
        args.processes,
        args.delivery,
        args.snapshot_interval,
        outliers=args.outliers == "on",
        explain=args.explain == "on",
    )


def _challenger(args: argparse.Namespace, models_dir: Path) -> ModelDescriptor | None:
    """The other shipped version as the challenger `--challenger` asks for, or None."""
    if args.challenger == "off":
        return None
    version = "2" if args.model_version == "1" else "1"
    model = shipped_model(models_dir, version)
    return replace(model, role=CHALLENGER, mode=args.challenger, fraction=args.challenger_fraction)


if __name__ == "__main__":
    main()
