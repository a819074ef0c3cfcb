"""Rescaling a running deployment as an operator does: every process stopped with SIGTERM (a rolling update),
the recovery store regrouped with `serving-recovery-store`, the cluster started again with another number of
processes. It resumes with its model, its challenger, its drift monitor and its offsets; counted with
serving-audit: nothing lost, and nothing repeated but what each restart had answered past the snapshot it
resumed from (on a quiet machine about one snapshot interval's records; under load the snapshots trail the
answers by more, so the bound is read from the recovery store, not from a clock)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import urllib3
from support.jobs import (
    audit_report,
    recovery_stores,
    regroup_recovery,
    resume_offsets,
    resumed_snapshots,
    start_flow,
    wait_for,
)
from support.trickle import Trickle

from flows.adapters.kafka.headers import SOURCE_PARTITION_HEADER, SOURCE_TIMESTAMP_HEADER, consumed_headers
from flows.adapters.kafka.read_to_end import read_to_end
from flows.adapters.sources.generators import shipped_model
from flows.core.descriptors import CHALLENGER, SHADOW
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import create_topics, produce
from flows.testing.loopback import consecutive_free_ports, free_ports
from flows.tools import audit
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


def assert_drift_restored(ports: list[int], model: str, windows_snapshotted: int) -> None:
    """The drift monitor came back with the windows of the snapshot the restart resumed from. Restored, it
    shows them before it reads a record; a monitor that started over would first need a reference, then a
    window's records for each window."""
    wait_for(lambda: drift_windows(states(ports) or [], model) is not None, "the drift monitor's state", 120)
    restored = drift_windows(states(ports) or [], model)
    assert restored is not None and restored >= windows_snapshotted, (
        f"the drift monitor of {model} started over: {restored} windows, {windows_snapshotted} snapshotted"
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


def caught_up(documents: list[dict], partitions: int = PARTITIONS) -> bool:
    """Every data partition read up to what the trickle sent in the last second or so (serving.kafka.lag)."""
    lag = merge_lag(documents)
    return len(lag["partitions"]) == partitions and lag["total"] <= TRICKLE_PER_S


def serving(ports: list[int]) -> bool:
    documents = states(ports)
    return documents is not None and all(document["shards"] for document in documents)


def caught_up_after(ports: list[int], partitions: int, records: int, trickle: Trickle) -> bool:
    """`records` sent, and every data partition read up to about the last second's (the lag)."""
    documents = states(ports)
    return documents is not None and trickle.delivered >= records and caught_up(documents, partitions)


def start_cluster(
    bootstrap: str, topics: dict[str, str], stores, ports: list[int], tmp_path, step: int, *flags: str
):
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(len(stores)))
    jobs = [
        start_flow(
            bootstrap, topics,
            *(["-i", str(index), "-a", addresses] if len(stores) > 1 else []),
            "-r", str(store), "-s", str(SNAPSHOT_INTERVAL_S), "-b", "0", *flags,
            output=tmp_path / f"step-{step}-process-{index}.log",
            SERVING_STATE_PORT=str(ports[0]),  # each process adds its rank on this host
            **SETTINGS,
        )
        for index, store in enumerate(stores)
    ]  # fmt: skip
    return jobs


def stop(jobs: list[subprocess.Popen]) -> None:
    """SIGTERM to every process at once, as a rolling update or `kubectl scale` sends it."""
    for job in jobs:
        job.terminate()
    for job in jobs:
        assert job.wait(timeout=120) == 0


def snapshot_passed(stores: list, offsets: int) -> bool:
    """Whether the running cluster's snapshots hold data offsets past `offsets` (summed over partitions)."""
    return sum(resume_offsets(stores[0].parent).values()) > offsets


def answered_past_the_snapshot(bootstrap: str, topics: dict[str, str], stores: list) -> tuple[int, int]:
    """After a stop: how many answers so far are of data offsets at or past those the next start resumes
    from (what it may answer again: during a catch-up one snapshot interval answers thousands), and the sum
    of those resume offsets (how far the snapshots got)."""
    resume = resume_offsets(stores[0].parent)
    config = {"bootstrap.servers": bootstrap, "isolation.level": "read_committed"}
    answered = audit.audit(config, topics["data"], topics["results"], topics["dead"]).answers
    repeatable = sum(1 for partition, offset in answered if offset >= resume.get(partition, 0))
    return repeatable, sum(resume.values())


