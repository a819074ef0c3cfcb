"""Recovery: after an abort the flow serves the model it had, and snapshots never carry it per shard."""

from __future__ import annotations

import importlib
import pickle
import sqlite3
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from support.core_runs import (
    AbortOnce,
    FlowRun,
    ScheduledSource,
    at,
    messages,
    sample_records,
    serve_into,
    unbatched,
)

from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.scorers import ScorerCache
from flows.adapters.sources.batched import PollBatches
from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.challenger import user_buckets
from flows.core.context import ServingContext
from flows.core.dataflow import serve
from flows.core.descriptors import CANARY, CHALLENGER, ModelDescriptor, ModelType
from flows.core.explanations import ExplainSettings
from flows.core.model_holder import CaughtUp, ModelHolderLogic
from flows.core.records import DataMessage, RecommenderRecord
from flows.core.routing import ShardBatch
from flows.core.scorer import build_scorer
from flows.core.shard import ShardLogic
from flows.core.shard_messages import ChallengerEnd, Emits, ModelUpdate
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.core.vocabulary import ClosedBy
from flows.moved import MOVED_NAMES
from flows.runtime.app import build_flow
from flows.runtime.settings import Settings

SHARDS = 4


def recoverable_flow(
    data: list, models: list, run: FlowRun, explain: ExplainSettings | None = None
) -> Dataflow:
    flow = Dataflow("recovery")
    data_stream = op.input("data", flow, PollBatches(TestingSource(data, batch_size=5)))
    model_stream = op.input("models", flow, TestingSource(models))
    streams = serve(
        "serve", data_stream, model_stream, run.context, shards=SHARDS, hold_limit=1000, explain=explain
    )
    op.output("results", unbatched("unbatched", streams.results), TestingSink(run.results))
    op.output("events", streams.events, TestingSink(run.events))
    explained = op.flat_map("explained", streams.explanations, lambda batch: batch)
    op.output("explanations", explained, TestingSink(run.explanations))
    return flow


class Asking:
    """An origin that asks for an explanation, as a Kafka origin with the `serving-explain` header does."""

    explanation_requested = True


def test_after_an_abort_a_black_box_models_explanations_keep_their_baseline(tmp_path):
    """A model that does not tell its ids (PMML) is measured against the records each shard explained first:
    that background is in the snapshot, so explanations after the restart have the baselines of before."""
    init_db_dir(tmp_path, 1)
    model = shipped_model(SHIPPED_MODELS_DIR, "1-pmml")
    first, second = sample_records(40), sample_records(40, offset=40)
    pause = TestingSource.PAUSE(timedelta(seconds=0.5))  # let the model in before the data
    asking = [DataMessage(record, time.time_ns(), Asking()) for record in first + second]
    data = [pause, *asking[:40], TestingSource.ABORT(), *asking[40:]]
    run = FlowRun()
    flow = recoverable_flow(data, [model], run, ExplainSettings(fraction=0, background=2))
    recovery = RecoveryConfig(str(tmp_path))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    before = {round(item.explanation.baseline, 9) for item in run.explanations}
    explained_before = len(run.explanations)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    after = {round(item.explanation.baseline, 9) for item in run.explanations[explained_before:]}
    assert explained_before >= 40 and len(run.explanations) >= 80  # every record asked, some replayed
    assert len(before) == SHARDS  # one background, so one baseline, per shard
    assert after <= before


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
    run.context.state.clear()  # what /state shows next must come from the recovery snapshot

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
    [(name, usage)] = [(model["name"], model["usage"]) for model in run.context.state.per_model()]
    assert name == model_v1.model_name and len(first + second) <= usage <= len(run.results)


def test_after_an_abort_the_challenger_keeps_its_role_fraction_and_users(model_v1, model_v2, tmp_path):
    init_db_dir(tmp_path, 1)
    first, second = sample_records(300), sample_records(300, offset=300)
    pause = TestingSource.PAUSE(timedelta(seconds=1))  # let both models in before the data
    data = [pause, *messages(first), TestingSource.ABORT(), *messages(second)]
    canary = replace(model_v2, role=CHALLENGER, mode=CANARY, fraction=0.3)
    run = FlowRun()
    flow = recoverable_flow(data, [model_v1, canary], run)
    recovery = RecoveryConfig(str(tmp_path))

    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    results_before = len(run.results)
    run.events.clear()
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)

    resent = [(event.kind, event.model_name, event.reason) for event in run.events if not event.shard]
    assert resent == [
        ("resent", model_v1.model_name, "restored from recovery"),
        ("resent", model_v2.model_name, "restored from recovery, canary challenger on 30% of users"),
    ]
    restored = [event for event in run.events if event.shard and event.model_name == model_v2.model_name]
    assert restored and {event.kind for event in restored} == {"restored"}  # its window goes on
    after = run.results[results_before:]
    assert after and all(item.result.metadata.errors == "" for item in after)
    # From the restart on, the canary's users get the canary's answers only: they wait for it to load again
    # rather than see the champion (before the abort, records that came before it loaded got the champion).
    users = np.array(sorted({item.result.input_record.user for item in run.results}))
    in_canary = dict(zip(users.tolist(), (user_buckets(users, model_v2.model_name) < 0.3).tolist()))
    for item in after:
        expected = model_v2 if in_canary[item.result.input_record.user] else model_v1
        assert item.result.metadata.model_name == expected.model_name
    assert {item.result.metadata.model_name for item in after} == {model_v1.model_name, model_v2.model_name}
    assert model_v2.model_name in {item.result.metadata.model_name for item in run.results[:results_before]}


