"""The data topic as a source of decoded polls: each poll of a partition becomes one item of the dataflow,
its records decoded together (`flows.wire.record_polls`) and its undecodable messages set apart as dead
letters.

Bytewax's KafkaSource makes a KafkaSourceMessage of every message, which a decoding step then reads: about
2 us per record, a tenth of the flow's time once records travel in batches. This source reads
confluent-kafka's messages directly and emits what the flow needs. It keeps what Bytewax's KafkaSource had:
partitions named "<partition>-<topic>" and the next offset of each as the recovery state, so snapshots written
by the flow before this source still resume it.

The flow's offsets live in its recovery store, not in a consumer group, so this source is the only place
that knows how far behind the topic the flow is: with `on_lag`, a `LagProbe` measures each partition built
here about once a second, on a thread of its own, and hands the figure to the process's /state and gauges
(`flows.adapters.kafka.lag_probe`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import cast

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as ConsumerError

from flows.adapters.kafka.answered import Covered
from flows.adapters.kafka.dead_letters import Undecodable, consumer_failure, decode_failure
from flows.adapters.kafka.lag_probe import LagProbe, LagReport
from flows.adapters.kafka.settings import KafkaSettings
from flows.core.errors import ConfigurationError
from flows.core.explanations import EXPLAIN_HEADER
from flows.core.records import DataMessage, DecodeFailure
from flows.wire.avro import RECORD
from flows.wire.record_polls import decode_records

LOOKUP_TIMEOUT_S = 10.0


@dataclass(slots=True)
class KafkaOrigin:
    """Where a data message was read; `timestamp_ms` is the message's Kafka timestamp. `covers_from` is the
    offset after the message read before it in its partition: the offsets between hold no data message
    (transaction markers, compacted messages), so its answer accounts for them too
    (`flows.adapters.kafka.answered`); -1 where unknown (origins from before 2026-12-05).

    Not frozen, though nothing changes it: a frozen dataclass costs 1.3 us to make instead of 0.4, once
    per record.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    covers_from: int = -1

    def __reduce__(self) -> tuple:
        # Its fields, not the dataclass state: cheaper to pickle when records cross to another process.
        return KafkaOrigin, (
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms,
            self.headers,
            self.covers_from,
        )

    @property
    def explanation_requested(self) -> bool:
        """Whether the message has the `serving-explain` header (`flows.core.explanations`)."""
        return bool(self.headers) and any(name == EXPLAIN_HEADER for name, _ in self.headers)

    @property
    def covered(self) -> Covered:
        """The offsets this message's answer accounts for."""
        first = self.covers_from if 0 <= self.covers_from <= self.offset else self.offset
        return Covered(self.partition, first, self.offset)

    def __setstate__(self, state: tuple) -> None:
        # Snapshots written while KafkaOrigin was frozen (0.1.0 to 2026-11-30) hold its field values in order.
        self.covers_from = -1
        for name, value in zip((field.name for field in fields(self)), state):
            setattr(self, name, value)


@dataclass(frozen=True, slots=True)
class DecodedPoll:
    """One poll of a data partition: its records, in order, and the messages that did not decode."""

    batch: list[DataMessage]
    undecodable: list[Undecodable]


