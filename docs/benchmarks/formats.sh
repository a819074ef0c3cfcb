#!/usr/bin/env bash
# The model formats side by side (docs/formats.md#what-each-format-costs): the shipped v1 as a SavedModel, its
# ONNX twin and the PMML model trained from the same data, in interleaved rounds (the machine is shared and
# noisy: formats measured together compare), each run in a process of its own. Appends each run's JSON line
# to formats.jsonl and prints the table of medians. Needs the PMML extra:
#   pip install -e '.[test]' && bash docs/benchmarks/formats.sh        (ROUNDS=N for more rounds)
set -euo pipefail
cd "$(dirname "$0")"
results=formats.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    versions=(1 1-onnx 1-pmml)
    for shift in 0 1 2; do  # each round starts with the next format
        version=${versions[$(((round + shift) % 3))]}
        serving-bench --scenario embedded --records 100000 --model-version "$version" --out "$results"
        serving-bench --scenario call-cost --model-version "$version" --out "$results"
    done
done
serving-plot-bench "$results" --formats
