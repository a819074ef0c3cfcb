"""Which offsets of one data partition have a committed answer: the memory of the exactly-once sink.

A data message is answered by a result or a dead letter. Each answer covers its own offset and the offsets
between it and the message read before it in its partition, which do not exist as data (transaction markers
of an upstream producer, compacted or expired messages): so the offsets answered so far make one range, plus
a few gaps for records still held by a shard (waiting for a model) while later ones were answered. The sink
writes this set with every transaction it commits (`flows.adapters.kafka.exactly_once`), and drops an answer
whose offset the committed set covers: a record replayed after a restart, answered before.

A marker tells the flow to drop answers, so a forged one drops data: one plain message claiming offsets 0 to
10**15 under a partition's transactional id silently dropped every later record. A message's place in a
transaction proves nothing (a `read_committed` reader sees a plain message as it sees a committed one), so
each marker carries an HMAC-SHA256 of its content (transactional id, topic, partition, ranges) under a key
only the flow holds (`SERVING_KAFKA_MARKER_KEY`, or one derived from the events signing key), checked before
its content is even parsed. A marker also carries at most `MARKER_RANGES` ranges: past that, the oldest are
forgotten, which can repeat an old answer after a restart but never drop one.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from flows.core.errors import ConfigurationError, ServingError

# A marker is one small message per transaction; a set this fragmented means records held in very many
# places at once, and the marker would grow past what a compacted topic takes comfortably.
MAX_RANGES = 100_000
# What a marker the flow writes carries at most (about 30 bytes a range: ~30 KB), and the largest marker it
# reads: anything longer is not one of its own, and is skipped before its signature is even computed.
MARKER_RANGES = 1_000
MAX_MARKER_BYTES = 256 * 1024
SIGNATURE_PREFIX = b"hmac-sha256:"


class MarkerRefused(ServingError, ValueError):
    """A message under a sink partition's id that is not a marker the flow wrote, with the reason."""


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

    def forget_oldest(self, keep: int) -> int:
        """Keep the newest `keep` ranges; how many were forgotten (their answers may come again after a
        restart: a duplicate, never a loss)."""
        forgotten = max(0, len(self.starts) - keep)
        del self.starts[:forgotten], self.ends[:forgotten]
        return forgotten

    @property
    def last(self) -> int:
        """The highest offset in the set (-1 if empty)."""
        return self.ends[-1] if self.ends else -1

    def __len__(self) -> int:
        """The number of ranges (not of offsets)."""
        return len(self.starts)

    def to_json(self) -> list[list[int]]:
        return [[first, last] for first, last in zip(self.starts, self.ends)]

    @classmethod
    def from_json(cls, ranges: object) -> AnsweredOffsets:
        """The set a marker holds; ValueError if it is not a list of [first, last] pairs of offsets."""
        if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
            raise MarkerRefused(f"answered offsets: expected a list of at most {MAX_RANGES:,} ranges")
        answered = cls()
        for pair in ranges:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(type(offset) is int and offset >= 0 for offset in pair)
                or pair[0] > pair[1]
            ):
                raise MarkerRefused(
                    f"answered offsets: {str(pair)[:80]} is not a range [first, last] of offsets"
                )
            answered.add(pair[0], pair[1])
        return answered


@dataclass(frozen=True)
class Marker:
    """What one sink partition has answered, committed in the same transaction as the answers; written and
    read only with the flow's marker key (see the module docstring)."""

    transactional_id: str
    topic: str  # the data topic
    partition: int
    answered: AnsweredOffsets

    def encode(self, key: bytes) -> bytes:
        """`hmac-sha256:HEX` + newline + the JSON content."""
        content = json.dumps(
            {
                "id": self.transactional_id,
                "topic": self.topic,
                "partition": self.partition,
                "answered": self.answered.to_json(),
            },
            separators=(",", ":"),
        ).encode()
        return SIGNATURE_PREFIX + _signature(key, content) + b"\n" + content

    @classmethod
    def decode(cls, value: bytes, key: bytes) -> Marker:
        """The marker in `value` if the flow wrote it; ValueError naming what is wrong with it. The size and
        the signature are checked before the content is parsed."""
        if len(value) > MAX_MARKER_BYTES:
            raise MarkerRefused(
                f"marker of {len(value):,} bytes, over the {MAX_MARKER_BYTES:,} bytes a marker takes"
            )
        head, newline, content = value.partition(b"\n")
        if not newline or not head.startswith(SIGNATURE_PREFIX):
            raise MarkerRefused("marker is not signed")
        if not hmac.compare_digest(head[len(SIGNATURE_PREFIX) :], _signature(key, content)):
            raise MarkerRefused("marker's signature does not match: the flow's marker key did not write it")
        try:
            fields = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise MarkerRefused(f"marker is not JSON: {type(error).__name__}") from None
        if not isinstance(fields, dict):
            raise MarkerRefused("marker is not a JSON object")
        transactional_id, topic, partition = fields.get("id"), fields.get("topic"), fields.get("partition")
        if not isinstance(transactional_id, str) or not isinstance(topic, str) or type(partition) is not int:
            raise MarkerRefused("marker has no id and topic (strings) and partition (an integer)")
        return cls(transactional_id, topic, partition, AnsweredOffsets.from_json(fields.get("answered")))


def _signature(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).hexdigest().encode()


def marker_key(secret: str | None, events_signing_key: bytes | None) -> bytes:
    """The key markers are signed with: SERVING_KAFKA_MARKER_KEY's secret, else one derived from the events
    signing key (a private key the flow holds anyway); ValueError naming both settings if neither is set.
    Derived, so that the events key itself never signs anything else."""
    if secret:
        if len(secret.encode()) < 16:
            raise ConfigurationError("SERVING_KAFKA_MARKER_KEY: a secret of at least 16 bytes is needed")
        return hashlib.sha256(b"serving answered markers\0" + secret.encode()).digest()
    if events_signing_key:
        return hashlib.sha256(b"serving answered markers from the events key\0" + events_signing_key).digest()
    raise ConfigurationError(
        "exactly-once delivery signs its answered markers, so that no other writer of the answered topic "
        "can make it drop records: set SERVING_KAFKA_MARKER_KEY (a secret of at least 16 bytes, the same "
        "for every process, kept across restarts) or SERVING_EVENTS_SIGNING_KEY"
    )
