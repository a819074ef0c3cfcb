#!/usr/bin/env bash
# What each runtime costs (docs/benchmarks.md#runtimes-loaded-on-demand), TensorFlow against ONNX, interleaved
# in each round, each run in a process of its own; appends each run's JSON line to runtimes.jsonl:
# - start-up: the main job from its start to its first result, and its resident memory once 20,000 records
#   are answered; ONNX v1, TensorFlow v1, ONNX v1 then TensorFlow v1 published while records keep coming,
#   and ONNX v1 from BEFORE (a checkout of the commit before runtimes loaded on demand, when it is given);
# - embedded and kafka-embedded (the main job, 1 partition): records/s and p50/p99 per batch.
#   pip install -e '.[test]' && BEFORE=/path/to/older/checkout bash docs/benchmarks/runtimes.sh
set -euo pipefail
cd "$(dirname "$0")"
results=runtimes.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    for version in 1-onnx 1; do
        serving-bench --scenario start-up --records 20000 --model-version "$version" --out "$results"
    done
    serving-bench --scenario start-up --records 20000 --model-version 1-onnx --then-version 1 --out "$results"
    if [ -n "${BEFORE:-}" ]; then
        serving-bench --scenario start-up --records 20000 --model-version 1-onnx --checkout "$BEFORE" \
            --out "$results"
    fi
    for version in 1-onnx 1; do
        serving-bench --scenario embedded --records 100000 --model-version "$version" --out "$results"
        serving-bench --scenario kafka-embedded --records 100000 --processes 1 --model-version "$version" \
            --out "$results"
    done
done
