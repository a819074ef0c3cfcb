"""A start or a restart with a backlog on the data topic: every record is scored by a model, none gets a
"no model yet" error, none is lost (issue 19, item 1).

The model is on the models topic before the flow starts; 50,000 records wait on the data topic. The data
side could read them far faster than a model loads: the flow must not turn them into errors meanwhile.
The layouts cover 1 and 4 partitions, 1 and 2 processes, fresh starts and restarts from recovery.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support.core_runs import sample_records
from support.jobs import (
    audit_report,
    encoded,
    finished_output,
    recovery_stores,
    start_flow,
    wait_for,
    wait_for_model_snapshot,
)

from flows.testing.local_broker import create_topics, produce
from flows.testing.loopback import free_ports
from flows.wire.avro import MODEL

BACKLOG = 50_000


def holds_a_model(store: Path) -> bool:
    """Whether the recovery store (one process's) has a committed snapshot of the holder with a model."""
    try:
        wait_for_model_snapshot(next(store.glob("part-*.sqlite3")), timeout=0.1)
    except AssertionError:
        return False
    return True


def run_layout(bootstrap, topics, processes: int, stores: list[Path] | None, tail: bool) -> list:
    """The main job as `processes` processes (with recovery if `stores`); the started processes."""
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(processes))
    jobs = []
    for index in range(processes):
        flags = ["-i", str(index), "-a", addresses] if processes > 1 else []
        if stores is not None:
            flags += ["-r", str(stores[index]), "-s", "1", "-b", "0"]
        jobs.append(
            start_flow(
                bootstrap,
                topics,
                *flags,
                SERVING_KAFKA_TAIL=str(tail).lower(),
                SERVING_STATE_PORT="0",
                # Eight shards hold at most 8,000 records before a model: far less than the backlog.
                SERVING_HOLD_LIMIT="1000",
            )
        )
    return jobs


@pytest.mark.parametrize("restart", [False, True], ids=["fresh", "restart"])
@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
@pytest.mark.parametrize("partitions", [1, 4], ids=["1-partition", "4-partitions"])
def test_a_backlog_waiting_at_start_is_scored_by_the_model_not_answered_with_errors(
    kafka_bootstrap, model_v1, tmp_path, partitions, processes, restart
):
    name = f"backlog-{partitions}p{processes}{'r' if restart else 'f'}"
    topics = create_topics(
        kafka_bootstrap, name, ["data", "models", "results", "dead"], partitions=partitions
    )
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    records = encoded(sample_records(BACKLOG + 1_000))
    stores = recovery_stores(tmp_path, processes) if restart else None

    if restart:
        # A first run serves the model and snapshots it; it is killed; the backlog builds up while it is down.
        produce(kafka_bootstrap, topics["data"], records[:1_000])
        first = run_layout(kafka_bootstrap, topics, processes, stores, tail=True)
        try:
            wait_for(lambda: audit_report(kafka_bootstrap, topics)["lost"] == 0, "the first records", 120)
            wait_for(lambda: any(holds_a_model(store) for store in stores), "a snapshot of the model", 60)
        finally:
            for job in first:
                job.send_signal(signal.SIGKILL)
                job.communicate(timeout=30)
        produce(kafka_bootstrap, topics["data"], records[1_000:])
    else:
        produce(kafka_bootstrap, topics["data"], records)

    for job in run_layout(kafka_bootstrap, topics, processes, stores, tail=False):
        finished_output(job)

    report = audit_report(kafka_bootstrap, topics)
    assert report["data_offsets"] == len(records)
    assert report["lost"] == 0, report["lost_offsets"]
    assert report["errors_by_reason"] == {}, report["errors_by_reason"]
    assert report["dead_letters"] == 0
