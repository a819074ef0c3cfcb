"""The flow's words: model-event kinds, a model's role and mode, the commands, why a challenger window closed.

Each is a string enum: a member is its string value wherever a string goes (comparisons, f-strings, Avro
strings, JSON, the snapshots written before these enums existed, which hold plain strings). On the wire they
stay Avro strings, so a message from an older or newer flow still decodes; what the flow itself creates is
always a member, so a misspelt kind is an AttributeError, not a silent new word.
"""

from __future__ import annotations

import enum


class Word(str, enum.Enum):
    """A string enum (Python 3.10 has no enum.StrEnum): prints and formats as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class EventKind(Word):
    """What happened to a model (`flows.core.events.ModelEvent`)."""

    # Flow-wide, from the model holder.
    ACCEPTED = "accepted"  # passed admission; sent to every shard
    REJECTED = "rejected"  # refused, with the reason; the model in service stays
    RESENT = "resent"  # sent to the shards again after a restart
    PROMOTED = "promoted"  # the challenger is the champion
    RETIRED = "retired"  # the challenger left
    # Per shard.
    SWAPPED = "swapped"  # the shard serves the model now
    RESTORED = "restored"  # the model it served before a restart is back, statistics kept
    FAILED = "failed"  # the shard could not build a model the flow accepted; its previous one serves
    CHALLENGING = "challenging"  # the shard runs the model as challenger
    ROLLED_BACK = "rolled-back"  # a new champion failed on the shard: the one it replaced serves again
    # Per model, from the drift monitor.
    DRIFT = "drift"
    RECOVERED = "recovered"
    # Per model, from the outlier detector.
    OUTLIER = "outlier"  # a window's outlier rate passed SERVING_OUTLIER_THRESHOLD
    OUTLIER_CLEARED = "outlier-cleared"  # the first window back under it
    # A stand-in the Kafka output measures the size of an event with.
    UNKNOWN = "unknown"


class Role(Word):
    CHAMPION = "champion"  # answers every record
    CHALLENGER = "challenger"  # runs beside the champion, as its mode says


class Mode(Word):
    SHADOW = "shadow"  # scores a fraction of the records; results keep the champion's scores
    CANARY = "canary"  # answers a fraction of the users, sticky per user


class Command(Word):
    PROMOTE = "promote"
    RETIRE = "retire"


class ClosedBy(Word):
    """Why a challenger report's window closed."""

    WINDOW = "window"  # it reached SERVING_CHALLENGER_WINDOW records
    PROMOTED = "promoted"
    RETIRED = "retired"
    REPLACED = "replaced"  # a newer challenger took its place
    ENDED = "ended"  # the input ended (a bounded run)
