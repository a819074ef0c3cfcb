"""The model holder: the one place the flow keeps the model it serves, and the judge of new models.

Every model event passes through a single key. Cheap checks (size, names, signature) refuse a descriptor
at once; the costly ones (unpacking, graph inspection, loading, the probe: `flows.core.admission`) run in the
background while the step returns, and the holder polls them. A descriptor that fails is rejected with an
event naming the model and the reason, and the model in service stays. One that passes is accepted and
sent on to every shard, with the time it arrived, so shards report arrival-to-serving times. A newer model
that is ready first supersedes older ones still loading: the latest model wins and nothing waits for a
slow one.

The holder also keeps a challenger (`flows.core.challenger`): a descriptor with role `challenger` is judged
the same way and, once accepted, sent to every shard beside the champion. `promote` and `retire` commands
on the model stream act on it at once (the shards already hold its scorer). Both roles, with the
challenger's mode and fraction, are in the holder's recovery state.

At start-up without a model (a fresh deployment), the holder can wait until the model source says it has
read what was on the topic when the flow started (`CaughtUp`), then judges the newest of those first: the
backlog of records is scored by the latest model, not by each historical one in turn.

Keeping the model bytes in this one key's state is what keeps recovery cheap: Bytewax snapshots a key
only in the epochs that touch it, so the model is written in the epochs of its model event (while it is
judged, and once accepted), not once per shard per epoch. After a restart the holder sends its model to
every shard again, so the flow serves the model it had without the model stream re-sending it (with a
Kafka model source, on its first input: see `__init__`).

Models still being judged are in the state too: the model source's snapshot has moved past their messages,
so a restart that forgot them would never judge them. A restored holder judges them again.

Authority. With trusted keys, the holder is the one place a message's signature and freshness are checked
(`flows.core.admission.freshness`), when it arrives; the newest sequence taken in from each key is in the
state. What the holder accepted is the flow's own state from then on: a promoted challenger becomes the
champion on the authority of the signed promote command, and a restored model serves after a restart without
being verified again. The recovery store is written and read only by the flow, by whoever runs it, who can
also change its trusted keys; verifying restored state again would turn a key rotation, or turning signing on,
into an outage (every shard refusing the model it served) without keeping anyone out.

Identity. A model is known to every result, event and report by the name it was accepted under: a
challenger cannot take the champion's name (nor a champion the serving challenger's), and commands name
their target's digest too.

Bounded work. Loads run at most `SERVING_MODEL_MAX_LOADS` at a time (`flows.core.scorer_cache`); a model still
waiting for its turn is dropped, unloaded, when a newer one of its role arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from bytewax.operators import StatefulBatchLogic

from flows.core.admission.descriptor_checks import refusal
from flows.core.admission.freshness import FreshnessMarks
from flows.core.admission.policy import AdmissionPolicy
from flows.core.descriptors import PROMOTE, ModelDescriptor
from flows.core.events import ModelEvent, ms_since
from flows.core.records import DecodeFailure
from flows.core.scorer import ModelLoadError
from flows.core.scorer_cache import ModelLoad, ScorerCache
from flows.core.snapshot_compat import restore_with_defaults
from flows.core.vocabulary import ClosedBy, EventKind

HOLDER_KEY = "model-holder"
POLL = timedelta(milliseconds=10)
MAX_STARTUP_CANDIDATES = 8


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The model source has read, on one of its `partitions`, every message there when the flow started."""

    partition: str
    partitions: int


@dataclass(frozen=True, slots=True)
class AcceptedModel:
    """A model that passed admission, when it arrived (seconds since the epoch) and, for a champion, the
    champion it replaced: a shard that rolls the new one back serves that one again (flows.core.probation)."""

    descriptor: ModelDescriptor
    arrived_at: float
    fallback: ModelDescriptor | None = None


@dataclass(frozen=True, slots=True)
class ChallengerEnded:
    """The challenger `model_name` leaves the shards: `promoted` (it is the champion now) or `retired`."""

    model_name: str
    closed_by: ClosedBy


