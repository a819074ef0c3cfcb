"""The exactly-once sink (`SERVING_KAFKA_DELIVERY=exactly-once`): every data offset answered once, as a
`read_committed` consumer sees it, whatever happens to the flow.

Bytewax resumes from its last snapshot and replays what followed it: with a plain sink, the answers of a
snapshot interval come twice. Bytewax tells a sink nothing when a snapshot is safely stored, so the sink
remembers what it committed itself:

- one sink partition per data partition, each with a transactional producer whose `transactional.id` is
  stable (`PREFIX.TOPIC.PARTITION`, see `KafkaSettings.transactional_prefix`): a replacement process takes
  the same id, which aborts what the old one left open and fences it (its next produce or commit fails,
  and it stops);
- one transaction per partition and epoch: the answers (results, data dead letters, shadow results) of the
  epoch and a marker, the set of data offsets answered so far (`flows.adapters.kafka.answered`), written to
  the answered topic and committed when Bytewax snapshots the partition, before the snapshot is stored;
- when a partition starts (Bytewax builds it at its first answer), it takes its id and reads its newest
  committed marker, then drops every answer whose data offset the marker covers: a record replayed from an
  older snapshot, answered before the crash. Each data partition's markers go to partition
  `p % n` of the answered topic, so with as many answered partitions as data partitions no other id's
  open transaction can hold that read back.

A commit that fails for a reason that passes (broker away, timeout) is retried with backoff until it
succeeds; one the broker aborted is produced again from what the partition keeps of the open transaction;
a message refused for itself is replaced by its smaller form, as in `flows.adapters.kafka.sink`. A fenced
producer raises: the process is a zombie and must stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from flows.adapters.kafka.answered import AnsweredOffsets, Covered, Marker
from flows.adapters.kafka.data_source import partition_names
from flows.adapters.kafka.headers import REPLACED_HEADER
from flows.adapters.kafka.read_to_end import read_to_end
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.kafka.sink import (
    DEFAULT_MESSAGE_MAX_BYTES,
    FIRST_BACKOFF_S,
    LONGEST_BACKOFF_S,
    PER_MESSAGE_ERRORS,
    SinkMessage,
    message_size,
)
from flows.core.errors import ServingError
from flows.core.records import cut

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 10.0  # one try; a try that times out is tried again
REPORT_EVERY_S = 10.0
LOOKUP_TIMEOUT_S = 10.0
PARTITIONER_CHOOSES = -1  # librdkafka's RD_KAFKA_PARTITION_UA


class Answer(NamedTuple):
    """A message to write for data offsets `covered`; `answers` is False for a shadow result, which goes
    with its record's answer but answers nothing."""

    covered: Covered
    message: SinkMessage  # with its topic set: the sink writes to several
    answers: bool = True


def partition_key(partition: int) -> str:
    """The key that routes answers of data partition `partition` to its sink partition."""
    return str(partition)


class ProducerFenced(ServingError, RuntimeError):
    """A newer process took this partition's transactional id: this one must stop writing."""


class ExactlyOnceSink(FixedPartitionedSink[list[Answer], None]):
    """Batches of answers keyed by data partition (`partition_key`), written in transactions; see the
    module docstring. `shrink(message, reason)` makes a message's smaller form (by its topic)."""

    def __init__(
        self,
        settings: KafkaSettings,
        producer_config: dict[str, str],
        consumer_config: dict[str, str],
        shrink: Callable[[SinkMessage, str], SinkMessage],
    ) -> None:
        self.settings = settings
        self.producer_config = producer_config
        self.consumer_config = {"bootstrap.servers": settings.bootstrap_servers, **consumer_config}
        self.shrink = shrink

    def list_parts(self) -> list[str]:
        names = partition_names(self.consumer_config, self.settings.data_topic)
        # Zero-padded: Bytewax orders the parts by name, and `part_fn` indexes that order by partition.
        return [f"{int(name.split('-', 1)[0]):06d}" for name in names]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TransactionalPartition:
        partition = int(for_part)
        transactional_id = f"{self.settings.transactional_prefix}.{self.settings.data_topic}.{partition}"
        config = {
            "bootstrap.servers": self.settings.bootstrap_servers,
            **self.producer_config,
            "transactional.id": transactional_id,
        }
        producer = Producer(config)
        _init_transactions(producer, transactional_id)  # aborts what a previous holder of the id left open
        # Each data partition's markers go to an answered partition of their own (if the topic has as many
        # partitions as the data topic): a transaction another id left open there cannot hold the read back.
        marker_partition = partition % answered_partitions(self.consumer_config, self.settings.answered_topic)
        committed = read_committed_marker(
            self.consumer_config,
            self.settings.answered_topic,
            marker_partition,
            transactional_id,
        )
        if committed is not None and (committed.topic, committed.partition) != (
            self.settings.data_topic,
            partition,
        ):
            raise ValueError(
                f"{step_id}: the marker of {transactional_id} in {self.settings.answered_topic} is for "
                f"{committed.topic}[{committed.partition}], not {self.settings.data_topic}[{partition}]"
            )
        answered = committed.answered if committed is not None else AnsweredOffsets()
        log.info("%s: answered before this start: %s", transactional_id, _ranges_text(answered))
        limit = int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        return _TransactionalPartition(
            producer,
            transactional_id,
            self.settings,
            (partition, marker_partition),
            answered,
            limit,
            self.shrink,
        )


