"""Which offsets of one data partition have a committed answer: the memory of the exactly-once sink.

A data message is answered by a result or a dead letter. Each answer covers its own offset and the offsets
between it and the message read before it in its partition, which do not exist as data (transaction markers
of an upstream producer, compacted or expired messages): so the offsets answered so far make one range, plus
a few gaps for records still held by a shard (waiting for a model) while later ones were answered. The sink
writes this set with every transaction it commits (`flows.adapters.kafka.exactly_once`), and drops an answer
whose offset the committed set covers: a record replayed after a restart, answered before.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import NamedTuple

# A marker is one small message per transaction; a set this fragmented means records held in very many
# places at once, and the marker would grow past what a compacted topic takes comfortably.
MAX_RANGES = 100_000


class Covered(NamedTuple):
    """The offsets `first` to `last` (inclusive) of a data partition that one answer accounts for: its
    message's, and those before it back to the message read before (none of them data)."""

    partition: int
    first: int
    last: int


@dataclass
class AnsweredOffsets:
    """Sorted, disjoint, non-adjacent ranges of offsets, `starts[i]` to `ends[i]` inclusive."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def covers(self, offset: int) -> bool:
        """Whether `offset` is in the set."""
        ends = self.ends
        if not ends or offset > ends[-1]:
            return False  # the common case: a record read for the first time, past everything answered
        index = bisect.bisect_left(ends, offset)
        return self.starts[index] <= offset

    def add(self, first: int, last: int) -> None:
        """Add the offsets `first` to `last`, inclusive (`first` <= `last`)."""
        starts, ends = self.starts, self.ends
        if ends and starts[-1] <= first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)  # the common case: the answer after the last one
            return
        # Every range that touches [first, last] (overlapping or adjacent) merges with it.
        low = bisect.bisect_left(ends, first - 1)
        high = bisect.bisect_right(starts, last + 1)
        if low < high:
            first = min(first, starts[low])
            last = max(last, ends[high - 1])
        starts[low:high] = [first]
        ends[low:high] = [last]

    def update(self, other: AnsweredOffsets) -> None:
        """Add every range of `other`."""
        for first, last in zip(other.starts, other.ends):
            self.add(first, last)

    def copy(self) -> AnsweredOffsets:
        return AnsweredOffsets(list(self.starts), list(self.ends))

    def __len__(self) -> int:
        """The number of ranges (not of offsets)."""
        return len(self.starts)

    def to_json(self) -> list[list[int]]:
        return [[first, last] for first, last in zip(self.starts, self.ends)]

    @classmethod
    def from_json(cls, ranges: object) -> AnsweredOffsets:
        """The set a marker holds; ValueError if it is not a list of [first, last] pairs of offsets."""
        if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
            raise ValueError(f"answered offsets: expected a list of at most {MAX_RANGES:,} ranges")
        answered = cls()
        for pair in ranges:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(type(offset) is int and offset >= 0 for offset in pair)
                or pair[0] > pair[1]
            ):
                raise ValueError(
                    f"answered offsets: {str(pair)[:80]} is not a range [first, last] of offsets"
                )
            answered.add(pair[0], pair[1])
        return answered


@dataclass(frozen=True)
class Marker:
    """What one sink partition has answered, committed in the same transaction as the answers."""

    topic: str  # the data topic
    partition: int
    answered: AnsweredOffsets

    def encode(self) -> bytes:
        return json.dumps(
            {"topic": self.topic, "partition": self.partition, "answered": self.answered.to_json()},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> Marker:
        """The marker in `value`; ValueError naming what is wrong with it."""
        try:
            fields = json.loads(value)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"marker is not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise ValueError("marker is not a JSON object")  # noqa: TRY004 (one error for any bad marker)
        topic, partition = fields.get("topic"), fields.get("partition")
        if not isinstance(topic, str) or type(partition) is not int:
            raise ValueError("marker has no topic (a string) and partition (an integer)")
        return cls(topic, partition, AnsweredOffsets.from_json(fields.get("answered")))
