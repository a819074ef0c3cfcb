"""The model lifecycle at its edges (issue 19): signing across promotes, restarts and key changes; replays
of old signed messages; one model under many spellings; floods of models; names that identify the model."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace

from support.core_runs import (
    holder_judging_by,
)
from support.lifecycle import canary, command, signed, trusting

from flows.adapters.scorers import ScorerCache
from flows.core.admission.policy import AdmissionPolicy
from flows.core.admission.signing import new_private_key, sign
from flows.core.descriptors import PROMOTE, RETIRE, ModelDescriptor, ModelType
from flows.core.events import ModelEvent
from flows.core.model_holder import CaughtUp, HolderState, ModelHolderLogic
from flows.core.scorer import build_scorer
from flows.core.shipped import SHIPPED_MODELS_DIR

SHARDS = 4


def settle(holder: ModelHolderLogic, outputs: list) -> None:
    """Wait for the holder's loads and collect its verdicts, as its notifications would."""
    while holder.pending:
        for candidate in list(holder.pending):
            candidate.load.join()
        more, _ = holder.on_notify()
        outputs.extend(more)


def feed(holder: ModelHolderLogic, *messages_in_turn: ModelDescriptor) -> list[tuple[str, str, str]]:
    """Each message in its own batch, its loads settled before the next: (kind, model, reason) of events."""
    outputs: list = []
    for message in messages_in_turn:
        more, _ = holder.on_batch([message])
        outputs.extend(more)
        settle(holder, outputs)
    return [(item.kind, item.model_name, item.reason) for item in outputs if isinstance(item, ModelEvent)]


def kinds(events: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(kind, name) for kind, name, _ in events]


# --- freshness: replays and downgrades --------------------------------------------------------------------


def test_a_replayed_old_signed_descriptor_cannot_downgrade_the_champion(model_v1, model_v2):
    key = new_private_key()
    holder = holder_judging_by(trusting(key), False, None)
    v1, v2 = signed(model_v1, key, 100), signed(model_v2, key, 200)
    events = feed(holder, v1, v2, v1)  # the last: the bytes of the old v1 message, produced again
    assert kinds(events) == [("accepted", "recommender-v1"), ("accepted", "recommender-v2"),
                             ("rejected", "recommender-v1")]  # fmt: skip
    assert "replay or downgrade refused: sequence 100 is not newer than 200" in events[-1][2]
    assert holder.snapshot().champion.model_name == "recommender-v2"

    # A deliberate rollback is a new message, signed now: it wins.
    assert kinds(feed(holder, signed(model_v1, key, 300))) == [("accepted", "recommender-v1")]


def test_an_old_signed_retire_cannot_end_a_new_experiment(model_v1, model_v2):
    key = new_private_key()
    holder = holder_judging_by(trusting(key), False, None)
    experiment = canary(model_v2)
    retire = signed(command(RETIRE, experiment), key, 30)
    events = feed(holder, signed(model_v1, key, 10), signed(experiment, key, 20), retire,
                  signed(experiment, key, 40), retire)  # fmt: skip
    assert kinds(events)[-3:] == [("retired", "recommender-v2"), ("accepted", "recommender-v2"),
                                  ("rejected", "recommender-v2")]  # fmt: skip
    assert "not newer than 40" in events[-1][2]
    assert holder.snapshot().challenger.model_name == "recommender-v2"


def test_signed_commands_name_their_target_and_unsigned_old_signatures_are_refused(model_v1, model_v2):
    key = new_private_key()
    holder = holder_judging_by(trusting(key), False, None)
    experiment = canary(model_v2)
    untargeted = signed(
        ModelDescriptor(experiment.model_name, "", ModelType.UNKNOWN, command=PROMOTE), key, 3
    )
    other_model = replace(command(PROMOTE, experiment), target_digest=model_v1.digest)
    no_sequence = sign(replace(model_v1, description="signed before freshness", sequence=0), key)
    no_sequence = replace(no_sequence, sequence=0, signature=key.sign(_message_without_sequence(no_sequence)))
    events = feed(holder, signed(model_v1, key, 1), signed(experiment, key, 2), untargeted,
                  signed(other_model, key, 4), no_sequence)  # fmt: skip
    reasons = [reason for kind, _, reason in events if kind == "rejected"]
    assert "must name its target's digest" in reasons[0]
    assert f"({model_v1.digest}): the challenger is 'recommender-v2' ({experiment.digest})" in reasons[1]
    assert "carries no sequence" in reasons[2]
    assert holder.snapshot().challenger is not None  # neither command acted


def _message_without_sequence(descriptor: ModelDescriptor) -> bytes:
    from flows.core.admission.signing import signed_message

    return signed_message(replace(descriptor, sequence=0))


def test_the_freshness_marks_survive_a_restart(model_v1, model_v2):
    key = new_private_key()
    cache = ScorerCache(trusting(key))
    holder = ModelHolderLogic(cache, cache.policy, False, None)
    v1 = signed(model_v1, key, 100)
    feed(holder, v1, signed(model_v2, key, 200))
    restarted = ModelHolderLogic(cache, cache.policy, False, _pickled(holder.snapshot()))
    events = feed(restarted, v1)
    assert kinds(events) == [("resent", "recommender-v2"), ("rejected", "recommender-v1")]
    assert "not newer than 200" in events[1][2]


