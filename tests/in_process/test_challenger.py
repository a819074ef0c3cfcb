"""Challenger models: shadow and canary beside the champion, promote and retire, with 1 and 2 workers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from support.core_runs import Turn, at, every_shard, holder_judging_by, messages, run_core, run_in_turns

from flows.adapters.scorers import ScorerCache
from flows.adapters.sources.generators import generated_records
from flows.core.admission.descriptor_checks import experiment_refusal
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.signing import new_private_key, raw_public_key, sign, verify
from flows.core.challenger import ChallengerSettings, merge_reports, top_k_agreement, user_buckets
from flows.core.context import ServingContext
from flows.core.descriptors import CANARY, CHALLENGER, PROMOTE, RETIRE, SHADOW, ModelDescriptor, ModelType
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.model_holder import CaughtUp, HolderState
from flows.core.records import DataMessage, RecommenderRecord
from flows.core.scorer import build_scorer
from flows.core.vocabulary import EventKind
from flows.wire.avro import MODEL, REPORT

WORKERS = [1, 2]
SETTINGS = ChallengerSettings(window=10_000, top_k=5)


def challenger(model: ModelDescriptor, mode: str, fraction: float = 1.0) -> ModelDescriptor:
    return replace(model, role=CHALLENGER, mode=mode, fraction=fraction)


def command(name: str, which: str) -> ModelDescriptor:
    return ModelDescriptor(name, "", ModelType.UNKNOWN, command=which)


def records(count: int, seed: int = 7) -> list[RecommenderRecord]:
    return list(generated_records(seed, count))


def numbered(records_: list[RecommenderRecord]) -> list[DataMessage]:
    """Messages whose origin is their position, so every result says which record it answers."""
    return [replace(message, origin=index) for index, message in enumerate(messages(records_))]


def in_batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def alone(model: ModelDescriptor, records_: list[RecommenderRecord]) -> dict[int, list[float]]:
    """The scores `model` gives each record when it serves alone, by record position."""
    scorer = build_scorer(model, AdmissionPolicy())
    try:
        return {
            index: scorer.score(
                np.full(len(record.products), record.user, np.float32),
                np.asarray(record.products, np.float32),
            ).tolist()
            for index, record in enumerate(records_)
        }
    finally:
        scorer.close()


# --- choosing users -------------------------------------------------------------------------------------


def test_user_buckets_are_sticky_uniform_and_salted():
    users = np.arange(20_000)
    buckets = user_buckets(users, "recommender-v2")
    assert np.array_equal(buckets, user_buckets(users.copy(), "recommender-v2"))  # sticky
    assert ((buckets >= 0) & (buckets < 1)).all()
    for fraction in (0.05, 0.25, 0.5, 0.9):
        assert abs((buckets < fraction).mean() - fraction) < 0.015
    other = user_buckets(users, "recommender-v3") < 0.25
    overlap = ((buckets < 0.25) & other).mean()
    assert abs(overlap - 0.25 * 0.25) < 0.01  # another challenger draws its own users
    assert user_buckets(np.array([-5, 2**62]), "x").shape == (2,)  # any long user id


def test_top_k_agreement_per_record():
    # Two records: 3 pairs ranked in opposite orders, and 2 pairs ranked alike.
    a = np.array([0.9, 0.8, 0.1, 0.3, 0.7])
    b = np.array([0.1, 0.8, 0.9, 0.2, 0.6])
    counts = np.array([3, 2])
    assert top_k_agreement(a, b, counts, 1).tolist() == [0.0, 1.0]
    assert top_k_agreement(a, b, counts, 2).tolist() == [0.5, 1.0]  # {0, 1} against {2, 1}
    assert top_k_agreement(a, a, counts, 5).tolist() == [1.0, 1.0]


# --- descriptors -----------------------------------------------------------------------------------------


def test_experiment_fields_are_checked(model_v2):
    assert experiment_refusal(challenger(model_v2, SHADOW, 0.5)) is None
    assert experiment_refusal(command("recommender-v2", PROMOTE)) is None
    problems = {
        "role": replace(model_v2, role="boss"),
        "mode": replace(model_v2, role=CHALLENGER, mode="ghost"),
        "zero": challenger(model_v2, CANARY, 0.0),
        "over": challenger(model_v2, CANARY, 1.5),
        "nan": challenger(model_v2, SHADOW, math.nan),
        "champion mode": replace(model_v2, mode=SHADOW),
        "command": command("x", "delete"),
        "command with model": replace(model_v2, command=RETIRE),
    }
    for label, descriptor in problems.items():
        assert experiment_refusal(descriptor), label


def test_experiment_fields_and_reports_round_trip_through_avro(model_v2):
    for descriptor in (challenger(model_v2, CANARY, 0.25), command("recommender-v2", RETIRE), model_v2):
        assert MODEL.decode(MODEL.encode(descriptor)) == descriptor
    report = ChallengerReport("b", "a", SHADOW, 0.5, "shard-001", 3, "promoted", 100, 50, 1, 49, 300, 5, 0.8,
                              0.05, 1.5, 1.25, 1_700_000_000_000, 1_700_000_001_000)  # fmt: skip
    assert REPORT.decode(REPORT.encode(report)) == report


def test_a_signature_covers_the_experiment(model_v2):
    key = new_private_key()
    trusted = [raw_public_key(key.public_key())]
    signed = sign(challenger(model_v2, CANARY, 0.1), key)
    assert verify(signed, trusted) is None
    assert verify(replace(signed, fraction=1.0), trusted)  # a canary on 10% replayed on everyone
    assert verify(replace(signed, role="champion", mode="", fraction=1.0), trusted)  # replayed as champion
    promote = sign(command("recommender-v2", PROMOTE), key)
    assert verify(promote, trusted) is None
    assert verify(replace(promote, command=RETIRE), trusted)
    # A plain champion signs what it signed before challengers existed, so its old signatures hold.
    assert verify(sign(model_v2, key), trusted) is None


# --- in the dataflow -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("workers", "fraction"), [(1, 1.0), (2, 1.0), (1, 0.5)])
def test_a_shadow_challenger_never_answers_and_compares_as_the_two_models_alone(
    workers, fraction, model_v1, model_v2
):
    data_records = records(600)
    data = at(1.5, in_batches(numbered(data_records), 50))
    models = at(0, [model_v1]) + at(0.5, [challenger(model_v2, SHADOW, fraction)])
    run = run_core(data, models, workers=workers, challengers=SETTINGS)

    assert run.errors() == []
    assert sorted(item.origin for item in run.results) == list(range(len(data_records)))  # each once
    assert {item.result.metadata.model_name for item in run.results} == {model_v1.model_name}
    v1, v2 = alone(model_v1, data_records), alone(model_v2, data_records)
    for item in run.results:
        assert np.allclose(item.result.model_result.probabilities, v1[item.origin], atol=1e-5)

    # The reports (closed when the input ended) compare the sampled users' records, as the models alone would.
    assert {report.closed_by for report in run.reports} == {"ended"}
    merged = merge_reports(run.reports)
    users = np.array([record.user for record in data_records])
    sampled = np.flatnonzero(user_buckets(users, model_v2.model_name) < fraction).tolist()
    assert merged.records == len(data_records)
    assert merged.challenger_records == merged.compared_records == len(sampled)
    assert merged.challenger_errors == 0
    pairs = [(np.array(v1[i]), np.array(v2[i])) for i in sampled]
    expected_diff = np.concatenate([abs(a - b) for a, b in pairs]).mean()
    counts = np.array([len(a) for a, _ in pairs])
    expected_agreement = top_k_agreement(
        np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]), counts, 5
    ).mean()
    assert merged.mean_abs_diff == pytest.approx(expected_diff, abs=1e-4)
    assert merged.top_k_agreement == pytest.approx(expected_agreement, abs=0.01)
    assert 0.05 < merged.mean_abs_diff and merged.top_k_agreement < 0.9  # the two models do differ
    shown = run.context.state.challengers()
    assert shown[0]["challenger"] == model_v2.model_name and shown[0]["challenger_records"] == len(sampled)


@pytest.mark.parametrize("workers", WORKERS)
def test_a_canary_answers_its_fraction_of_users_always_the_same_ones(workers, model_v1, model_v2):
    data_records = records(3000, seed=11)
    data = at(1.5, in_batches(numbered(data_records), 100))
    models = at(0, [model_v1]) + at(0.5, [challenger(model_v2, CANARY, 0.3)])
    run = run_core(data, models, workers=workers, challengers=SETTINGS)

    assert run.errors() == []
    assert sorted(item.origin for item in run.results) == list(range(len(data_records)))
    by_user: dict[int, set[str]] = {}
    for item in run.results:
        by_user.setdefault(item.result.input_record.user, set()).add(item.result.metadata.model_name)
    assert all(len(models_) == 1 for models_ in by_user.values())  # sticky
    users = np.array(sorted(by_user))
    in_canary = dict(zip(users.tolist(), (user_buckets(users, model_v2.model_name) < 0.3).tolist()))
    for user, models_ in by_user.items():
        assert models_ == {model_v2.model_name if in_canary[user] else model_v1.model_name}
    share = sum(item.result.metadata.model_name == model_v2.model_name for item in run.results) / len(
        run.results
    )
    assert abs(share - 0.3) < 0.05
    v1, v2 = alone(model_v1, data_records), alone(model_v2, data_records)
    for item in run.results:
        expected = v2 if item.result.metadata.model_name == model_v2.model_name else v1
        assert np.allclose(item.result.model_result.probabilities, expected[item.origin], atol=1e-5)
    merged = merge_reports(run.reports)
    assert merged.challenger_records == sum(
        item.result.metadata.model_name == model_v2.model_name for item in run.results
    )


@pytest.mark.parametrize("workers", WORKERS)
def test_promote_and_retire_swap_roles_without_losing_or_repeating_a_record(workers, model_v1, model_v2):
    data_records = records(2000, seed=3)
    batches = in_batches(numbered(data_records), 25)

    def retired_everywhere(run) -> bool:
        closed = {r.shard for r in list(run.reports) if (r.challenger, r.closed_by) == (v1, "retired")}
        return len(closed) >= 4

    v1, v2 = model_v1.model_name, model_v2.model_name
    turns = [
        Turn([model_v1], batches[:12], every_shard("swapped", v1, 4)),  # records 0-299
        Turn([challenger(model_v2, SHADOW)], batches[12:30], every_shard("challenging", v2, 4)),
        Turn([command(v2, PROMOTE)], batches[30:46], every_shard("swapped", v2, 4)),  # from record 750
        Turn([challenger(model_v1, CANARY, 0.5)], batches[46:66], every_shard("challenging", v1, 4)),
        Turn([command(v1, RETIRE)], batches[66:], retired_everywhere),  # from record 1650
    ]
    run = run_in_turns(turns, workers=workers, challengers=SETTINGS)

    assert run.errors() == []
    assert sorted(item.origin for item in run.results) == list(range(len(data_records)))  # none lost or twice
    flow_events = [(event.kind, event.model_name) for event in run.events if not event.shard]
    assert flow_events == [
        ("accepted", model_v1.model_name),
        ("accepted", model_v2.model_name),
        ("promoted", model_v2.model_name),
        ("accepted", model_v1.model_name),
        ("retired", model_v1.model_name),
    ]
    answered = {item.origin: item.result.metadata.model_name for item in run.results}
    early, late = [answered[i] for i in range(200)], [answered[i] for i in range(1900, 2000)]
    assert set(early) == {model_v1.model_name}  # before the promotion: the champion v1 only
    assert set(late) == {model_v2.model_name}  # after the retirement: the promoted v2 only
    middle = {answered[i] for i in range(1300, 1550)}
    assert middle == {model_v1.model_name, model_v2.model_name}  # the canary answered some users
    closed = {(report.challenger, report.closed_by) for report in run.reports}
    assert (model_v2.model_name, "promoted") in closed and (model_v1.model_name, "retired") in closed


def test_commands_for_another_model_are_rejected(model_v1, model_v2):
    data = at(1.0, [numbered(records(50))])
    models = at(0, [model_v1]) + at(0.2, [command(model_v2.model_name, PROMOTE), command("nobody", RETIRE)])
    models += at(0.3, [challenger(model_v2, SHADOW), replace(model_v1, role="boss")])
    run = run_core(data, models, challengers=SETTINGS)
    rejected = [event for event in run.events if event.kind == "rejected"]
    assert [event.model_name for event in rejected] == [model_v2.model_name, "nobody", model_v1.model_name]
    assert "the challenger is none" in rejected[0].reason and "unknown role" in rejected[2].reason
    assert {item.result.metadata.model_name for item in run.results} == {model_v1.model_name}


class _Throwing:
    """A scorer that passed its probe and then fails every call."""

    source = "test:throwing"
    input_bounds = None

    def __init__(self, inner) -> None:
        self.inner = inner

    def score(self, users, products):
        raise RuntimeError("challenger exploded")

    def close(self) -> None:
        self.inner.close()


def throwing_cache() -> ServingContext:
    def build(descriptor, policy):
        scorer = build_scorer(descriptor, policy)
        return _Throwing(scorer) if "broken" in descriptor.model_name else scorer

    return ServingContext.create(cache=ScorerCache(AdmissionPolicy(), build))


@pytest.mark.parametrize("mode", [SHADOW, CANARY])
def test_a_challenger_that_throws_never_touches_the_champions_results(mode, model_v1, model_v2):
    data_records = records(400, seed=5)
    broken = replace(challenger(model_v2, mode, 0.5), model_name="recommender-broken")
    data = at(1.5, in_batches(numbered(data_records), 40))
    run = run_core(
        data, at(0, [model_v1]) + at(0.5, [broken]), context=throwing_cache(), challengers=SETTINGS
    )

    assert run.errors() == []
    assert sorted(item.origin for item in run.results) == list(range(len(data_records)))
    assert {item.result.metadata.model_name for item in run.results} == {model_v1.model_name}
    v1 = alone(model_v1, data_records)
    for item in run.results:
        assert np.allclose(item.result.model_result.probabilities, v1[item.origin], atol=1e-5)
    merged = merge_reports(run.reports)
    users = np.array([record.user for record in data_records])
    in_experiment = int((user_buckets(users, broken.model_name) < 0.5).sum())
    assert merged.challenger_errors == in_experiment > 0


# --- the model holder ------------------------------------------------------------------------------------


def holder_verdicts(values: list) -> tuple[list[tuple[EventKind, str]], HolderState]:
    """What a fresh holder that waits for catch-up makes of `values` read from the models topic."""
    holder = holder_judging_by(AdmissionPolicy(), True, None)
    outputs, _ = holder.on_batch(values)
    more, _ = holder.on_eof()
    events = [(item.kind, item.model_name) for item in [*outputs, *more] if isinstance(item, ModelEvent)]
    return events, holder.snapshot()


def test_at_start_up_the_topic_history_is_replayed_commands_included(model_v1, model_v2):
    # The challenger was promoted: the flow starts with it as champion, and no challenger.
    history = [model_v1, challenger(model_v2, SHADOW), command(model_v2.model_name, PROMOTE)]
    events, state = holder_verdicts([*history, CaughtUp("models", 1)])
    assert events == [("accepted", model_v2.model_name)]
    assert state.champion.model_name == model_v2.model_name and state.champion.role == "champion"
    assert state.challenger is None

    # A canary still running: the champion first, then the canary with its fraction.
    history = [model_v2, challenger(model_v1, CANARY, 0.2)]
    events, state = holder_verdicts([*history, CaughtUp("models", 1)])
    assert events == [("accepted", model_v2.model_name), ("accepted", model_v1.model_name)]
    assert (state.challenger.model_name, state.challenger.mode, state.challenger.fraction) == (
        model_v1.model_name,
        CANARY,
        0.2,
    )

    # Retired: nothing of it is loaded.
    history = [model_v1, challenger(model_v2, SHADOW), command(model_v2.model_name, RETIRE)]
    events, state = holder_verdicts([*history, CaughtUp("models", 1)])
    assert events == [("accepted", model_v1.model_name)] and state.challenger is None


def test_a_challenger_without_a_champion_is_rejected(model_v2):
    holder = holder_judging_by(AdmissionPolicy(), False, None)
    outputs, _ = holder.on_batch([challenger(model_v2, SHADOW)])
    more, _ = holder.on_eof()
    [event] = [item for item in [*outputs, *more] if isinstance(item, ModelEvent)]
    assert event.kind == "rejected" and "needs a champion" in event.reason
    assert holder.snapshot() == HolderState()
