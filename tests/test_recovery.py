"""Recovery: after an abort the flow serves the model it had, and snapshots never carry it per shard."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import FlowRun, messages, sample_records

from flows.dataflow import serve
from flows.serving_state import SERVING_STATE

SHARDS = 4


def recoverable_flow(data: list, models: list, run: FlowRun) -> Dataflow:
    flow = Dataflow("recovery")
    data_stream = op.input("data", flow, TestingSource(data, batch_size=5))
    model_stream = op.input("models", flow, TestingSource(models))
    streams = serve("serve", data_stream, model_stream, shards=SHARDS, hold_limit=1000, cache=run.cache)
    op.output("results", streams.results, TestingSink(run.results))
    op.output("events", streams.events, TestingSink(run.events))
    return flow


def test_after_an_abort_the_model_is_restored_without_the_model_stream(model_v1, tmp_path):
    init_db_dir(tmp_path, 1)
    first, second = sample_records(40), sample_records(40, offset=40)
    pause = TestingSource.PAUSE(timedelta(seconds=0.5))  # let the model in before the data
    data = [pause, *messages(first), TestingSource.ABORT(), *messages(second)]
    run = FlowRun()
    flow = recoverable_flow(data, [model_v1], run)
    recovery = RecoveryConfig(str(tmp_path))

    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert [event.kind for event in run.events if not event.shard] == ["accepted"]
    results_before = len(run.results)
    run.events.clear()
    SERVING_STATE.clear()  # what /state shows next must come from the recovery snapshot

    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)  # resumes from the snapshot
    flow_events = [(event.kind, event.model_name) for event in run.events if not event.shard]
    assert flow_events == [("resent", model_v1.model_name)]  # the model stream sent nothing new
    after = run.results[results_before:]
    assert after, "the resumed execution produced no results"
    assert all(item.result.metadata.model_name == model_v1.model_name for item in after)
    assert all(item.result.metadata.errors == "" for item in after)
    seen = {(item.result.input_record.user, tuple(item.result.input_record.products)) for item in run.results}
    assert seen == {(record.user, tuple(record.products)) for record in first + second}  # at-least-once
    # Statistics survive: usage counts the records scored before the abort too (a record replayed after
    # the restart may count twice; without the snapshot only the second run's records would count).
    [(name, usage)] = [(model["name"], model["usage"]) for model in SERVING_STATE.per_model()]
    assert name == model_v1.model_name and len(first + second) <= usage <= len(run.results)


def test_snapshots_hold_the_model_once_not_per_shard_per_epoch(model_v1, tmp_path):
    init_db_dir(tmp_path, 1)
    data = [TestingSource.PAUSE(timedelta(seconds=0.3)), *messages(sample_records(300))]
    run = FlowRun()
    run_main(
        recoverable_flow(data, [model_v1], run),
        epoch_interval=timedelta(milliseconds=20),
        recovery_config=RecoveryConfig(str(tmp_path)),
    )
    assert len(run.results) == 300
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as db:
        rows = db.execute("SELECT step_id, state_key, snap_epoch, length(ser_change) FROM snaps").fetchall()
    model_size = len(model_v1.model_bytes)
    shard_rows = [row for row in rows if row[0] == "recovery.serve_shards"]
    holder_rows = [row for row in rows if row[0] == "recovery.serve_model_holder"]
    assert len({row[1] for row in shard_rows}) == SHARDS
    assert max(row[3] for row in shard_rows) < model_size / 50, "a shard snapshot carries the model"
    assert len(holder_rows) == 1 and holder_rows[0][3] > model_size  # written once, in its epoch