def _pickled(state: HolderState) -> HolderState:
    import pickle

    return pickle.loads(pickle.dumps(state))


def test_an_expired_signed_message_is_refused(model_v1):
    key = new_private_key()
    holder = holder_judging_by(trusting(key), False, None)
    expired = sign(replace(model_v1, sequence=5, expires_at=int(time.time() * 1000) - 1), key)
    events = feed(holder, expired)
    assert kinds(events) == [("rejected", "recommender-v1")] and "expired at" in events[0][2]


def test_without_trusted_keys_unsigned_operation_is_unchanged(model_v1, model_v2):
    holder = holder_judging_by(AdmissionPolicy(), False, None)
    assert kinds(feed(holder, model_v1, model_v2, model_v1)) == [
        ("accepted", "recommender-v1"), ("accepted", "recommender-v2"), ("accepted", "recommender-v1")
    ]  # fmt: skip


# --- signing across promotes, restarts, fresh deployments and key changes ---------------------------------


def test_a_fresh_deployment_replaying_a_signed_history_ends_on_the_promoted_champion(model_v1, model_v2):
    key = new_private_key()
    experiment = canary(model_v2)
    history = [
        signed(model_v1, key, 1),
        signed(experiment, key, 2),
        signed(command(PROMOTE, experiment), key, 3),
    ]
    holder = holder_judging_by(trusting(key), True, None)
    outputs, _ = holder.on_batch([*history, CaughtUp("models", 1)])
    settle(holder, outputs)
    accepted = [
        item.model_name for item in outputs if isinstance(item, ModelEvent) and item.kind == "accepted"
    ]
    assert accepted == ["recommender-v2"]
    assert holder.snapshot().champion.model_name == "recommender-v2"


def test_a_model_refused_for_its_signature_is_not_remembered_against_its_content(model_v2):
    key = new_private_key()
    cache = ScorerCache(trusting(key))
    holder = ModelHolderLogic(cache, cache.policy, False, None)
    events = feed(holder, model_v2, signed(model_v2, key, 7))
    assert kinds(events) == [("rejected", "recommender-v2"), ("accepted", "recommender-v2")]
    # Past the holder, a model is the flow's own: a shard's load of the promoted (re-described) champion
    # is not refused for a signature that no longer covers it.
    promoted = replace(signed(canary(model_v2), key, 8), role="champion", mode="", fraction=1.0)
    cache.acquire(promoted)


# --- bounded model work and identity ----------------------------------------------------------------------


def test_one_model_under_many_spellings_of_its_location_is_loaded_once(model_v1):
    root = SHIPPED_MODELS_DIR
    spellings = [f"{root}/1", f"{root}//1/", f"{root}/./1", f"{root}/2/../1", f"file://{root}/1",
                 f"file://{root}//./1//"]  # fmt: skip
    located = [ModelDescriptor(f"recommender-v1-{index}", "", ModelType.TENSORFLOWSAVED, None, spelling)
               for index, spelling in enumerate(spellings * 5)]  # fmt: skip
    cache = ScorerCache(AdmissionPolicy())
    holder = ModelHolderLogic(cache, cache.policy, False, None)
    outputs, _ = holder.on_batch(located)
    settle(holder, outputs)
    assert cache.builds == 1
    assert holder.snapshot().champion.model_name == located[-1].model_name


def test_a_flood_of_models_runs_at_most_two_loads_and_loads_only_the_newest_of_the_waiting(
    tmp_path, model_v1
):
    copies = []
    for index in range(20):
        directory = tmp_path / f"m{index}"
        shutil.copytree(SHIPPED_MODELS_DIR / "1", directory)
        copies.append(ModelDescriptor(f"flood-{index}", "", ModelType.TENSORFLOWSAVED, None, str(directory)))
    release = threading.Event()

    def held_build(descriptor, policy):
        release.wait(30)  # every load in flight until the whole flood has arrived
        return build_scorer(descriptor, policy)

    cache = ScorerCache(AdmissionPolicy(roots=(tmp_path,)), held_build)
    holder = ModelHolderLogic(cache, cache.policy, False, None)
    outputs, _ = holder.on_batch(copies)
    release.set()
    settle(holder, outputs)
    assert cache.most_running <= 2
    assert cache.builds <= 3  # the first two, then only the newest of those that waited
    assert holder.snapshot().champion.model_name == "flood-19"
    superseded = [
        item for item in outputs if isinstance(item, ModelEvent) and "before its load started" in item.reason
    ]
    assert len(superseded) >= 17


def test_a_challenger_cannot_take_the_champions_name(model_v1, model_v2):
    holder = holder_judging_by(AdmissionPolicy(), False, None)
    impostor = canary(replace(model_v2, model_name=model_v1.model_name))
    events = feed(holder, model_v1, impostor)
    assert kinds(events) == [("accepted", "recommender-v1"), ("rejected", "recommender-v1")]
    assert "cannot take the name of the champion" in events[-1][2]
    assert holder.snapshot().challenger is None


def test_a_descriptor_with_both_bytes_and_a_location_is_refused(model_v1):
    holder = holder_judging_by(AdmissionPolicy(), False, None)
    both = replace(model_v1, model_source_location=str(SHIPPED_MODELS_DIR / "2"))
    events = feed(holder, both)
    assert kinds(events) == [("rejected", "recommender-v1")] and "not both" in events[0][2]
