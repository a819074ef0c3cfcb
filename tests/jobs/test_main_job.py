"""The main job as users run it: `python -m bytewax.run flows.serving`, in worker and process layouts,
and killed with SIGKILL then restarted from its recovery directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.core_runs import assert_same_scores
from support.jobs import start_job

from flows.adapters.sources.generators import generated_records, partition_share
from flows.testing.loopback import free_ports

RECORDS = 3000
PARTITIONS = 2


def job_env(output_dir: Path, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SERVING_RECORDS=str(RECORDS),
        SERVING_RECORD_RATE="0",
        SERVING_GENERATOR_PARTITIONS=str(PARTITIONS),
        SERVING_MODEL_INTERVAL="3600",
        SERVING_CONSOLE_EVERY="0",
        SERVING_OUTPUT_DIR=str(output_dir),
    )
    env.update(settings)
    return env


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def read_results(output_dir: Path) -> list[dict]:
    """Complete lines only: a running job may be half-way through writing the last one."""
    return [
        json.loads(line)
        for path in sorted(output_dir.glob("results-*.jsonl"))
        for line in path.open()
        if line.endswith("\n")
    ]


def canonical(results: list[dict]) -> list[tuple]:
    return sorted(
        (
            result["inputRecord"]["user"],
            tuple(result["inputRecord"]["products"]),
            tuple(result["modelResult"]["probabilities"]),
            result["modelResultMetadata"]["modelName"],
            result["modelResultMetadata"]["errors"],
        )
        for result in results
    )


def expected_inputs(records: int, seed: int = 42) -> Counter:
    inputs: Counter = Counter()
    for partition in range(PARTITIONS):
        for record in generated_records(seed, partition_share(records, PARTITIONS, partition), partition):
            inputs[(record.user, tuple(record.products))] += 1
    return inputs


def test_results_are_the_same_with_one_worker_two_workers_and_two_processes(tmp_path):
    one, two, procs = tmp_path / "w1", tmp_path / "w2", tmp_path / "p2"
    finish(start_job(job_env(one), "-w", "1"))
    finish(start_job(job_env(two), "-w", "2"))
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(2))
    jobs = [start_job(job_env(procs), "-i", str(index), "-a", addresses) for index in range(2)]
    for job in jobs:
        finish(job)

    baseline = canonical(read_results(one))
    assert len(baseline) == RECORDS
    assert Counter((user, products) for user, products, *_ in baseline) == expected_inputs(RECORDS)
    assert {model for *_, model, _ in baseline} == {"recommender-v1"}
    assert all(errors == "" for *_, errors in baseline)
    assert_same_scores(canonical(read_results(two)), baseline)
    assert_same_scores(canonical(read_results(procs)), baseline)
    assert len(list(procs.glob("results-*.jsonl"))) == 2  # both processes scored a share


def test_sigkill_and_restart_loses_no_record_and_keeps_the_model(tmp_path):
    records, rate, snapshot_s = 15_000, 3000, 1
    recovery, output = tmp_path / "recovery", tmp_path / "out"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    env = job_env(output, SERVING_RECORDS=str(records), SERVING_RECORD_RATE=str(rate))
    flags = ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]

    first = start_job(env, *flags)
    deadline = time.monotonic() + 60
    while len(read_results(output)) < records // 4:
        assert first.poll() is None and time.monotonic() < deadline, "first run ended early"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first_output, _ = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    scored_before = len(read_results(output))
    assert "accepted" in first_output and scored_before < records

    second_output = finish(start_job(env, *flags))
    assert "resent: restored from recovery" in second_output
    assert "accepted" not in second_output  # the model came back from recovery, not the model stream

    results = read_results(output)
    seen = Counter((r["inputRecord"]["user"], tuple(r["inputRecord"]["products"])) for r in results)
    expected = expected_inputs(records)
    missing = expected - seen
    assert not missing, f"{sum(missing.values())} records have no result"
    assert all(r["modelResultMetadata"]["errors"] == "" for r in results)
    assert {r["modelResultMetadata"]["modelName"] for r in results} == {"recommender-v1"}
    duplicates = len(results) - records
    assert duplicates <= rate * snapshot_s * 2 + 1000, (
        f"{duplicates} duplicates for a {snapshot_s}s snapshot interval"
    )


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_unbounded_run_stops_cleanly_on_a_signal(tmp_path, signal_number):
    env = job_env(tmp_path, SERVING_RECORDS="0", SERVING_RECORD_RATE="500")
    job = start_job(env)
    deadline = time.monotonic() + 60
    while not read_results(tmp_path):
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    job.send_signal(signal_number)
    output = finish(job, timeout=30)
    assert "stopping after the records in flight" in output
    assert "Traceback" not in output


def test_the_embedded_default_schedule_crosses_formats(tmp_path):
    """Its default schedule: TensorFlow v1 champion, the ONNX twin of v2 as its shadow, promoted; TensorFlow
    v1 as a canary of the ONNX champion, retired."""
    env = job_env(tmp_path, SERVING_RECORDS="4000", SERVING_RECORD_RATE="400", SERVING_MODEL_INTERVAL="0.5")
    output = finish(start_job(env))
    for line in (
        "model 'recommender-v2-onnx' accepted",
        "as shadow challenger on 100% of records beside 'recommender-v1'",
        "model 'recommender-v2-onnx' promoted (replacing 'recommender-v1')",
        "as canary challenger on 25% of users beside 'recommender-v2-onnx'",
        "model 'recommender-v1' retired: the champion 'recommender-v2-onnx' answers alone",
    ):
        assert line in output, output[-3000:]
    sources = {result["modelResultMetadata"]["source"] for result in read_results(tmp_path)}
    assert "embedded:savedmodel" in sources and "embedded:onnx" in sources, sources
