#!/usr/bin/env bash
# What outlier scoring and explanations cost (docs/observability.md#what-it-costs): the flow with both on (the
# main job's defaults) against both off, in interleaved rounds (the machine is shared and noisy: runs compared
# are made together), each run in a process of its own; then what one explained record costs, in process and
# behind a model server. Appends each run's JSON line to monitoring.jsonl and prints the tables of medians:
#   pip install -e '.[test]' && bash docs/benchmarks/monitoring.sh        (ROUNDS=N for more rounds)
set -euo pipefail
cd "$(dirname "$0")"
results=monitoring.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    states=(on off)
    for shift in 0 1; do  # each round starts with the other state
        state=${states[$(((round + shift) % 2))]}
        both=(--outliers "$state" --explain "$state")
        for version in 1 1-onnx; do
            serving-bench --scenario embedded --records 100000 --model-version "$version" "${both[@]}" --out "$results"
        done
        serving-bench --scenario kafka-embedded --records 50000 --model-version 1-onnx "${both[@]}" --out "$results"
        serving-bench --scenario kafka-embedded --records 50000 --rate 5000 --model-version 1-onnx "${both[@]}" \
            --out "$results"
    done
done
for version in 1 1-onnx 1-pmml; do
    serving-bench --scenario explain-cost --model-version "$version" --out "$results"
done
for via in tfserving-grpc v2-grpc; do
    serving-bench --scenario explain-cost --model-version 1 --via "$via" --out "$results"
done
serving-plot-bench "$results" --monitoring