def test_a_rescale_from_1_to_2_to_3_to_1_processes_resumes_model_challenger_drift_and_offsets(
    kafka_bootstrap, tmp_path
):
    topics = create_topics(
        kafka_bootstrap, "rescale", ["data", "models", "results", "dead"], partitions=PARTITIONS
    )
    # The ONNX twins: the rescale is what is tested, and each restart of each process would otherwise import
    # TensorFlow again beside running workers (seconds each).
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    challenger = replace(
        shipped_model(SHIPPED_MODELS_DIR, "2-onnx"), role=CHALLENGER, mode=SHADOW, fraction=1.0
    )
    produce(
        kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(m)) for m in (champion, challenger)]
    )
    stores = recovery_stores(tmp_path, 1, partitions=3)  # sized for three workers: 1 -> 2 -> 3 -> 1
    trickle = Trickle(kafka_bootstrap, topics["data"]).start()
    drift_snapshotted = 0  # the champion's drift windows in the snapshot the next start resumes from
    repeatable = []  # per restart: answers the restart may repeat
    snapshotted = 0
    try:
        for step, processes in enumerate(STEPS):
            stores = regroup_recovery(stores, processes)
            ports = consecutive_free_ports(processes)
            jobs = start_cluster(kafka_bootstrap, topics, stores, ports, tmp_path, step)
            if step:
                assert_drift_restored(ports, champion.model_name, drift_snapshotted)
            wait_for(
                partial(
                    reported_and_moved_on,
                    ports,
                    challenger.model_name,
                    champion.model_name,
                    drift_snapshotted,
                ),
                f"a challenger report, a new drift window and the lag caught up on {processes} process(es)",
                120,
            )
            wait_for(
                partial(snapshot_passed, stores, snapshotted),
                f"a snapshot of data offsets past those {processes} process(es) resumed from",
                120,
            )
            stop(jobs)
            may_repeat, snapshotted = answered_past_the_snapshot(kafka_bootstrap, topics, stores)
            drift_snapshotted = resumed_snapshots(stores[0].parent, "serve_drift")[
                champion.model_name
            ].windows
            repeatable.append(may_repeat)
            outputs = "".join(
                (tmp_path / f"step-{step}-process-{index}.log").read_text() for index in range(processes)
            )
            if step:  # models came from recovery, not from the models topic read again
                assert "accepted" not in outputs, outputs[-3000:]
                assert "restored from recovery" in outputs
    finally:
        trickle.stop()

    stores = regroup_recovery(stores, 1)
    ports = consecutive_free_ports(1)
    [last] = start_cluster(
        kafka_bootstrap, topics, stores, ports, tmp_path, len(STEPS)
    )  # reads to the end of the topic, then is stopped: every record answered
    assert_drift_restored(ports, champion.model_name, drift_snapshotted)
    wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every record answered", 180)
    stop([last])

    report = audit_report(kafka_bootstrap, topics)
    print(
        "rescale 1 -> 2 -> 3 -> 1 processes, SIGTERM before each step: "
        f"{report['data_offsets']:,} data offsets, "
        f"{report['lost']} lost, {report['duplicates']:,} duplicated (bound {sum(repeatable):,}: the answers "
        f"past the snapshot each restart resumed from, {', '.join(f'{n:,}' for n in repeatable)}; "
        f"{TRICKLE_PER_S * SNAPSHOT_INTERVAL_S:,.0f} records are one snapshot interval)"
    )
    assert report["data_offsets"] == trickle.delivered
    assert report["lost"] == 0, report["lost_offsets"]
    assert report["duplicates"] <= sum(repeatable)
    assert report["dead_letters"] >= trickle.garbage  # a dead letter is an answer: it may be repeated too


def wait_per_partition(bootstrap: str, results_topic: str) -> dict[int, list[int]]:
    """Per data partition, each answer's wait: its result's Kafka timestamp minus its record's (ms)."""
    waits: dict[int, list[int]] = {}
    for message in read_to_end({"bootstrap.servers": bootstrap}, results_topic):
        headers = consumed_headers(message)
        partition = int(headers[SOURCE_PARTITION_HEADER])
        waits.setdefault(partition, []).append(message.timestamp()[1] - int(headers[SOURCE_TIMESTAMP_HEADER]))
    return waits


@pytest.mark.parametrize(
    ("partitions", "processes", "workers"), [(3, 1, 2), (5, 2, 2)], ids=["3-on-2-workers", "5-on-4-workers"]
)
def test_partitions_that_do_not_divide_evenly_keep_every_worker_moving(
    kafka_bootstrap, tmp_path, partitions, processes, workers
):
    """Bytewax users report stalls when workers own uneven numbers of partitions (upstream PR 556). With
    recovery on, every partition is answered, and none waits much longer than the others."""
    name = f"balance-{partitions}-{processes}x{workers}"
    topics = create_topics(
        kafka_bootstrap, name, ["data", "models", "results", "dead"], partitions=partitions
    )
    produce(
        kafka_bootstrap,
        topics["models"],
        [(b"recommender", MODEL.encode(shipped_model(SHIPPED_MODELS_DIR, "1-onnx")))],
    )
    stores = recovery_stores(tmp_path, processes, partitions=processes * workers)
    ports = consecutive_free_ports(processes)
    jobs = start_cluster(kafka_bootstrap, topics, stores, ports, tmp_path, 0, "-w", str(workers))
    wait_for(partial(serving, ports), "the champion on every process", 120)  # waits, not start-up, measured
    trickle = Trickle(kafka_bootstrap, topics["data"]).start()  # 25 users a tick: keys on every partition
    try:
        wait_for(partial(caught_up_after, ports, partitions, 5000, trickle), "5,000 records answered", 180)
    finally:
        trickle.stop()
    wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "every record answered", 120)
    stop(jobs)
    waits = wait_per_partition(kafka_bootstrap, topics["results"])
    p99 = {partition: float(np.percentile(values, 99)) for partition, values in sorted(waits.items())}
    print(f"{partitions} partitions on {processes} x {workers} workers, per-partition wait p99 (ms): {p99}")
    assert sorted(waits) == list(range(partitions)), "a partition was never answered"
    # A stalled partition waits for seconds (a snapshot interval or more); the others answer in tens of ms.
    assert max(p99.values()) < 3000, p99