class _TransactionalPartition(StatefulSinkPartition[list[Answer], None]):
    def __init__(
        self,
        producer: Producer,
        transactional_id: str,
        settings: KafkaSettings,
        partitions: tuple[int, int],
        committed: AnsweredOffsets,
        message_max_bytes: int,
        shrink: Callable[[SinkMessage, str], SinkMessage],
    ) -> None:
        self.producer = producer
        self.transactional_id = transactional_id
        self.data_topic = settings.data_topic
        self.answered_topic = settings.answered_topic
        self.partition, self.marker_partition = partitions  # the data partition, its answered partition
        self.committed = committed  # before this run: answers it covers are dropped
        self.answered = committed.copy()  # the same, and what this run produced
        self.message_max_bytes = message_max_bytes
        self.shrink = shrink
        self.open = False
        self.pending: list[SinkMessage] = []  # the open transaction's messages, to produce again if aborted
        # (topic, value) of each message the broker refused -> why: matched to `pending` if it is aborted
        self.refused: dict[tuple[str, bytes | None], KafkaError] = {}
        self.dropped = 0
        self.replaced = 0

    def write_batch(self, values: list[list[Answer]]) -> None:
        committed, answered = self.committed, self.answered
        for batch in values:
            for covered, message, answers in batch:
                if covered.partition != self.partition:
                    raise RuntimeError(
                        f"{self.transactional_id}: an answer for {self.data_topic}[{covered.partition}]@"
                        f"{covered.last} reached the sink partition of partition {self.partition}"
                    )
                if committed.covers(covered.last):
                    self.dropped += 1  # answered and committed before the restart
                    continue
                if message_size(message) > self.message_max_bytes:
                    size = message_size(message)
                    reason = (
                        f"{size:,} bytes, over the producer's message.max.bytes of {self.message_max_bytes:,}"
                    )
                    message = self._replace(message, reason)
                self._produce(message)
                if answers:
                    answered.add(covered.first, covered.last)

    def snapshot(self) -> None:
        # The state that matters is in Kafka, committed here before Bytewax stores its snapshot.
        self._commit()

    def close(self) -> None:
        self._commit()
        if self.dropped:
            log.info(
                "%s: %d answer(s) dropped, committed before a restart", self.transactional_id, self.dropped
            )

    def _produce(self, message: SinkMessage) -> None:
        if not self.open:
            try:
                self.producer.begin_transaction()
            except KafkaException as error:
                self._raise_if_fatal(error.args[0])
                raise
            self.open = True
        self.pending.append(message)
        self._send(message, self._delivered)

    def _send(
        self,
        message: SinkMessage,
        on_delivery: Callable[[KafkaError | None, Message], None],
        partition: int = PARTITIONER_CHOOSES,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    message.topic,
                    partition=partition,
                    value=message.value,
                    key=message.key,
                    headers=message.headers,
                    timestamp=message.timestamp,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                self.producer.poll(0.5)  # the local queue is full: let deliveries drain, then try again
            except KafkaException as error:
                self._raise_if_fatal(error.args[0])
                raise

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.refused[(message.topic(), message.value())] = error

    def _commit(self) -> None:
        if not self.open:
            return
        marker = Marker(self.data_topic, self.partition, self.answered).encode()
        self._send(
            SinkMessage(self.transactional_id.encode(), marker, topic=self.answered_topic),
            _ignore_delivery,
            self.marker_partition,
        )
        backoff = FIRST_BACKOFF_S
        started = next_report = time.monotonic()
        while True:
            try:
                self.producer.commit_transaction(COMMIT_TIMEOUT_S)
                break
            except KafkaException as raised:
                error = raised.args[0]
                self._raise_if_fatal(error)
                if time.monotonic() >= next_report:
                    log.warning(
                        "%s: commit of %d message(s) not done after %.0f s, trying again: %s",
                        self.transactional_id,
                        len(self.pending),
                        time.monotonic() - started,
                        error.str(),
                    )
                    next_report += REPORT_EVERY_S
                if not error.retriable():
                    self._again(error)  # aborted: produce the transaction anew
                time.sleep(backoff)
                backoff = min(LONGEST_BACKOFF_S, backoff * 2)
        self.open = False
        self.pending = []
        self.refused = {}

    def _again(self, error: KafkaError) -> None:
        """Abort the transaction and produce it again, with the smaller form of each message refused for
        itself (the others failed because the transaction did)."""
        if not error.txn_requires_abort():
            raise RuntimeError(f"{self.transactional_id}: commit failed and cannot be retried: {error.str()}")
        self._abort()
        pending, refused = self.pending, self.refused
        for index, message in enumerate(pending):
            why = refused.get((message.topic, message.value))
            if (
                why is not None
                and why.code() in PER_MESSAGE_ERRORS
                and REPLACED_HEADER not in dict(message.headers or [])
            ):
                reason = f"refused by {message.topic}: {why.name()} ({why.str()})"
                pending[index] = self._replace(message, reason)
        self.pending, self.refused = [], {}
        self.open = False
        for message in pending:
            self._produce(message)
        marker = Marker(self.data_topic, self.partition, self.answered).encode()
        self._send(
            SinkMessage(self.transactional_id.encode(), marker, topic=self.answered_topic),
            _ignore_delivery,
            self.marker_partition,
        )

    def _abort(self) -> None:
        while True:
            try:
                self.producer.abort_transaction(COMMIT_TIMEOUT_S)
                return
            except KafkaException as raised:
                self._raise_if_fatal(raised.args[0])
                log.warning("%s: abort failed, trying again: %s", self.transactional_id, raised.args[0].str())
                time.sleep(FIRST_BACKOFF_S)

    def _raise_if_fatal(self, error: KafkaError) -> None:
        if error.fatal():
            message = (
                f"{self.transactional_id}: the producer can no longer write ({error.str()}); another process "
                "has taken this data partition's transactional id, so this one stops"
            )
            log.error("%s", message)  # said here too: Bytewax may abort without showing the exception
            raise ProducerFenced(message)

    def _replace(self, message: SinkMessage, reason: str) -> SinkMessage:
        self.replaced += 1
        log.warning(
            "%s: message to %s replaced by its smaller form: %s",
            self.transactional_id,
            message.topic,
            cut(reason, 300),
        )
        return self.shrink(message, cut(reason, 300))


def _init_transactions(producer: Producer, transactional_id: str) -> None:
    """Take the transactional id (fencing its previous holder), waiting out a broker that is away."""
    started = time.monotonic()
    while True:
        try:
            producer.init_transactions(COMMIT_TIMEOUT_S)
            return
        except KafkaException as raised:
            error = raised.args[0]
            if error.fatal() or not error.retriable():
                raise RuntimeError(
                    f"{transactional_id}: cannot start transactions ({error.str()}); exactly-once needs a "
                    "broker with transactions (Kafka 0.11 or later, transaction.state.log.* set)"
                ) from None
            log.warning(
                "%s: waiting %.0f s to start transactions: %s",
                transactional_id,
                time.monotonic() - started,
                error.str(),
            )


def answered_partitions(config: dict[str, str], topic: str) -> int:
    """How many partitions the answered topic has (RuntimeError naming it if it cannot be read)."""
    consumer = Consumer({**config, "group.id": "BYTEWAX_IGNORED", "enable.auto.commit": "false"})
    try:
        metadata = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics[topic]
    finally:
        consumer.close()
    if metadata.error is not None or not metadata.partitions:
        why = metadata.error.str() if metadata.error is not None else "no partitions"
        raise RuntimeError(
            f"exactly-once delivery: cannot use the answered topic {topic!r} ({why}); create it, compacted, "
            "with as many partitions as the data topic (SERVING_KAFKA_ANSWERED_TOPIC)"
        )
    return len(metadata.partitions)


def read_committed_marker(
    config: dict[str, str],
    topic: str,
    partition: int,
    transactional_id: str,
) -> Marker | None:
    """The answered offsets committed under `transactional_id` so far (all its markers in `partition` of
    `topic`, merged), or None if it never committed. The whole partition is read: compacted, it holds
    one marker per id and the tail not compacted yet (and a read started at a marker's own offset was seen
    to miss it on the test broker).

    Reads as `read_committed` up to the end the partition had when called (`flows.adapters.kafka.read_to_end`):
    a transaction left open there by another id holds that end back until the id is taken again or the
    broker times it out, and the read waits for it rather than miss a newer marker behind it.
    """
    key = transactional_id.encode()
    merged: Marker | None = None
    for message in read_to_end(config, topic, "read_committed", partitions={partition}):
        if message.key() == key:
            merged = _merged(merged, message, transactional_id)
    return merged


def _merged(merged: Marker | None, message: Message, transactional_id: str) -> Marker | None:
    """`merged` with the marker in `message` added (each marker only grows the set: the union is the newest)."""
    try:
        marker = Marker.decode(message.value() or b"")
    except ValueError as error:
        # Kept from the count, not fatal: ignoring a bad marker can repeat answers, never lose one.
        log.error(
            "%s: marker at %s[%d]@%d ignored: %s",
            transactional_id,
            message.topic(),
            message.partition(),
            message.offset(),
            error,
        )
        return merged
    if merged is None:
        return marker
    marker.answered.update(merged.answered)
    return marker


def _ranges_text(answered: AnsweredOffsets) -> str:
    if not len(answered):
        return "nothing"
    shown = ", ".join(f"{first}-{last}" for first, last in answered.to_json()[:5])
    return f"offsets {shown}" + (f" and {len(answered) - 5} more ranges" if len(answered) > 5 else "")


def _ignore_delivery(error: KafkaError | None, message: Message) -> None:
    """A marker's delivery: a failure fails the commit, which is where it is handled."""
