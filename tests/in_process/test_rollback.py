"""A new champion that turns bad in service goes back, on each shard, to the champion it replaced, with an
event saying why; a shard remembers it, so after a restart the model holder's re-send brings back the
champion it went back to (flows.core.probation)."""

from __future__ import annotations

from support.core_runs import at, messages, run_core, sample_records
from support.hostile_onnx import fails_in_service

from flows.adapters.scorers import ScorerCache
from flows.adapters.sources.generators import shipped_model
from flows.core.admission.policy import AdmissionPolicy
from flows.core.context import ServingContext
from flows.core.descriptors import ModelDescriptor, ModelType
from flows.core.probation import MIN_RECORDS, RollbackSettings
from flows.core.routing import shard_keys
from flows.core.shard import ShardLogic, ShardState
from flows.core.shard_messages import ModelUpdate
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.core.vocabulary import EventKind

SHARDS = 4


def test_a_champion_that_fails_in_service_is_rolled_back_on_every_shard():
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    failing = ModelDescriptor("fails-in-service", "", ModelType.ONNX, fails_in_service())
    records = sample_records(4000)
    data = [(0.3 + index * 0.002, message) for index, message in enumerate(messages(records))]
    run = run_core(data, at(0, [champion]) + at(1.5, [failing]), shards=SHARDS)

    accepted = [e for e in run.events if e.kind == EventKind.ACCEPTED and e.model_name == failing.model_name]
    assert accepted, [str(e) for e in run.events]  # it passed admission: the probe and the trial
    rolled = [event for event in run.events if event.kind == EventKind.ROLLED_BACK]
    assert sorted(event.shard for event in rolled) == shard_keys(SHARDS), [str(e) for e in run.events]
    for event in rolled:
        assert (event.model_name, event.previous_model) == (champion.model_name, failing.model_name)
        assert (
            "answers on this shard were errors" in event.reason
            and "SERVING_ROLLBACK_ERROR_RATE" in event.reason
        )
    assert len(run.results) == len(records)
    by_failing = [item for item in run.results if item.result.metadata.model_name == failing.model_name]
    assert by_failing, "the failing model never answered"
    assert len(run.errors()) < len(records) / 4, f"{len(run.errors())} errors"
    tail = run.results[-500:]
    assert {item.result.metadata.model_name for item in tail} == {champion.model_name}
    assert not [item for item in tail if item.result.metadata.errors]
    print(f"rollback: {len(by_failing)} records answered by the failing model, {len(run.errors())} errors")


def test_a_shard_restored_after_a_rollback_loads_the_champion_it_went_back_to():
    champion = shipped_model(SHIPPED_MODELS_DIR, "1-onnx")
    failing = ModelDescriptor("fails-in-service", "", ModelType.ONNX, fails_in_service())
    context = ServingContext.create(cache=ScorerCache(AdmissionPolicy()))
    state = ShardState("shard-0", champion.digest, champion.model_name, rolled_back=(failing.digest,))
    shard = ShardLogic(1000, 10_000, context, state, rollback=RollbackSettings())

    shard.on_batch([ModelUpdate("shard-0", failing, 0.0, fallback=champion)])  # the holder's re-send
    assert shard.incoming is not None and shard.incoming[0].descriptor == champion
    shard.on_eof()
    assert shard.state.model_digest == champion.digest and shard.scorer is not None

    shard.on_batch([ModelUpdate("shard-0", failing, 0.0, fallback=champion)])  # sent again: stays out
    assert shard.incoming is None and shard.state.model_digest == champion.digest


def test_probation_needs_enough_answers_and_ends():
    settings = RollbackSettings(records=500)
    from flows.core.probation import Probation

    probation = Probation(fallback=None, fallback_digest="d", fallback_name="old")
    assert probation.verdict(object(), MIN_RECORDS - 1, MIN_RECORDS - 1, 10, 1.0, settings) is None
    assert "errors" in (probation.verdict(object(), 1, 1, 10, 1.0, settings) or "")
    fine = Probation(fallback=None, fallback_digest="d", fallback_name="old")
    assert fine.verdict(object(), 500, 10, 10, 1.0, settings) is None and fine.served(settings)
