"""Rescaling a running deployment as an operator does: every process stopped with SIGTERM (a rolling update),
the recovery store regrouped with `serving-recovery-store`, the cluster started again with another number of
processes. It resumes with its model, its challenger, its drift monitor and its offsets; counted with
serving-audit: nothing lost, duplicates bounded by what one snapshot interval reads."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from functools import partial

import pytest
import urllib3
from support.jobs import audit_report, recovery_stores, regroup_recovery, start_flow, wait_for
from support.trickle import Trickle

from flows.adapters.sources.generators import shipped_model
from flows.core.records import CHALLENGER, SHADOW
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import create_topics, produce
from flows.testing.loopback import free_ports
from flows.tools.query_state import fetch, merge_lag
from flows.wire.avro import MODEL

SNAPSHOT_INTERVAL_S = 1
TRICKLE_PER_S = 25 / 0.05  # Trickle's nominal rate: 25 records a tick, a tick every 0.05 s
STEPS = (1, 2, 3, 1)
DRIFT_WINDOW = 1000
PARTITIONS = 4
SETTINGS = {
    "SERVING_KAFKA_TAIL": "true",
    "SERVING_DRIFT_REFERENCE": str(DRIFT_WINDOW),
    "SERVING_DRIFT_WINDOW": str(DRIFT_WINDOW),
    "SERVING_CHALLENGER_WINDOW": "100",
}


def states(ports: list[int]) -> list[dict] | None:
    """Every process's /state, or None while one of them does not answer yet."""
    try:
        return [fetch(f"http://127.0.0.1:{port}/state", timeout_s=2) for port in ports]
    except (urllib3.exceptions.HTTPError, RuntimeError):
        return None


def drift_windows(documents: list[dict], model: str) -> int | None:
    """The drift windows of `model` as the process that monitors it says; None before any says."""
    shown = [document["drift"][model]["windows"] for document in documents if model in document["drift"]]
    return max(shown) if shown else None


def challenger_records(documents: list[dict], challenger: str) -> int:
    return sum(
        entry["challenger_records"]
        for document in documents
        for entry in document["challengers"]
        if entry["challenger"] == challenger
    )


def assert_drift_restored(ports: list[int], model: str, windows_before_stop: int) -> None:
    """The drift monitor came back with its windows. Restored, it shows them before it reads a record; a
    monitor that started over would first need a reference, then a window's records for each window, more
    than the backlog of a restart holds once a few windows have passed. The stop came with the lag caught
    up, so the snapshot it resumes from is at most one window behind what was seen."""
    wait_for(lambda: drift_windows(states(ports) or [], model) is not None, "the drift monitor's state", 120)
    restored = drift_windows(states(ports), model)
    assert restored >= windows_before_stop - 1, (
        f"the drift monitor of {model} started over: {restored} windows, {windows_before_stop} before the stop"
    )


def reported_and_moved_on(ports: list[int], challenger: str, champion: str, windows_before: int) -> bool:
    """A challenger report closed in these processes, and the champion's drift monitor closed a window."""
    documents = states(ports)
    return (
        documents is not None
        and challenger_records(documents, challenger) > 0
        and (drift_windows(documents, champion) or 0) > windows_before
        and caught_up(documents)
    )


def caught_up(documents: list[dict]) -> bool:
    """Every data partition read up to what the trickle sent in the last second or so (serving.kafka.lag)."""
    lag = merge_lag(documents)
    return len(lag["partitions"]) == PARTITIONS and lag["total"] <= TRICKLE_PER_S


def start_cluster(bootstrap: str, topics: dict[str, str], stores, ports: list[int], tmp_path, step: int):
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(len(stores)))
    return [
        start_flow(
            bootstrap, topics,
            *(["-i", str(index), "-a", addresses] if len(stores) > 1 else []),
            "-r", str(store), "-s", str(SNAPSHOT_INTERVAL_S), "-b", "0",
            output=tmp_path / f"step-{step}-process-{index}.log",
            SERVING_STATE_PORT=str(ports[index]),
            **SETTINGS,
        )
        for index, store in enumerate(stores)
    ]  # fmt: skip


def stop(jobs: list[subprocess.Popen]) -> None:
    """SIGTERM to every process at once, as a rolling update or `kubectl scale` sends it."""
    for job in jobs:
        job.terminate()
    for job in jobs:
        assert job.wait(timeout=120) == 0


@pytest.mark.slow
def test_a_rescale_from_1_to_2_to_3_to_1_processes_resumes_model_challenger_drift_and_offsets(
    kafka_bootstrap, tmp_path
):
    topics = create_topics(
        kafka_bootstrap, "rescale", ["data", "models", "results", "dead"], partitions=PARTITIONS
    )
    champion = shipped_model(SHIPPED_MODELS_DIR, "1")
    challenger = replace(shipped_model(SHIPPED_MODELS_DIR, "2"), role=CHALLENGER, mode=SHADOW, fraction=1.0)
    produce(
        kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(m)) for m in (champion, challenger)]
    )
    stores = recovery_stores(tmp_path, 1, partitions=3)  # sized for three workers: 1 -> 2 -> 3 -> 1
    trickle = Trickle(kafka_bootstrap, topics["data"]).start()
    drift_before_stop = 0
    try:
        for step, processes in enumerate(STEPS):
            stores = regroup_recovery(stores, processes)
            ports = free_ports(processes)
            jobs = start_cluster(kafka_bootstrap, topics, stores, ports, tmp_path, step)
            if step:
                assert_drift_restored(ports, champion.model_name, drift_before_stop)
            wait_for(
                partial(
                    reported_and_moved_on,
                    ports,
                    challenger.model_name,
                    champion.model_name,
                    drift_before_stop,
                ),
                f"a challenger report, a new drift window and the lag caught up on {processes} process(es)",
                120,
            )
            drift_before_stop = drift_windows(states(ports), champion.model_name)
            stop(jobs)
            outputs = "".join(
                (tmp_path / f"step-{step}-process-{index}.log").read_text() for index in range(processes)
            )
            if step:  # models came from recovery, not from the models topic read again
                assert "accepted" not in outputs, outputs[-3000:]
                assert "restored from recovery" in outputs
    finally:
        trickle.stop()

    stores = regroup_recovery(stores, 1)
    ports = free_ports(1)
    [last] = start_cluster(
        kafka_bootstrap, topics, stores, ports, tmp_path, len(STEPS)
    )  # reads to the end of the topic, then is stopped: every record answered
    assert_drift_restored(ports, champion.model_name, drift_before_stop)
    wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every record answered", 180)
    stop([last])

    report = audit_report(kafka_bootstrap, topics)
    restarts = len(STEPS)
    bound = restarts * TRICKLE_PER_S * SNAPSHOT_INTERVAL_S
    print(
        f"rescale 1 -> 2 -> 3 -> 1 processes, SIGTERM before each step: {report['data_offsets']:,} data offsets, "
        f"{report['lost']} lost, {report['duplicates']:,} duplicated (bound {bound:,.0f}: one snapshot "
        f"interval's records per restart)"
    )
    assert report["data_offsets"] == trickle.delivered
    assert report["lost"] == 0, report["lost_offsets"]
    assert report["duplicates"] <= bound
    assert report["dead_letters"] >= trickle.garbage  # a dead letter is an answer: it may be repeated too
