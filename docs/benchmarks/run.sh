#!/usr/bin/env bash
# Reruns the benchmark set the README's plot and docs/benchmarks.md show, in interleaved rounds (the machine
# is shared and noisy: scenarios measured together compare; across sessions they may not), appends each run's
# JSON line to results.jsonl, prints the table of medians and redraws plot.png. Needs the test extra (broker,
# model servers) and matplotlib:
#   pip install -e '.[test]' && bash docs/benchmarks/run.sh        (ROUNDS=N for more rounds)
set -euo pipefail
cd "$(dirname "$0")"
results=results.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    serving-bench --scenario embedded --records 100000 --out "$results"
    for partitions in 1 2 4; do  # the flow and the hand-written loop, side by side
        for scenario in kafka-embedded kafka-baseline; do
            serving-bench --scenario "$scenario" --records 100000 --partitions "$partitions" --out "$results"
        done
    done
    for processes in 1 2; do  # the main job as a cluster of one and of two processes
        serving-bench --scenario kafka-embedded --records 100000 --partitions 2 --processes "$processes" --out "$results"
    done
    for scenario in tfserving-grpc tfserving-rest v2-grpc v2-rest; do
        serving-bench --scenario "$scenario" --records 50000 --out "$results"
    done
    for rate in 1000 2500 5000 10000; do
        for scenario in embedded kafka-embedded; do
            serving-bench --scenario "$scenario" --records $((rate * 5)) --rate "$rate" --out "$results"
        done
    done
done
serving-plot-bench "$results" --out plot.png --table
