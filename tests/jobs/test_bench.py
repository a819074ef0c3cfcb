"""The benchmark command runs its scenarios end to end and reports what it measured (not how fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.jobs import REPO


def bench(*arguments: str, **environment: str) -> dict:
    """Run `python -m flows.bench ARGUMENTS` (with these SERVING_* variables); the JSON line it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.bench", *arguments],
        cwd=REPO,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("scenario", "options"),
    [("embedded", []), ("tfserving-https", []), ("embedded", ["--challenger", "shadow"])],
)
def test_a_benchmark_scores_every_record_and_prints_its_figures(scenario, options):
    figures = bench("--scenario", scenario, "--records", "3000", *options)
    assert (figures["scenario"], figures["records"], figures["errors"]) == (scenario, 3000, 0)
    assert figures["records_per_s"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
    if scenario != "embedded":
        assert figures["source"].startswith("tfserving+https://127.0.0.1:")
        assert figures["model_calls"] >= 3000 / figures["source_batch"]
    if options:  # the challenger (v2) scored beside v1: at most one extra call per batch
        assert figures["challenger"] == "shadow challenger on 100% of records"
        assert 0 < figures["challenger_calls"] <= figures["model_calls"]
        assert figures["challenger_ms_per_record"] > 0


def test_a_benchmark_with_bad_records_answers_them_with_errors():
    figures = bench("--records", "3000", "--bad-every", "500", "--drift", "off")
    assert (figures["records"], figures["errors"], figures["bad_every"]) == (3000, 6, 500)


def test_the_shipped_pmml_model_runs_in_the_formats_benchmarks():
    figures = bench("--scenario", "embedded", "--records", "3000", "--model-version", "1-pmml")
    assert (figures["source"], figures["records"], figures["errors"]) == ("embedded:pmml", 3000, 0)
    assert figures["rss_mb"] > 0 and 0 < figures["call_p50_ms"] <= figures["call_p99_ms"]
    figures = bench("--scenario", "call-cost", "--model-version", "1-pmml", "--rounds", "20")
    assert figures["source"] == "embedded:pmml"
    assert all(figures[f"call_ms_batch_{size}"] > 0 for size in (1, 100, 1000))


def test_the_embedded_benchmark_counts_its_explanations_and_none_when_they_are_off():
    figures = bench("--records", "3000", "--model-version", "1-onnx", SERVING_EXPLAIN_FRACTION="0.02")
    assert figures["explain"] == "on" and figures["explained"] > 0 and figures["explain_calls"] > 0
    assert figures["explain_ms_per_explained"] > 0
    figures = bench("--records", "3000", "--model-version", "1-onnx", "--explain", "off", "--outliers", "off",
                    SERVING_EXPLAIN_FRACTION="0.02")  # fmt: skip
    assert (figures["explain"], figures["outliers"], figures["explained"]) == ("off", "off", 0)


@pytest.mark.parametrize("via", [[], ["--via", "tfserving-grpc"]], ids=["in-process", "black-box-server"])
def test_the_explain_cost_benchmark_times_one_and_sixteen_explained_records(via):
    figures = bench("--scenario", "explain-cost", "--model-version", "1", "--rounds", "5", *via)
    assert figures["neighbours"] == (not via)  # a model behind a server shows no tables
    assert all(figures[f"ms_per_explained_{asking}_records"] > 0 for asking in (1, 16))


def test_the_ensemble_cost_benchmark_times_one_composed_call_against_a_call_per_member():
    figures = bench("--scenario", "ensemble-cost", "--rounds", "20")
    for size in (1, 100, 1000):
        assert figures[f"composed_ms_batch_{size}"] > 0 and figures[f"separate_ms_batch_{size}"] > 0


def test_the_model_flood_benchmark_reports_what_the_flood_cost():
    figures = bench("--scenario", "model-flood", "--records", "3000", "--rate", "1000", "--flood", "8",
                    "--swap-after", "0.5")  # fmt: skip
    assert (figures["records"], figures["errors"], figures["flood"]) == (3000, 0, 8)
    assert 1 <= figures["loads_started"] <= 1 + 4 and figures["most_loads_at_once"] <= 2
    assert figures["accepted"] >= 1 and figures["accepted"] + figures["rejected"] == 8
    assert figures["peak_rss_mb"] > 0 and figures["peak_children"] <= 2


KAFKA_RUNS = {
    "offered load": ["--scenario", "kafka-embedded", "--records", "2000", "--rate", "2000"],
    "two processes": [
        "--scenario",
        "kafka-embedded",
        "--records",
        "3000",
        "--partitions",
        "2",
        "--processes",
        "2",
    ],
    "baseline": ["--scenario", "kafka-baseline", "--records", "3000", "--partitions", "2"],
}


@pytest.mark.parametrize("arguments", KAFKA_RUNS.values(), ids=KAFKA_RUNS.keys())
def test_a_kafka_benchmark_answers_every_record_through_a_broker(arguments):
    figures = bench(*arguments)
    options = dict(zip(arguments[::2], arguments[1::2]))
    assert figures["scenario"] == options["--scenario"] and figures["records"] == int(options["--records"])
    assert figures["records_per_s"] > 0 and 0 <= figures["p50_ms"] <= figures["p99_ms"]
    assert figures["partitions"] == int(options.get("--partitions", 1))
    assert figures.get("processes") == (int(options["--processes"]) if "--processes" in options else None)


def test_the_start_up_benchmark_times_the_main_job_to_its_first_result_and_a_second_models_load():
    figures = bench(
        "--scenario", "start-up", "--records", "2000", "--model-version", "1-onnx", "--then-version", "2-onnx"
    )
    assert (figures["model"], figures["then_model"]) == ("recommender-v1-onnx", "recommender-v2-onnx")
    assert figures["first_result_s"] > 0 and figures["then_first_result_s"] > 0
    assert figures["records_per_s"] > 0 and figures["answered_meanwhile"] >= 0
    # The ONNX main job's own process, warm: without TensorFlow (about 790 MB) in it.
    assert 50 < figures["warm_rss_mb"] < 400 and 50 < figures["then_rss_mb"] < 400
