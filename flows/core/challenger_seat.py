"""The challenger's seat on one shard: what a shard does with a challenger from its arrival to its end.

`flows.core.challenger` says how a challenger is compared with the champion; the seat runs that on one
shard. It loads the challenger in the background (by the process-wide cache, like the champion), puts it
beside the champion once it is ready, sums its windows and emits a `ChallengerReport` per window, and lets
it go when it is promoted, retired, replaced or fails. The seat keeps its challenger's slot (name, role,
window sums) in the shard's state, so that the slot goes into the shard's recovery snapshot unchanged; the
challenger's scorer and a load under way are this process's only.

The shard (`flows.core.shard.ShardLogic`) owns the records: where the seat's doings free records the shard
held for a canary, a method says so by returning True, and the shard scores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.core.challenger import (
    ChallengerSettings,
    ChallengerSlot,
    ExperimentScores,
    ModelCall,
    score_with_challenger,
)
from flows.core.descriptors import CANARY
from flows.core.events import ModelEvent, ms_since
from flows.core.records import DataMessage
from flows.core.scorer import ModelLoadError, Scorer
from flows.core.scorer_cache import ModelLoad, ScorerCache
from flows.core.serving_state import ServingState
from flows.core.shard_messages import ModelUpdate, ShardOutputs
from flows.core.vocabulary import ClosedBy, EventKind

if TYPE_CHECKING:  # the shard imports this module: its state is only named here
    from flows.core.admission.policy import AdmissionPolicy
    from flows.core.shard import ShardState


class ChallengerSeat:
    """One shard's challenger: loading, beside the champion, or none."""

    def __init__(
        self,
        state: ShardState,
        settings: ChallengerSettings,
        cache: ScorerCache,
        serving_state: ServingState,
    ) -> None:
        self.state = state  # the shard's: `state.challenger` is the slot, `state.model_name` the champion
        self.settings = settings
        self.cache = cache
        self.serving_state = serving_state
        # The challenger's scorer, once loaded in this process (after a restart the slot comes back first).
        self.scorer: Scorer | None = None
        self.incoming: tuple[ModelUpdate, ModelLoad] | None = None  # a challenger loading in the background

    @property
    def loading(self) -> bool:
        return self.incoming is not None

    @property
    def scoring(self) -> bool:
        """Whether a challenger scores beside the champion now."""
        return self.state.challenger is not None and self.scorer is not None

    def canary_reloading(self) -> bool:
        """After a restart, a canary's users wait for it to load again: none of them sees the champion
        meanwhile (a shadow challenger only misses some comparisons)."""
        slot = self.state.challenger
        return slot is not None and slot.mode == CANARY and self.scorer is None

    def score(
        self, champion: ModelCall, messages: list[DataMessage], policy: AdmissionPolicy
    ) -> ExperimentScores:
        """`messages` scored under the experiment: by the champion and the challenger as its role says."""
        slot = self.state.challenger
        assert slot is not None and self.scorer is not None
        challenger = ModelCall(self.scorer, slot.name)
        return score_with_challenger(champion, challenger, slot, messages, policy, self.settings.top_k)

    def report_full_window(self, outputs: ShardOutputs) -> None:
        """Report the window and open the next, once it holds `settings.window` challenger records."""
        slot = self.state.challenger
        if slot is not None and slot.window.challenger_records >= self.settings.window:
            self._report(slot, ClosedBy.WINDOW, outputs)
            slot.window = slot.window.next()

    def report_last_window(self, outputs: ShardOutputs) -> None:
        """A bounded run's last, partial window, when the input ends."""
        slot = self.state.challenger
        if slot is not None and slot.window.records:
            self._report(slot, ClosedBy.ENDED, outputs)
            slot.window = slot.window.next()

    def _report(self, slot: ChallengerSlot, closed_by: ClosedBy, outputs: ShardOutputs) -> None:
        report = slot.report(self.state.shard, closed_by, self.settings.top_k)
        self.serving_state.challenger(report)
        outputs.report(report)

    def receive(self, update: ModelUpdate) -> bool:
        """Start loading the challenger in `update`; False if it is the challenger that runs, sent again."""
        descriptor = update.descriptor
        slot = self.state.challenger
        if (
            slot is not None
            and self.scorer is not None
            and (slot.digest, slot.name, slot.mode, slot.fraction)
            == (descriptor.digest, descriptor.model_name, descriptor.mode, descriptor.fraction)
        ):
            return False
        if self.incoming is not None:
            self.cache.release(self.incoming[0].descriptor.digest)
        self.incoming = (update, self.cache.request(descriptor))
        return True

    def end(self, name: str, closed_by: ClosedBy, outputs: ShardOutputs) -> bool:
        """The challenger `name` leaves this shard, with a last report of its partial window. True if it
        was in the seat: records a restored canary held, if it never loaded again, go to the champion."""
        if self.incoming is not None and self.incoming[0].descriptor.model_name == name:
            self.cache.release(self.incoming[0].descriptor.digest)
            self.incoming = None
        slot = self.state.challenger
        if slot is None or slot.name != name:
            return False
        self.close(closed_by, outputs)
        return True

    def close(self, closed_by: ClosedBy, outputs: ShardOutputs) -> None:
        """Empty the seat, with a last report of the partial window."""
        slot = self.state.challenger
        assert slot is not None
        if slot.window.records:
            self._report(slot, closed_by, outputs)
        if self.scorer is not None:
            self.cache.release(slot.digest)
        self.state.challenger = None
        self.scorer = None

    def join(self) -> None:
        """Wait for a load under way (the input has ended: nothing is left to score meanwhile)."""
        if self.incoming is not None:
            self.incoming[1].join()

    def new_champion(self, name: str) -> None:
        """The champion is now `name`; a challenger promoted to champion keeps naming its old champion in
        its last report."""
        slot = self.state.challenger
        if slot is not None and slot.name != name:
            slot.champion = name

    def seat_when_ready(self, outputs: ShardOutputs, champion_ready: bool) -> bool:
        """Put the loaded challenger in the seat (replacing the one there), or report its failed load. True
        if records held for a canary may go to the champion now."""
        if self.incoming is None or not self.incoming[1].ready():
            return False
        update, load = self.incoming
        self.incoming = None
        descriptor = update.descriptor
        shard = self.state.shard
        try:
            scorer, load_ms = load.result()
        except ModelLoadError as error:
            self.cache.release(descriptor.digest)
            outputs.event(ModelEvent(EventKind.FAILED, descriptor.model_name, error.reason, shard))
            if self.scorer is None and self.state.challenger is not None:
                self.state.challenger = None  # restored, and it cannot run again here: the champion answers
                return True
            return False
        slot = self.state.challenger
        restored = slot is not None and self.scorer is None and slot.digest == descriptor.digest
        if restored and slot is not None:
            slot.mode, slot.fraction = descriptor.mode, descriptor.fraction
        else:
            if slot is not None:
                self.close(ClosedBy.REPLACED, outputs)
            self.state.challenger = ChallengerSlot.of(descriptor, self.state.model_name)
        self.scorer = scorer
        reason = f"{descriptor.experiment()} beside {self.state.model_name!r}"
        arrival_ms = ms_since(update.arrived_at) if update.arrived_at else 0.0
        kind = EventKind.RESTORED if restored else EventKind.CHALLENGING
        outputs.event(ModelEvent(kind, descriptor.model_name, reason, shard, "", load_ms, arrival_ms))
        return champion_ready
