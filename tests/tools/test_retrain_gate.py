"""Which drift events `serving-retrain` trains on (`flows.tools.retrain_gate`), without a broker: forged,
replayed and stale events are refused, and a model's drift trains once, at most once per interval."""

from __future__ import annotations

import pytest

from flows.core.admission.signing import new_private_key, raw_public_key
from flows.core.event_signing import EventSigner
from flows.core.events import ModelEvent, SignedModelEvent
from flows.core.vocabulary import EventKind
from flows.tools import retrain
from flows.tools.retrain_gate import RetrainGate

KEY = new_private_key()
TRUSTED = (raw_public_key(KEY.public_key()),)
NOW_MS = 1_800_000_000_000
V2_DRIFT = ModelEvent(EventKind.DRIFT, "recommender-v2", "PSI 0.9")
V3_DRIFT = ModelEvent(EventKind.DRIFT, "recommender-v3", "PSI 0.7")


def signer(name: str = "host/1") -> EventSigner:
    clock = iter(range(NOW_MS, NOW_MS + 1_000_000, 10))
    return EventSigner(KEY, name, clock=lambda: next(clock) / 1000)


def gate(min_interval_s: float = 0, max_age_s: float = 3600, keys: tuple = TRUSTED) -> RetrainGate:
    return RetrainGate(keys, min_interval_s, max_age_s)


def test_only_drift_events_of_the_followed_model_are_wanted():
    follows_v2 = RetrainGate(TRUSTED, 0, 0, model="recommender-v2")
    assert follows_v2.wants(V2_DRIFT)
    assert not follows_v2.wants(V3_DRIFT)
    assert not follows_v2.wants(ModelEvent("accepted", "recommender-v2"))
    assert gate().wants(V3_DRIFT)


def test_forged_events_are_refused_and_count_for_nothing():
    judged = gate()
    assert judged.judge(SignedModelEvent(V2_DRIFT), NOW_MS) == "the event is not signed"
    stranger = EventSigner(new_private_key(), "host/1").sign(V2_DRIFT)
    assert "does not verify" in judged.judge(stranger, NOW_MS)
    assert judged.judge(signer().sign(V2_DRIFT), NOW_MS) is None  # the forgeries neither trained nor dedupe


def test_a_replayed_event_is_refused_and_each_model_is_ordered_on_its_own():
    judged, flow = gate(), signer()
    drift_v2 = flow.sign(V2_DRIFT)
    assert judged.judge(drift_v2, NOW_MS) is None
    assert judged.judge(drift_v2, NOW_MS).startswith("replay: issued at")
    # Another model's events are ordered on their own: an earlier issue time of another model still passes.
    earlier_v3 = flow.sign(V3_DRIFT)
    assert judged.judge(flow.sign(ModelEvent(EventKind.DRIFT, "recommender-v4")), NOW_MS) is None
    assert judged.judge(earlier_v3, NOW_MS) is None


def test_an_old_event_is_stale():
    old = signer().sign(V2_DRIFT)
    message = gate(max_age_s=60).judge(old, NOW_MS + 61_000)
    assert message == "stale: issued 61 s ago, over --max-age 60 s"
    assert gate(max_age_s=0).judge(old, NOW_MS + 10**9) is None  # 0: no limit


def test_five_drift_events_of_one_model_train_once_and_its_successor_trains_again():
    judged, flow = gate(), signer()
    verdicts = [judged.judge(flow.sign(V2_DRIFT), NOW_MS) for _ in range(5)]
    assert verdicts[0] is None
    assert verdicts[1:] == ["duplicate: retrained after a drift of 'recommender-v2' already"] * 4
    assert judged.judge(flow.sign(V3_DRIFT), NOW_MS) is None


def test_one_training_per_interval_at_most():
    judged, flow = gate(min_interval_s=600), signer()
    assert judged.judge(flow.sign(V2_DRIFT), NOW_MS) is None
    too_soon = judged.judge(flow.sign(V3_DRIFT), NOW_MS + 599_000)
    assert too_soon == "rate limit: the last training began 599 s ago, under --min-interval 600 s"
    assert judged.judge(flow.sign(V3_DRIFT), NOW_MS + 600_000) is None  # skipped, not queued: it came again


def test_without_trusted_keys_unsigned_events_pass_but_still_train_once():
    judged = gate(keys=())
    assert judged.judge(SignedModelEvent(V2_DRIFT), NOW_MS) is None
    assert judged.judge(SignedModelEvent(V2_DRIFT), NOW_MS).startswith("duplicate")


def test_retrain_refuses_to_start_without_trusted_keys(capsys):
    with pytest.raises(SystemExit) as exited:
        retrain.main(["--version", "3", "--bootstrap-servers", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert "no --trusted-keys" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        retrain.main(["--version", "3", "--trusted-keys", "not-a-key"])
    assert "--trusted-keys: trusted key 'not-a-key' is neither" in capsys.readouterr().err


def test_retrain_prints_no_control_characters(capsys):
    retrain.say("drift of 'm': \x1b[2J\r\n\x07reason")
    printed = capsys.readouterr().out
    assert printed == "drift of 'm': \\x1b[2J \\x07reason\n"
