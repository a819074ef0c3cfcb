"""The serving core on test sources, with one worker and with two."""

from __future__ import annotations

import pickle

import pytest
from support.bad_models import bad_models
from support.core_runs import (
    Turn,
    assert_same_scores,
    at,
    every_shard,
    messages,
    run_core,
    run_in_turns,
    sample_records,
)

from flows.adapters.kafka.data_source import KafkaOrigin
from flows.core.admission.policy import AdmissionPolicy
from flows.core.context import ServingContext
from flows.core.records import DataMessage, DecodeFailure, RecommenderRecord
from flows.core.routing import ShardBatch

WORKERS = [1, 2]


def scores(run, model_name):
    return {
        (
            item.result.input_record.user,
            tuple(item.result.input_record.products),
        ): item.result.model_result.probabilities
        for item in run.by_model()[model_name]
    }


@pytest.mark.parametrize("workers", WORKERS)
def test_model_swap_mid_stream_changes_the_scores(workers, model_v1, model_v2):
    records = sample_records(40)
    run = run_in_turns(
        [
            Turn([model_v1], messages(records), every_shard("swapped", model_v1.model_name, 4)),
            Turn([model_v2], messages(records), every_shard("swapped", model_v2.model_name, 4)),
        ],
        workers=workers,
    )

    assert run.errors() == []
    by_model = run.by_model()
    assert sorted(by_model) == [model_v1.model_name, model_v2.model_name]
    assert len(by_model[model_v1.model_name]) == len(by_model[model_v2.model_name]) == len(records)
    before, after = scores(run, model_v1.model_name), scores(run, model_v2.model_name)
    assert before.keys() == after.keys()
    changed = sum(before[key] != after[key] for key in before)
    assert changed == len(records)
    swaps = [event for event in run.events if event.kind == "swapped"]
    assert len(swaps) == 2 * 4  # every model reached every one of the 4 shards
    assert {event.shard for event in swaps} == {"shard-000", "shard-001", "shard-002", "shard-003"}


@pytest.mark.parametrize("workers", WORKERS)
def test_records_before_the_first_model_are_held_then_scored(workers, model_v1):
    records = sample_records(30)
    run = run_core(at(0, messages(records)), at(1, [model_v1]), workers=workers)
    assert run.errors() == []
    assert len(run.by_model()[model_v1.model_name]) == len(records)
    assert all(
        len(item.result.model_result.probabilities) == len(item.result.input_record.products)
        for item in run.results
    )


@pytest.mark.parametrize("workers", WORKERS)
def test_hold_overflow_is_reported_not_dropped(workers, model_v1):
    records = sample_records(10)
    run = run_core(at(0, messages(records)), at(1, [model_v1]), workers=workers, shards=1, hold_limit=4)
    assert len(run.results) == len(records)
    overflow = run.errors()
    assert len(overflow) == 6 and all("hold buffer is full" in error for error in overflow)
    assert len(run.by_model()[model_v1.model_name]) == 4


@pytest.mark.parametrize("workers", WORKERS)
def test_input_ending_before_any_model_is_reported(workers):
    records = sample_records(5)
    run = run_core(at(0, messages(records)), [], workers=workers)
    assert len(run.results) == len(records)
    assert all("input ended before any model" in error for error in run.errors())
    assert len(run.errors()) == len(records)


@pytest.mark.parametrize("workers", WORKERS)
def test_bad_models_leave_the_previous_model_serving(workers, model_v1, tmp_path):
    rejects = bad_models(model_v1, tmp_path)
    undecodable = DecodeFailure("ModelDescriptor", "not Avro single-object encoded", b"junk")
    records = sample_records(20)

    def all_judged(run) -> bool:
        return sum(event.kind == "rejected" for event in list(run.events)) >= len(rejects) + 1

    # A slot for every load, so none waits and is superseded by the next (that has a test of its own in
    # test_model_lifecycle): each bad model is judged, with its own reason.
    policy = AdmissionPolicy(max_loads=len(rejects) + 1)
    run = run_in_turns(
        [
            Turn([model_v1], [], every_shard("swapped", model_v1.model_name, 4)),
            Turn([descriptor for descriptor, _ in rejects] + [undecodable], messages(records), all_judged),
        ],
        workers=workers,
        context=ServingContext.create(policy),
    )

    assert run.errors() == []
    assert len(run.by_model()[model_v1.model_name]) == len(records)
    rejected = [event for event in run.events if event.kind == "rejected"]
    assert len(rejected) == len(rejects) + 1
    # Cheap refusals come at once, loads that fail later: match the events by model name.
    by_name = {event.model_name: event.reason for event in rejected}
    for descriptor, reason in rejects:
        assert reason in by_name[descriptor.model_name]
        assert "still serving 'recommender-v1'" in by_name[descriptor.model_name]
    assert "undecodable ModelDescriptor" in by_name[""]
    assert not [event for event in run.events if event.kind == "failed"]


def test_a_bad_record_gets_an_error_and_its_batch_still_scores(model_v1):
    from flows.core.records import RecommenderRecord

    records = sample_records(10) + [RecommenderRecord(5, [100_000])]  # product far outside the model's range
    run = run_core(at(1, messages(records)), at(0, [model_v1]), shards=1)
    assert len(run.results) == len(records)
    errors = run.errors()
    assert len(errors) == 1
    assert (
        "product 100000 (user 5) is outside what model 'recommender-v1' takes: products 0 to 299" in errors[0]
    )


@pytest.mark.parametrize("workers", WORKERS)
def test_a_process_loads_each_model_once_and_results_do_not_depend_on_workers(workers, model_v1):
    records = sample_records(200)
    run = run_core(at(0, messages(records)), at(0, [model_v1]), workers=workers, shards=8)
    assert run.context.cache.builds == 1
    assert run.errors() == []
    assert len(run.results) == len(records)
    single = run_core(at(0, messages(records)), at(0, [model_v1]), workers=1, shards=8)
    assert scores(run, model_v1.model_name) == scores(single, model_v1.model_name)


@pytest.mark.parametrize("workers", WORKERS)
def test_results_are_the_same_whether_records_come_one_by_one_or_in_one_batch(workers, model_v1):
    records = sample_records(500)
    one_by_one = run_core(at(0.3, messages(records)), at(0, [model_v1]), workers=workers)
    in_one_batch = run_core(at(0.3, [messages(records)]), at(0, [model_v1]), workers=workers)
    assert one_by_one.errors() == in_one_batch.errors() == []
    assert len(one_by_one.results) == len(in_one_batch.results) == len(records)
    assert_same_scores(
        [
            (
                item.result.input_record.user,
                tuple(item.result.input_record.products),
                tuple(item.result.model_result.probabilities),
            )
            for item in one_by_one.results
        ],
        [
            (
                item.result.input_record.user,
                tuple(item.result.input_record.products),
                tuple(item.result.model_result.probabilities),
            )
            for item in in_one_batch.results
        ],
    )


def test_a_shard_batch_pickles_whole_for_a_shard_in_another_process():
    messages = [
        DataMessage(
            RecommenderRecord(1, [2, 3]), 5, KafkaOrigin("data", 0, 7, 9, (("traceparent", b"00-a"),))
        ),
        DataMessage(RecommenderRecord(2, [], "other"), 6, None),
    ]
    batch = ShardBatch("shard-001", messages)
    copy = pickle.loads(pickle.dumps(batch))
    assert copy == batch and copy.messages[0].origin.headers == (("traceparent", b"00-a"),)
