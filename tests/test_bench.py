"""The benchmark command runs its scenarios end to end and reports what it measured (not how fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.jobs import REPO


@pytest.mark.parametrize(
    ("scenario", "options"),
    [("embedded", []), ("tfserving-https", []), ("embedded", ["--challenger", "shadow"])],
)
def test_a_benchmark_scores_every_record_and_prints_its_figures(scenario, options):
    done = subprocess.run(
        [sys.executable, "-m", "flows.bench", "--scenario", scenario, "--records", "3000", *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
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
    done = subprocess.run(
        [sys.executable, "-m", "flows.bench", "--records", "3000", "--bad-every", "500", "--drift", "off"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["records"], figures["errors"], figures["bad_every"]) == (3000, 6, 500)


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
    done = subprocess.run(
        [sys.executable, "-m", "flows.bench", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    options = dict(zip(arguments[::2], arguments[1::2]))
    assert figures["scenario"] == options["--scenario"] and figures["records"] == int(options["--records"])
    assert figures["records_per_s"] > 0 and 0 <= figures["p50_ms"] <= figures["p99_ms"]
    assert figures["partitions"] == int(options.get("--partitions", 1))
    assert figures.get("processes") == (int(options["--processes"]) if "--processes" in options else None)
