#!/usr/bin/env bash
# Latency against offered load, both deliveries (docs/benchmarks.md#latency): kafka-embedded (ONNX v1) on one
# partition at 1,000 to 20,000 records/s offered, at-least-once and exactly-once (default 1 s epoch, 0.1 s
# commit interval) interleaved in each round, each run in a process of its own; appends each run's JSON line
# to latency.jsonl, prints the table of medians and draws latency.png:
#   pip install -e '.[test,plot]' && bash docs/benchmarks/latency.sh        (ROUNDS=N for more rounds)
set -euo pipefail
cd "$(dirname "$0")"
results=latency.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    for rate in 1000 2500 5000 10000 20000; do
        for delivery in at-least-once exactly-once; do
            serving-bench --scenario kafka-embedded --records $((rate * 6)) --rate "$rate" --delivery "$delivery" \
                --model-version 1-onnx --out "$results"
        done
    done
done
serving-plot-bench "$results" --latency --out latency.png