def test_a_model_still_being_judged_at_an_abort_is_judged_after_the_restart(model_v1, model_v2, tmp_path):
    """The model source's snapshot has moved past v2's message while v2 was being judged: the restarted
    holder must judge it from its own state, or v2 is lost."""

    def slow_for_v2(descriptor, policy):
        if descriptor.model_name == model_v2.model_name:
            time.sleep(6)  # still being judged when the data source aborts
        return build_scorer(descriptor, policy)

    init_db_dir(tmp_path, 1)
    first, second = sample_records(40), sample_records(40, offset=40)
    # Scheduled sources poll every 10 ms: a sleeping input would hold back the epochs, so their snapshots.
    data = at(0.5, [messages(first)]) + at(2.0, [AbortOnce(), messages(second)])
    models = at(0, [model_v1]) + at(0.8, [model_v2])  # v2 is judged from 0.8 s to 6.8 s
    run = FlowRun(context=ServingContext.create(cache=ScorerCache(AdmissionPolicy(), slow_for_v2)))
    # Both open until 9 s, as a tailed topic: at the end of its input the holder would wait for v2.
    flow = serve_into(run, ScheduledSource(data, open_until=9), ScheduledSource(models, open_until=9))
    recovery = RecoveryConfig(str(tmp_path))

    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=recovery)
    assert ("accepted", model_v2.model_name) not in [(e.kind, e.model_name) for e in run.events]
    results_before = len(run.results)
    run.events.clear()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=recovery)

    flow_events = [(event.kind, event.model_name) for event in run.events if not event.shard]
    assert flow_events == [("resent", model_v1.model_name), ("accepted", model_v2.model_name)]
    assert len(run.results) - results_before >= len(second)  # scored by v1 while v2 is judged again
    swapped = {event.shard for event in run.events if event.kind == "swapped"}
    assert len(swapped) == SHARDS  # and then every shard serves v2


def test_models_kept_from_the_topic_at_start_up_survive_a_restart_during_the_catch_up(model_v1, model_v2):
    """Killed while catching up: what the holder had read of the topic's history is in its snapshot (the
    model source will not read it again), and is judged once the source has caught up after the restart."""
    context = ServingContext.create(AdmissionPolicy())
    holder = ModelHolderLogic(context.cache, context.policy, True, None)
    holder.on_batch([model_v1, model_v2])  # the history so far; no CaughtUp yet
    restored = pickle.loads(pickle.dumps(holder.snapshot()))
    assert [descriptor.model_name for descriptor, _ in restored.startup] == [
        "recommender-v1",
        "recommender-v2",
    ]

    again = ModelHolderLogic(context.cache, context.policy, True, restored)
    outputs, _ = again.on_batch([CaughtUp("models", 1)])
    more, _ = again.on_eof()
    accepted = [item.model_name for item in [*outputs, *more] if getattr(item, "kind", "") == "accepted"]
    assert accepted == [model_v2.model_name]  # the newest, as a fresh start would
    assert again.snapshot().champion.model_name == model_v2.model_name and not again.snapshot().judging


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


# What the flow's stateful steps were called in release 0.1.0: a recovery store keys snapshots by these ids,
# so renaming one would make a restarted flow forget its model, offsets or statistics.
STATEFUL_STEP_IDS_0_1_0 = {
    "embedded": ["serving.data", "serving.models", "serving.serve_model_holder", "serving.serve_shards"],
    "kafka": [
        "serving.kafka_data",
        "serving.kafka_models",
        "serving.serve_model_holder",
        "serving.serve_shards",
    ],
}


def stateful_step_ids(flow: Dataflow) -> list[str]:
    """The ids of the steps that write recovery snapshots: inputs and stateful operators, however nested."""
    found: list[str] = []
    steps = list(flow.substeps)
    while steps:
        step = steps.pop()
        if type(step).__name__ in ("input", "stateful_batch"):
            found.append(step.step_id)
        steps.extend(step.substeps)
    return sorted(found)


# Stateful steps added since (a store without their snapshots starts them afresh).
ADDED_SINCE_0_1_0 = ["serving.serve_drift", "serving.serve_outliers"]