class DataPollSource(FixedPartitionedSource[DecodedPoll, int]):
    """The data topic's partitions, each poll emitted as one DecodedPoll (see the module docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        starting_offset: int,
        config: dict[str, str],
        on_lag: LagReport | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.starting_offset = starting_offset
        self.consumer_config = {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "BYTEWAX_IGNORED",  # offsets are kept in the recovery snapshots, not by a group
            "enable.auto.commit": "false",
            "enable.partition.eof": str(not settings.tail),
            **config,
        }
        self.probe = None if on_lag is None else LagProbe(self.consumer_config, topic, on_lag)

    def list_parts(self) -> list[str]:
        names = partition_names(self.consumer_config, self.topic)
        if self.probe is not None:
            self.probe.listed = frozenset(int(name.split("-", 1)[0]) for name in names)
        return names

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DataPollPartition:
        index, topic = for_part.split("-", 1)
        if topic != self.topic:
            raise ConfigurationError(
                f"{step_id}: resuming partition {for_part!r}, but the data topic is {self.topic!r}"
            )
        offset = self.starting_offset if resume_state is None else resume_state
        consumer = Consumer(self.consumer_config)
        partition = _DataPollPartition(consumer, topic, int(index), offset, self.settings, self.probe)
        if self.probe is not None:
            self.probe.watch(partition)
        return partition


class _DataPollPartition(StatefulSourcePartition[DecodedPoll, int]):
    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        partition: int,
        offset: int,
        settings: KafkaSettings,
        probe: LagProbe | None = None,
    ) -> None:
        consumer.assign([TopicPartition(topic, partition, offset)])
        self.consumer = consumer
        self.topic = topic
        self.partition = partition
        self.offset = offset  # the next one to read: the recovery state
        self.settings = settings
        self.ended = False
        self.probe = probe  # reads `offset` from its own thread

    def next_batch(self) -> list[DecodedPoll]:
        if self.ended:
            raise StopIteration()
        polled = self.consumer.consume(self.settings.poll_size, 0.001)
        messages: list[Message] = []
        covers_from: list[int] = []  # per message: the offset after the one read before it
        failed: list[Undecodable] = []
        for message in polled:
            error = message.error()
            if error is None:
                messages.append(message)
                covers_from.append(self.offset)
            elif error.code() == ConsumerError._PARTITION_EOF:
                self.ended = True  # the end of a bounded run: emit this poll, stop at the next
                break
            else:
                failed.append(
                    consumer_failure(
                        RECORD, self.settings, _source_message(message), error, self._covered(message)
                    )
                )
            offset = message.offset()
            if offset is not None and offset >= 0:
                self.offset = offset + 1
        if not messages and not failed:
            return []
        return [self._decoded(messages, covers_from, failed)]

    def _covered(self, message: Message) -> Covered | None:
        offset = message.offset()
        if offset is None or offset < 0:
            return None
        return Covered(self.partition, self.offset if 0 <= self.offset <= offset else offset, offset)

    def _decoded(
        self, messages: list[Message], covers_from: list[int], failed: list[Undecodable]
    ) -> DecodedPoll:
        entered_ns = time.time_ns()  # the poll's records entered the flow together
        topic, partition = self.topic, self.partition  # a poll reads one partition
        batch = []
        values = decode_records([message.value() for message in messages])
        for message, first, value in zip(messages, covers_from, values):
            # A consumed message has an offset, and its headers as (name, bytes) pairs (the stubs' types
            # also cover a message being produced).
            headers = cast("list[tuple[str, bytes]] | None", message.headers())
            origin = KafkaOrigin(
                topic,
                partition,
                cast(int, message.offset()),
                message.timestamp()[1],
                tuple(headers) if headers else (),
                first,
            )
            if isinstance(value, DecodeFailure):
                failed.append(
                    decode_failure(RECORD, self.settings, _source_message(message), value, origin.covered)
                )
                continue
            batch.append(DataMessage(value, entered_ns, origin))
        return DecodedPoll(batch, failed)

    def snapshot(self) -> int:
        return self.offset

    def hold_fetching(self, held: bool) -> None:
        """Pause (or resume) the consumer's fetching of this partition: while the flow waits for its first
        model (`flows.adapters.sources.model_gate`), librdkafka would otherwise fetch ahead what is not read,
        and a consumer of a broker that answers empty fetches at once spins (half a core here) beside the
        model's load. Reading resumes at `offset`, the next record not read."""
        partitions = [TopicPartition(self.topic, self.partition, self.offset)]
        if held:
            self.consumer.pause(partitions)
        else:
            self.consumer.resume(partitions)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.forget(self.partition)
        self.consumer.close()


def partition_names(config: dict[str, str], topic: str) -> list[str]:
    """The topic's partitions as Bytewax's KafkaSource names them ("<partition>-<topic>").

    Looked up with a consumer: Bytewax's KafkaSource uses an AdminClient, which is a producer inside and
    warns (CONFWARN) about every consumer setting in the configuration it is given.
    """
    consumer = Consumer({**config, "group.id": "BYTEWAX_IGNORED", "enable.auto.commit": "false"})
    try:
        metadata = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics[topic]
    finally:
        consumer.close()
    if metadata.error is not None:
        raise ConfigurationError(
            f"cannot list the partitions of Kafka topic {topic!r}: {metadata.error.str()}"
        )
    return [f"{index}-{topic}" for index in sorted(metadata.partitions)]


def _source_message(message: Message) -> KafkaSourceMessage:
    """A message that goes to the dead letters, in the form they are made from."""
    return KafkaSourceMessage(
        message.key(),
        message.value(),
        topic=message.topic(),
        headers=cast("list[tuple[str, bytes]]", message.headers() or []),  # as in `_decoded`
        partition=message.partition(),
        offset=message.offset(),
        timestamp=message.timestamp(),
    )
