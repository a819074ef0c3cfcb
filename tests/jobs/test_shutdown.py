"""Stopping one process of a two-process cluster (a rolling update, an eviction) ends it promptly, loses
nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from support.core_runs import sample_records
from support.jobs import REPO, audit_report, encoded, start_flow, wait_for

from flows.testing.local_broker import create_topics, produce
from flows.testing.loopback import free_ports
from flows.wire.avro import MODEL


def test_sigterm_to_one_process_ends_it_promptly_and_a_restart_loses_nothing(
    kafka_bootstrap, model_v1, tmp_path
):
    topics = create_topics(kafka_bootstrap, "stop", ["data", "models", "results", "dead"], partitions=4)
    produce(kafka_bootstrap, topics["models"], [(b"m", MODEL.encode(model_v1))])
    # One recovery partition per process, on its own volume, as the StatefulSet's init container makes them.
    scratch = tmp_path / "init"
    scratch.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(scratch), "2"], check=True)
    directories = []
    for index in range(2):
        directory = tmp_path / f"recovery-{index}"
        directory.mkdir()
        (scratch / f"part-{index}.sqlite3").rename(directory / f"part-{index}.sqlite3")
        directories.append(directory)
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(2))

    def start(index: int) -> subprocess.Popen:
        flags = ["-i", str(index), "-a", addresses, "-r", str(directories[index]), "-s", "1", "-b", "0"]
        return start_flow(kafka_bootstrap, topics, *flags, SERVING_KAFKA_TAIL="true")

    batches = [sample_records(1000, offset=1000 * index) for index in range(3)]
    processes = [start(0), start(1)]
    try:
        produce(kafka_bootstrap, topics["data"], encoded(batches[0]))
        wait_for(
            lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "the first records answered", 120
        )
        produce(kafka_bootstrap, topics["data"], encoded(batches[1]))  # in flight when the signal comes
        processes[0].send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = processes[0].communicate(timeout=30)
        stopped_in = time.monotonic() - started
        assert stopped_in < 10, f"the signalled process took {stopped_in:.1f} s to exit"
        assert processes[0].returncode == 0, output[-2000:]
        assert "one process of a cluster cannot drain alone" in output
        processes[1].communicate(timeout=60)  # its peer gone, the other process ends too

        produce(kafka_bootstrap, topics["data"], encoded(batches[2]))
        processes = [start(0), start(1)]  # what Kubernetes does: both pods come back
        try:
            wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every offset answered", 90)
        except AssertionError:
            for process in processes:
                process.send_signal(signal.SIGKILL)
            raise AssertionError(
                "\n====\n".join(p.communicate()[0][-3000:] for p in processes)
                + str(audit_report(kafka_bootstrap, topics))
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.communicate(timeout=60)
    report = audit_report(kafka_bootstrap, topics)
    print(f"audit after the faults: {report}")  # the figures the README's fault table quotes
    assert report["data_offsets"] == 3000 and report["lost"] == 0, report
    assert report["duplicates"] <= 2000, report


def test_sigterm_ends_a_process_stuck_in_a_model_call_within_its_drain_bound(tmp_path):
    """The worker is inside ONNX Runtime (minutes per call), where no Python signal handler runs; the
    signal thread ends the process SERVING_DRAIN_TIMEOUT after the signal, saying why."""
    output = tmp_path / "stuck.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "SERVING_DRAIN_TIMEOUT": "2"}
    with open(output, "w") as sink:
        job = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "support.stuck_in_a_model"],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: "scoring" in output.read_text() or job.poll() is not None, "the call started", 120)
        assert job.poll() is None, output.read_text()[-3000:]
        time.sleep(1)  # well inside the call
        job.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        job.wait(timeout=60)
        ended_in = time.monotonic() - signalled
    finally:
        job.kill()
        job.wait()
    said = output.read_text()
    assert job.returncode == 5, said[-3000:]
    assert "did not drain within 2 s of SIGTERM (SERVING_DRAIN_TIMEOUT)" in said
    assert ended_in < 30, f"{ended_in:.0f} s after the signal"
    assert "scores" not in said  # it never finished the call: the bound, not the model, ended it