Arrival = tuple[ModelDescriptor, float]  # a model message and when it reached the flow


@dataclass(frozen=True, slots=True)
class HolderState:
    """What the holder persists: the champion and the challenger (its role, mode and fraction included),
    and the models not judged yet (being judged, or kept from the topic's history at start-up)."""

    champion: ModelDescriptor | None = None
    challenger: ModelDescriptor | None = None
    judging: tuple[Arrival, ...] = ()
    startup: tuple[Arrival, ...] = ()
    startup_challenger: Arrival | None = None
    freshness: tuple[tuple[str, int], ...] = ()  # (signing key id, newest sequence taken in)
    fallback: ModelDescriptor | None = None  # the champion before the champion

    def __setstate__(self, state: tuple) -> None:
        restore_with_defaults(self, state)  # snapshots from before a field existed hold fewer values


@dataclass(slots=True)
class _Candidate:
    descriptor: ModelDescriptor
    arrived_at: float
    load: ModelLoad


HolderInput = ModelDescriptor | DecodeFailure | CaughtUp
HolderOutput = AcceptedModel | ChallengerEnded | ModelEvent


class ModelHolderLogic(StatefulBatchLogic[HolderInput, HolderOutput, HolderState]):
    """Judges model events off the step and keeps the latest accepted champion and challenger."""

    def __init__(
        self,
        cache: ScorerCache,
        policy: AdmissionPolicy,
        wait_for_catch_up: bool,
        resume: HolderState | ModelDescriptor | None,
    ) -> None:
        self.cache = cache
        self.policy = policy
        if isinstance(resume, ModelDescriptor):  # written before challengers existed
            resume = HolderState(resume)
        resume = resume or HolderState()
        self.current = resume.champion
        self.fallback = resume.fallback
        self.challenger = resume.challenger
        self.resend_pending = self.current is not None
        # With a model source that sends `CaughtUp` markers (Kafka: it sends them after every restart too),
        # the re-send waits for the first input instead of going out from a notification. Bytewax can run
        # the notification of a restored key in an epoch before the resume epoch, while other processes of
        # a cluster are still restoring the shards' state: a shard restored after the model reached it is
        # replaced by its restored state, without the model, and holds its records for ever. An input comes
        # in the resume epoch or later, after every shard is restored.
        self.resend_on_input = wait_for_catch_up
        # The digests this holder holds a cache reference for; none right after a restart.
        self.held_digest: str | None = None
        self.held_challenger_digest: str | None = None
        self.pending: list[_Candidate] = []
        self.freshness = FreshnessMarks.restored(resume.freshness)
        for descriptor, arrived_at in resume.judging:  # judged again: their messages will not come back
            self._start(descriptor, arrived_at)
        self.catching_up = wait_for_catch_up and self.current is None and not self.pending
        self.caught_up: set[str] = set()
        self.startup: list[Arrival] = list(resume.startup)  # champions, oldest first, while catching up
        self.startup_challenger: Arrival | None = resume.startup_challenger

    def on_batch(self, values: list[HolderInput]) -> tuple[Iterable[HolderOutput], bool]:
        outputs: list[HolderOutput] = []
        if self.resend_pending:
            self._resend(outputs)
        for value in values:
            self._consider(value, outputs)
        self._settle(outputs)
        return outputs, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.resend_pending and not self.resend_on_input:
            return datetime.now(timezone.utc)
        return datetime.now(timezone.utc) + POLL if self.pending else None

    def on_notify(self) -> tuple[Iterable[HolderOutput], bool]:
        outputs: list[HolderOutput] = []
        if self.resend_pending and not self.resend_on_input:
            self._resend(outputs)
        self._settle(outputs)
        return outputs, StatefulBatchLogic.RETAIN

    def _resend(self, outputs: list[HolderOutput]) -> None:
        """Send the model restored from recovery to every shard again."""
        self.resend_pending = False
        if self.current is not None:
            outputs.append(ModelEvent(EventKind.RESENT, self.current.model_name, "restored from recovery"))
            outputs.append(AcceptedModel(self.current, time.time(), self.fallback))
        if self.challenger is not None:
            reason = f"restored from recovery, {self.challenger.experiment()}"
            outputs.append(ModelEvent(EventKind.RESENT, self.challenger.model_name, reason))
            outputs.append(AcceptedModel(self.challenger, time.time()))

    def on_eof(self) -> tuple[Iterable[HolderOutput], bool]:
        # The model input ended (a bounded run; a tailed topic never ends). Bytewax calls nothing on this
        # key after this, so the loads still running are waited for here, each at most its deadline:
        # this holds the worker, and records behind it wait.
        outputs: list[HolderOutput] = []
        if self.resend_pending:
            self._resend(outputs)  # the input ended without a message (or a marker) since the restart
        self._end_catch_up()
        while self.pending:
            for candidate in self.pending:
                candidate.load.join()
            self._settle(outputs)
        return outputs, StatefulBatchLogic.RETAIN

    def snapshot(self) -> HolderState:
        # Frozen dataclasses, in new tuples: safe to hand over as they are.
        judging = tuple((candidate.descriptor, candidate.arrived_at) for candidate in self.pending)
        return HolderState(
            self.current,
            self.challenger,
            judging,
            tuple(self.startup),
            self.startup_challenger,
            self.freshness.snapshot(),
            self.fallback,
        )

    def _consider(self, value: HolderInput, outputs: list[HolderOutput]) -> None:
        if isinstance(value, CaughtUp):
            self.caught_up.add(value.partition)
            if len(self.caught_up) >= value.partitions:
                self._end_catch_up()
            return
        if isinstance(value, DecodeFailure):
            outputs.append(
                ModelEvent(EventKind.REJECTED, "", f"undecodable {value.schema} message: {value.reason}")
            )
            return
        refused = self._refusal(value)
        if refused:
            outputs.append(ModelEvent(EventKind.REJECTED, value.model_name, refused + self._still_serving()))
            return
        if self.catching_up:
            self._remember_at_startup(value)
            return
        if value.command:
            self._command(value, outputs)
            return
        self._start(value, time.time(), outputs)

    def _refusal(self, descriptor: ModelDescriptor) -> str | None:
        """Why `descriptor` is refused at once (content, signature and freshness, identity), or None."""
        policy = self.policy
        refused = refusal(descriptor, policy)
        if refused is None and policy.trusted_keys:
            refused = self.freshness.admit(descriptor, policy.trusted_keys, int(time.time() * 1000))
            if refused is None and descriptor.command and not descriptor.target_digest:
                refused = f"a signed {descriptor.command} command must name its target's digest"
        return refused or self._name_clash(descriptor)

    def _name_clash(self, descriptor: ModelDescriptor) -> str | None:
        """Why `descriptor`'s name would make results name the wrong model, or None."""
        if descriptor.command:
            return None
        name = descriptor.model_name
        if descriptor.is_challenger and self.current is not None and self.current.model_name == name:
            return f"a challenger cannot take the name of the champion {name!r}"
        challenger = self.challenger
        if not descriptor.is_challenger and challenger is not None and challenger.model_name == name:
            return f"a champion cannot take the name of the challenger {name!r}: promote or retire it"
        return None

    def _remember_at_startup(self, descriptor: ModelDescriptor) -> None:
        """Replay the topic's history: the champions in order, and the challenger the commands leave."""
        challenger = self.startup_challenger[0] if self.startup_challenger else None
        if descriptor.is_challenger:
            self.startup_challenger = (descriptor, time.time())
        elif not descriptor.command:
            self.startup = [*self.startup, (descriptor, time.time())][-MAX_STARTUP_CANDIDATES:]
        elif challenger is not None and _targets(descriptor, challenger):
            if descriptor.command == PROMOTE:
                promoted = (_as_champion(challenger), time.time())
                self.startup = [*self.startup, promoted][-MAX_STARTUP_CANDIDATES:]
            self.startup_challenger = None

    def _command(self, command: ModelDescriptor, outputs: list[HolderOutput]) -> None:
        """Promote or retire the challenger `command` names."""
        name = command.model_name
        challenger = self.challenger
        if challenger is None or not _targets(command, challenger):
            serving = f"{challenger.model_name!r} ({challenger.digest})" if challenger else "none"
            target = f" ({command.target_digest})" if command.target_digest else ""
            outputs.append(
                ModelEvent(
                    EventKind.REJECTED,
                    name,
                    f"cannot {command.command} {name!r}{target}: the challenger is {serving}",
                )
            )
            return
        self.challenger = None
        if command.command == PROMOTE:
            if self.held_digest is not None:
                self.cache.release(self.held_digest)
            self.held_digest, self.held_challenger_digest = self.held_challenger_digest, None
            previous = self.current.model_name if self.current else ""
            champion = _as_champion(challenger)
            self._replace_champion(champion)
            outputs.append(
                ModelEvent(
                    EventKind.PROMOTED, name, "the challenger is the champion", previous_model=previous
                )
            )
            # The champion first: shards then take the scorer they hold as challenger, and let go of it after.
            outputs.append(AcceptedModel(champion, time.time(), self.fallback))
            outputs.append(ChallengerEnded(name, ClosedBy.PROMOTED))
            return
        if self.held_challenger_digest is not None:
            self.cache.release(self.held_challenger_digest)
            self.held_challenger_digest = None
        outputs.append(
            ModelEvent(EventKind.RETIRED, name, f"the champion {self._champion_name()!r} answers alone")
        )
        outputs.append(ChallengerEnded(name, ClosedBy.RETIRED))

    def _start(
        self, descriptor: ModelDescriptor, arrived_at: float, outputs: list[HolderOutput] | None = None
    ) -> None:
        """Judge `descriptor`. Older models of its role that are still waiting for their load to start, or
        are the same model (one load, shared), are dropped: only the newest message of a role is judged."""
        # Requested first: a dropped message of the same model must not take its load's last reference.
        load = self.cache.request(descriptor)
        if outputs is not None:
            role, digest = descriptor.is_challenger, descriptor.digest
            for candidate in [c for c in self.pending if c.descriptor.is_challenger == role]:
                same_model = candidate.descriptor.digest == digest
                if same_model or candidate.load.queued():
                    self.pending.remove(candidate)
                    when = "(the same model)" if same_model else "before its load started"
                    self._reject(candidate, f"superseded by {descriptor.model_name!r} {when}", outputs)
        self.pending.append(_Candidate(descriptor, arrived_at, load))

    def _end_catch_up(self) -> None:
        """Judge the newest model that was on the topic at start-up; older ones only if it fails."""
        if not self.catching_up:
            return
        self.catching_up = False
        if self.startup:
            self._start(*self.startup.pop())
        if self.startup_challenger is not None:
            self._start(*self.startup_challenger)
            self.startup_challenger = None

    def _settle(self, outputs: list[HolderOutput]) -> None:
        """Turn finished loads into verdicts, in arrival order within a role (champions first); an accepted
        model supersedes older ones of its role. A challenger ready before the first champion waits for it."""
        champions = [c for c in self.pending if not c.descriptor.is_challenger]
        challengers = [c for c in self.pending if c.descriptor.is_challenger]
        waiting = self._settle_role(champions, self._accept, outputs)
        if self.current is not None or not waiting:
            waiting += self._settle_role(challengers, self._accept_challenger, outputs)
        else:
            waiting += challengers
        self.pending = waiting
        champion_pending = any(not candidate.descriptor.is_challenger for candidate in waiting)
        if not champion_pending and self.startup and self.current is None and not self.catching_up:
            self._start(*self.startup.pop())  # the newest start-up model failed: try the one before it
        elif self.current is not None:
            self.startup = []

    def _settle_role(
        self,
        candidates: list[_Candidate],
        accept: Callable[[_Candidate, float, list[HolderOutput]], None],
        outputs: list[HolderOutput],
    ) -> list[_Candidate]:
        """Verdicts on the finished loads of `candidates` (one role, in arrival order); those still
        loading."""
        waiting: list[_Candidate] = []
        for candidate in candidates:
            if not candidate.load.ready():
                waiting.append(candidate)
                continue
            try:
                _, load_ms = candidate.load.result()
            except ModelLoadError as error:
                self._reject(candidate, error.reason, outputs)
                continue
            for older in waiting:
                self._reject(
                    older, f"superseded by {candidate.descriptor.model_name!r}, ready first", outputs
                )
            waiting = []
            accept(candidate, load_ms, outputs)
        return waiting

    def _reject(self, candidate: _Candidate, reason: str, outputs: list[HolderOutput]) -> None:
        self.cache.release(candidate.descriptor.digest)
        name = candidate.descriptor.model_name
        outputs.append(ModelEvent(EventKind.REJECTED, name, reason + self._still_serving()))

    def _accept(self, candidate: _Candidate, load_ms: float, outputs: list[HolderOutput]) -> None:
        descriptor = candidate.descriptor
        clash = self._name_clash(descriptor)  # a challenger may have arrived while it loaded
        if clash:
            self._reject(candidate, clash, outputs)
            return
        self.held_digest = self._hold(self.held_digest, descriptor)
        previous = self.current.model_name if self.current else ""
        self._replace_champion(descriptor)
        self.resend_pending = False
        event = _accepted(candidate, load_ms, descriptor.description, previous)
        outputs.extend([event, AcceptedModel(descriptor, candidate.arrived_at, self.fallback)])

    def _hold(self, held: str | None, descriptor: ModelDescriptor) -> str:
        """Release the cache reference `held` (the model `descriptor` replaces in its role) and keep the
        one `descriptor`'s load took instead: its digest."""
        if held is not None:
            self.cache.release(held)
        return descriptor.digest

    def _replace_champion(self, descriptor: ModelDescriptor) -> None:
        """`descriptor` is the champion; the one it replaces is the fallback (the same model sent again
        leaves the fallback as it was)."""
        if self.current is not None and self.current.digest != descriptor.digest:
            self.fallback = self.current
        self.current = descriptor

    def _accept_challenger(self, candidate: _Candidate, load_ms: float, outputs: list[HolderOutput]) -> None:
        descriptor = candidate.descriptor
        if self.current is None:
            self._reject(candidate, "a challenger needs a champion in service, and there is none", outputs)
            return
        clash = self._name_clash(descriptor)  # the champion may have changed while it loaded
        if clash:
            self._reject(candidate, clash, outputs)
            return
        self.held_challenger_digest = self._hold(self.held_challenger_digest, descriptor)
        replaced = f" (replacing challenger {self.challenger.model_name!r})" if self.challenger else ""
        self.challenger = descriptor
        reason = f"as {descriptor.experiment()} beside {self.current.model_name!r}{replaced}"
        outputs.extend(
            [_accepted(candidate, load_ms, reason), AcceptedModel(descriptor, candidate.arrived_at)]
        )

    def _champion_name(self) -> str:
        return self.current.model_name if self.current else ""

    def _still_serving(self) -> str:
        return f"; still serving {self.current.model_name!r}" if self.current else ""


def _accepted(candidate: _Candidate, load_ms: float, reason: str, previous_model: str = "") -> ModelEvent:
    """The `accepted` event of a candidate that loaded in `load_ms`, timed from its arrival."""
    return ModelEvent(
        EventKind.ACCEPTED,
        candidate.descriptor.model_name,
        reason,
        previous_model=previous_model,
        load_ms=load_ms,
        arrival_ms=ms_since(candidate.arrived_at),
    )


def _as_champion(descriptor: ModelDescriptor) -> ModelDescriptor:
    """`descriptor` promoted: the same model (and digest), answering every record, on the authority of the
    promote command that was checked when it arrived (nothing verifies it again: see the module docstring)."""
    return replace(descriptor, role="champion", mode="", fraction=1.0)


def _targets(command: ModelDescriptor, challenger: ModelDescriptor) -> bool:
    """Whether `command` acts on `challenger`: its name, and its digest when the command names one."""
    if command.model_name != challenger.model_name:
        return False
    return not command.target_digest or command.target_digest == challenger.digest
