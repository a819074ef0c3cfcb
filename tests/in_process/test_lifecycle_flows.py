"""The model lifecycle through the flow in this process: signed models across a restart (a promoted champion
keeps serving; turning signing on or rotating keys keeps the restored model serving), and a model
republished under a new name answers under that name."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from support.core_runs import (
    AbortOnce,
    FlowRun,
    ScheduledSource,
    at,
    messages,
    sample_records,
    serve_into,
)
from support.lifecycle import canary, command, signed, trusting

from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.signing import new_private_key
from flows.core.context import ServingContext
from flows.core.descriptors import PROMOTE

SHARDS = 4


def run_twice(
    policies: tuple[AdmissionPolicy, AdmissionPolicy], models: list, data: list, tmp_path
) -> FlowRun:
    """The flow on scheduled `models` and `data` (an `AbortOnce` in it) with recovery, then restarted in a
    new context (nothing loaded) with the second policy; the second run."""
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    until = max(seconds for seconds, _ in models + data) + 0.5
    runs = []
    for policy in policies:
        run = FlowRun(context=ServingContext.create(policy))
        sources = (ScheduledSource(data, open_until=until), ScheduledSource(models, open_until=until))
        run_main(serve_into(run, *sources, shards=SHARDS), epoch_interval=timedelta(milliseconds=50),
                 recovery_config=recovery)  # fmt: skip
        runs.append(run)
    first, second = runs
    assert first.results and not [event for event in first.events if event.kind == "failed"]
    return second


def test_a_signed_promote_keeps_serving_the_promoted_champion_after_a_restart(model_v1, model_v2, tmp_path):
    key = new_private_key()
    experiment = canary(model_v2)
    promote = signed(command(PROMOTE, experiment), key, 3)
    models = at(0, [signed(model_v1, key, 1)]) + at(1.5, [signed(experiment, key, 2)]) + at(3.5, [promote])
    first, second = sample_records(200), sample_records(200, offset=200)
    data = at(5.0, [messages(first)]) + at(5.5, [AbortOnce(), messages(second)])

    restarted = run_twice((trusting(key), trusting(key)), models, data, tmp_path)

    assert not [event.reason for event in restarted.events if event.kind in ("failed", "rejected")]
    assert len(restarted.results) >= len(second)
    assert {item.result.metadata.model_name for item in restarted.results} == {"recommender-v2"}
    assert all(item.result.metadata.errors == "" for item in restarted.results)


@pytest.mark.parametrize("change", ["signing turned on", "keys rotated"])
def test_turning_signing_on_or_rotating_keys_keeps_the_restored_model_serving(
    tmp_path, change, model_v1, model_v2
):
    old_key, new_key = new_private_key(), new_private_key()
    before = AdmissionPolicy() if change == "signing turned on" else trusting(old_key)
    served = model_v1 if change == "signing turned on" else signed(model_v1, old_key, 1)
    # After the restart: an unsigned model, one signed with the old key, and one signed with the new key.
    models = at(0, [served]) + at(
        2.5, [model_v2, signed(model_v2, old_key, 50), signed(model_v2, new_key, 60)]
    )
    first, second = sample_records(100), sample_records(100, offset=100)
    data = at(1.0, [messages(first)]) + at(1.5, [AbortOnce(), messages(second)])

    restarted = run_twice((before, trusting(new_key)), models, data, tmp_path)

    # The restored model answers (before: every shard refused it, and no record was answered) ...
    assert len(restarted.results) >= len(second)
    assert all(item.result.metadata.errors == "" for item in restarted.results)
    answered = {(item.result.input_record.user, tuple(item.result.input_record.products)): item
                for item in restarted.results}  # fmt: skip
    assert {answered[(r.user, tuple(r.products))].result.metadata.model_name for r in second} == {
        "recommender-v1"
    }
    # ... and only the message signed with the key trusted now is taken in.
    verdicts = [
        (event.kind, event.reason) for event in restarted.events if event.kind in ("accepted", "rejected")
    ]
    assert [kind for kind, _ in verdicts] == ["rejected", "rejected", "accepted"]
    assert "not signed" in verdicts[0][1] and "does not verify" in verdicts[1][1]


def test_a_model_republished_under_a_new_name_answers_under_that_name(model_v1):
    renamed = replace(model_v1, model_name="recommender-renamed", description="the same bytes, a new name")
    records = sample_records(50)
    data = at(1.0, [messages(records[:25])]) + at(2.0, [messages(records[25:])])
    run = FlowRun()
    flow = serve_into(run, ScheduledSource(data), ScheduledSource(at(0, [model_v1]) + at(1.3, [renamed])),
                      shards=SHARDS)  # fmt: skip
    run_main(flow, epoch_interval=timedelta(milliseconds=50))
    names = [item.result.metadata.model_name for item in run.results]
    assert names[:25] == ["recommender-v1"] * 25 and names[25:] == ["recommender-renamed"] * 25
    served = {model["name"] for model in run.context.state.per_model()}
    assert served == {"recommender-renamed"}
