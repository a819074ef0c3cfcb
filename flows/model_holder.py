"""The model holder: the one place the flow keeps the model it serves, and the judge of new models.

Every model event passes through a single key. A descriptor that cannot become a scorer (corrupt or
truncated bytes, an unknown type, a SavedModel without the expected signature, an unsafe archive) is
rejected here with an event naming the model and the reason; the model in service stays. An accepted
descriptor becomes the holder's state and is sent on to every shard.

Keeping the model bytes in this one key's state is what keeps recovery cheap: Bytewax snapshots a key
only in the epochs that touch it, so the model is written once per model event, not once per shard per
epoch. After a restart the holder sends its model to every shard again, so the flow serves the model it
had without the model stream re-sending it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from bytewax.operators import StatefulBatchLogic

from flows.avro import DecodeFailure
from flows.records import ModelDescriptor, ModelEvent
from flows.scorers import ModelLoadError, ScorerCache

HolderInput = ModelDescriptor | DecodeFailure
HolderOutput = ModelDescriptor | ModelEvent
HOLDER_KEY = "model-holder"


class ModelHolderLogic(StatefulBatchLogic[HolderInput, HolderOutput, ModelDescriptor]):
    """Validates model events and keeps the latest accepted descriptor."""

    def __init__(self, cache: ScorerCache, resume: ModelDescriptor | None) -> None:
        self.cache = cache
        self.current = resume
        self.resend_pending = resume is not None
        # The digest this holder holds a cache reference for; none right after a restart.
        self.held_digest: str | None = None

    def on_batch(self, values: list[HolderInput]) -> tuple[Iterable[HolderOutput], bool]:
        outputs: list[HolderOutput] = []
        for value in values:
            outputs.extend(self._consider(value))
        return outputs, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(timezone.utc) if self.resend_pending else None

    def on_notify(self) -> tuple[Iterable[HolderOutput], bool]:
        self.resend_pending = False
        if self.current is None:
            return [], StatefulBatchLogic.RETAIN
        resent = ModelEvent("resent", self.current.model_name, "restored from recovery")
        return [resent, self.current], StatefulBatchLogic.RETAIN

    def snapshot(self) -> ModelDescriptor | None:
        return self.current  # Frozen dataclass: safe to hand over as is.

    def _consider(self, value: HolderInput) -> list[HolderOutput]:
        if isinstance(value, DecodeFailure):
            return [ModelEvent("rejected", "", f"undecodable {value.schema} message: {value.reason}")]
        try:
            _, load_ms = self.cache.acquire(value)
        except ModelLoadError as error:
            serving = f"; still serving {self.current.model_name!r}" if self.current else ""
            return [ModelEvent("rejected", value.model_name, error.reason + serving)]
        if self.held_digest is not None:
            self.cache.release(self.held_digest)
        self.held_digest = value.digest
        previous = self.current.model_name if self.current else ""
        self.current = value
        self.resend_pending = False
        accepted = ModelEvent(
            "accepted", value.model_name, value.description, previous_model=previous, load_ms=load_ms
        )
        return [accepted, value]
