#!/usr/bin/env bash
# What exactly-once costs (docs/benchmarks.md#exactly-once): visible throughput of 100,000 pre-loaded records
# on 4 partitions, at-least-once against exactly-once in interleaved pairs (each round starts with the other),
# then the visible latency at an offered 5,000 records/s for commit intervals from 0.05 s to one per epoch;
# each run in a process of its own, appended to exactly-once.jsonl:
#   pip install -e '.[test]' && bash docs/benchmarks/exactly-once.sh        (ROUNDS=N for more rounds)
set -euo pipefail
cd "$(dirname "$0")"
results=exactly-once.jsonl
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round" >&2
    deliveries=(at-least-once exactly-once)
    for shift in 0 1; do
        delivery=${deliveries[$(((round + shift) % 2))]}
        serving-bench --scenario kafka-embedded --records 100000 --partitions 4 --model-version 1-onnx \
            --delivery "$delivery" --out "$results"
    done
done
for round in $(seq "${ROUNDS:-3}"); do
    for interval in 0.05 0.1 0.25 100; do  # 100: longer than the run's epochs, so one commit per epoch
        SERVING_KAFKA_COMMIT_INTERVAL=$interval serving-bench --scenario kafka-embedded --records 50000 \
            --rate 5000 --model-version 1-onnx --delivery exactly-once --out "$results"
    done
done