def test_the_main_jobs_stateful_steps_keep_their_ids():
    for mode, settings in (
        ("embedded", Settings()),
        ("kafka", Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))),
    ):
        flow = build_flow(settings, ServingContext.create())
        assert stateful_step_ids(flow) == sorted(STATEFUL_STEP_IDS_0_1_0[mode] + ADDED_SINCE_0_1_0)


def test_snapshots_written_by_release_0_1_0_resume(tmp_path):
    """Snapshots pickled by 0.1.0 (before the package was laid out in subpackages) still restore: the holder
    its model, a shard its model digest, statistics and held records (with their Kafka origin)."""
    with open(Path(__file__).parents[1] / "data" / "snapshots-0.1.0.pickle", "rb") as snapshots:
        restored = pickle.load(snapshots)
    context = ServingContext.create(AdmissionPolicy())
    holder = ModelHolderLogic(context.cache, context.policy, True, restored["serve_model_holder"])
    assert holder.snapshot().champion.model_source_location == "grpc://127.0.0.1:8500/models/recommender"
    assert holder.snapshot().champion.role == "champion" and holder.snapshot().challenger is None
    [held_before] = restored["serve_shards"].held
    shard = ShardLogic(1000, 10_000, context, restored["serve_shards"])
    state = shard.snapshot()
    assert state.challenger is None
    assert (state.shard, state.model_digest, state.model_name) == (
        "shard-003",
        "0123456789abcdef",
        "recommender-v2",
    )
    [(name, usage)] = [(model["name"], model["usage"]) for model in context.state.per_model()]
    assert (name, usage) == ("recommender-v2", 1200)
    outputs, _ = shard.on_eof()  # no model arrives: the held record is answered, not lost
    [(emitted, [held])] = outputs  # one batch of results: the held record's
    assert emitted is Emits.RESULTS
    assert held.result.input_record.products == [3, 5, 8] and held.origin.offset == 4711
    assert held.origin == held_before.origin and type(held.origin).__name__ == "KafkaOrigin"


def pickled_under(module: str, obj: object) -> bytes:
    """`obj` pickled as if its class lived in `module` (protocol 2 names a class by its text path)."""
    cls = obj if isinstance(obj, type) else type(obj)
    data = pickle.dumps(obj, protocol=2)
    return data.replace(
        f"{cls.__module__}\n{cls.__name__}\n".encode(), f"{module}\n{cls.__name__}\n".encode()
    )


@pytest.mark.parametrize("old", ["flows.core.records", "flows.records"])
def test_a_snapshot_naming_a_class_where_it_was_loads_it_from_where_it_is(old):
    """Snapshots written before the descriptors and events left `flows.core.records` name them there (and
    0.1.0's name them in `flows.records`): they load as the classes of the modules that hold them now."""
    descriptor = ModelDescriptor("m", "d", ModelType.ONNX, model_source_location="/m/1", sequence=7)
    data = pickled_under(old, descriptor)
    assert f"{old}\nModelDescriptor\n".encode() in data
    assert pickle.loads(data) == descriptor and type(pickle.loads(data)) is ModelDescriptor
    for name, new in MOVED_NAMES["flows.core.records"].items():
        cls = getattr(importlib.import_module(new), name)
        assert pickle.loads(pickled_under(old, cls)) is cls


@pytest.mark.parametrize("old", ["flows.core.shard", "flows.shard"])
def test_a_pickle_naming_a_shard_message_where_it_was_loads_it_from_where_it_is(model_v1, old):
    """The shard's messages and ShardBatch left `flows.core.shard` (0.1.0's `flows.shard`): a pickle
    that names them there loads them from the modules that hold them now."""
    values = [
        ShardBatch("shard-001", [DataMessage(RecommenderRecord(7, [1, 2]), 5)]),
        ModelUpdate("shard-001", model_v1, 1.5),
        ChallengerEnd("shard-001", "recommender-v2", ClosedBy.RETIRED),
        Emits.REPORT,
    ]
    for value in values:
        if isinstance(value, ShardBatch):  # its pickle names the function that rebuilds it from columns
            named = "_unpickled_batch"
            data = pickle.dumps(value, protocol=2).replace(
                b"flows.core.routing\n_unpickled_batch\n", f"{old}\n{named}\n".encode()
            )
        else:
            named = type(value).__name__
            data = pickled_under(old, value)
        assert f"{old}\n{named}\n".encode() in data
        restored = pickle.loads(data)
        assert type(restored) is type(value) and restored == value
    for name, new in MOVED_NAMES["flows.core.shard"].items():
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_a_name_that_never_was_in_records_is_still_an_attribute_error():
    records = importlib.import_module("flows.core.records")
    with pytest.raises(AttributeError, match="Nothing"):
        getattr(records, "Nothing")  # noqa: B009 (the lookup is what is tested)
