"""The exactly-once sink (`SERVING_KAFKA_DELIVERY=exactly-once`): every data offset answered once, as a
`read_committed` consumer sees it, whatever happens to the flow.

Bytewax resumes from its last snapshot and replays what followed it: with a plain sink, the answers of a
snapshot interval come twice. Bytewax tells a sink nothing when a snapshot is safely stored, so the sink
remembers what it committed itself:

- one sink partition per data partition, each with a transactional producer whose `transactional.id` is
  stable (`PREFIX.TOPIC.PARTITION`, see `KafkaSettings.transactional_prefix`): a replacement process takes
  the same id, which aborts what the old one left open and fences it (its next produce or commit fails,
  and it stops);
- one transaction open per partition at a time: answers (results, data dead letters, shadow results) and a
  marker, the set of data offsets answered so far (`flows.adapters.kafka.answered`), written to the
  answered topic. It is committed when Bytewax snapshots the partition, before the snapshot is stored, and
  also once it has been open `SERVING_KAFKA_COMMIT_INTERVAL` seconds, so that a reader sees answers in a
  tenth of a second, not an epoch: checked as answers arrive, and by a thread of the partition's own
  (`_CommitClock`) while none do, so a partition that goes quiet is not left waiting for the snapshot. A
  lock keeps that thread's commits and the worker's calls apart. With shadow results, only at snapshots:
  a shadow result answers no offset, so the marker cannot say whether it was committed, and it must share
  its record's answer's transaction, which only an epoch's end is sure of;
- when a partition starts (Bytewax builds it at its first answer), it takes its id and reads its newest
  committed marker, then drops every answer whose data offset the marker covers: a record replayed from an
  older snapshot, answered before the crash. Each data partition's markers go to partition
  `p % n` of the answered topic, so with as many answered partitions as data partitions no other id's
  open transaction can hold that read back.

Why committing between snapshots is safe: the markers, not the epoch, decide what is answered. A crash
after a commit and before the next snapshot resumes from the snapshot before that commit and replays the
records after it; the newest committed marker covers every answer committed, so those replayed records'
answers are dropped, and records answered but not committed (their transaction aborted when the id is
taken again) are answered anew. What the snapshot must still wait for is its own commit: a snapshot stored
with answers still open would resume past records whose answers the abort then discards. A process that
takes the id fences the old one before it reads the marker, so no commit can land behind that read.

A commit that fails for a reason that passes (broker away, timeout) is retried with backoff until it
succeeds; one the broker aborted is produced again from what the partition keeps of the open transaction;
a message refused for itself is replaced by its smaller form, as in `flows.adapters.kafka.sink`.

A fatal producer error is one of two things, told apart by its code. Fenced (`PRODUCER_FENCED`,
`INVALID_PRODUCER_EPOCH`, librdkafka's `_FENCED`): a newer process holds the id, this one is a zombie, and
it ends (exit status `EXIT_FENCED`) saying so. Anything else (a broker that restarted and lost the
producer's state: `OUT_OF_ORDER_SEQUENCE_NUMBER`, `UNKNOWN_PRODUCER_ID`; a topic deleted under it): the
partition starts a new producer under the same id, which aborts the open transaction, and produces that
transaction again; after `MAX_RENEWALS` in a row it ends (`EXIT_PRODUCER_FAILED`) naming the error. Either
way the process ends with one line that says why, not a Rust panic: a restart resumes from the last
snapshot, and the markers keep what was committed from being answered twice.

At start, a partition reads the markers under its id and keeps the newest one that is signed with the
flow's key (`flows.adapters.kafka.answered`), names this id, topic and partition, and claims no offset at
or past the data partition's end. Every other is skipped with a warning naming its offset and why, never
fatal: skipping a marker can repeat answers, never lose one. A transaction another producer left open on
the answered partition is waited for `SERVING_KAFKA_ANSWERED_WAIT` seconds, then named and passed by.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple, NoReturn

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from flows.adapters.kafka.answered import MARKER_RANGES, AnsweredOffsets, Covered, Marker
from flows.adapters.kafka.data_source import partition_names
from flows.adapters.kafka.headers import REPLACED_HEADER
from flows.adapters.kafka.read_to_end import StillOpen, read_to_end
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.kafka.sink import (
    DEFAULT_MESSAGE_MAX_BYTES,
    FIRST_BACKOFF_S,
    LONGEST_BACKOFF_S,
    PER_MESSAGE_ERRORS,
    SinkMessage,
    message_size,
)
from flows.core.errors import ConfigurationError, ServingError
from flows.core.text import cut

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 10.0  # one try; a try that times out is tried again
REPORT_EVERY_S = 10.0
LOOKUP_TIMEOUT_S = 10.0
PARTITIONER_CHOOSES = -1  # librdkafka's RD_KAFKA_PARTITION_UA
MAX_RENEWALS = 3  # new producers in a row, without a commit between, before the process gives up
SKIPPED_SHOWN = 5  # markers skipped at a start that are logged one by one (then a count)
EXIT_FENCED = 3
EXIT_PRODUCER_FAILED = 4
# A newer producer holds the transactional id (librdkafka's own code, and the brokers').
FENCING_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class Answer(NamedTuple):
    """A message to write for data offsets `covered`; `answers` is False for a shadow result, which goes
    with its record's answer but answers nothing."""

    covered: Covered
    message: SinkMessage  # with its topic set: the sink writes to several
    answers: bool = True


def partition_key(partition: int) -> str:
    """The key that routes answers of data partition `partition` to its sink partition."""
    return str(partition)


class _ProducerLost(ServingError):
    """The producer hit a fatal error that is not fencing: a new producer under the same id can go on."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(f"{error.name()}: {error.str()}")
        self.error = error


def end_process(message: str, status: int) -> NoReturn:
    """Say why on one line, then end the process at once: it must not write again, and an exception would
    reach Bytewax's runtime as a panic with the reason buried in it. Recovery sees a kill -9."""
    log.error("%s", message)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


class ExactlyOnceSink(FixedPartitionedSink[list[Answer], None]):
    """Batches of answers keyed by data partition (`partition_key`), written in transactions; see the
    module docstring. `shrink(message, reason)` makes a message's smaller form (by its topic); `marker_key`
    signs and checks the markers (`flows.adapters.kafka.answered.marker_key`)."""

    def __init__(
        self,
        settings: KafkaSettings,
        producer_config: dict[str, str],
        consumer_config: dict[str, str],
        shrink: Callable[[SinkMessage, str], SinkMessage],
        marker_key: bytes,
    ) -> None:
        self.settings = settings
        self.producer_config = producer_config
        self.consumer_config = {"bootstrap.servers": settings.bootstrap_servers, **consumer_config}
        self.shrink = shrink
        self.marker_key = marker_key

    def list_parts(self) -> list[str]:
        names = partition_names(self.consumer_config, self.settings.data_topic)
        # Zero-padded: Bytewax orders the parts by name, and `part_fn` indexes that order by partition.
        return [f"{int(name.split('-', 1)[0]):06d}" for name in names]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TransactionalPartition:
        settings = self.settings
        partition = int(for_part)
        transactional_id = f"{settings.transactional_prefix}.{settings.data_topic}.{partition}"
        config = {
            "bootstrap.servers": settings.bootstrap_servers,
            **self.producer_config,
            "transactional.id": transactional_id,
        }

        def new_producer() -> Producer:
            # Taking the id aborts what a previous holder of the id left open, and fences it.
            return _transactional_producer(config, transactional_id)

        producer = new_producer()
        # Each data partition's markers go to an answered partition of their own (if the topic has as many
        # partitions as the data topic): a transaction another id left open there cannot hold the read back.
        marker_partition = partition % answered_partitions(self.consumer_config, settings.answered_topic)
        expected = MarkerScope(transactional_id, settings.data_topic, partition)
        committed = read_committed_marker(
            self.consumer_config,
            settings.answered_topic,
            marker_partition,
            expected,
            self.marker_key,
            data_end=data_end_offset(self.consumer_config, settings.data_topic, partition),
            max_wait_s=settings.answered_wait,
        )
        answered = committed.answered if committed is not None else AnsweredOffsets()
        log.info("%s: answered before this start: %s", transactional_id, _ranges_text(answered))
        limit = int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        return _TransactionalPartition(
            new_producer,
            producer,
            expected,
            settings,
            marker_partition,
            answered,
            limit,
            self.shrink,
            self.marker_key,
        )


class MarkerScope(NamedTuple):
    """Whose markers a partition writes and accepts: its transactional id, data topic and partition."""

    transactional_id: str
    topic: str
    partition: int


class _TransactionalPartition(StatefulSinkPartition[list[Answer], None]):
    def __init__(
        self,
        new_producer: Callable[[], Producer],
        producer: Producer,
        scope: MarkerScope,
        settings: KafkaSettings,
        marker_partition: int,
        committed: AnsweredOffsets,
        message_max_bytes: int,
        shrink: Callable[[SinkMessage, str], SinkMessage],
        marker_key: bytes,
    ) -> None:
        self.new_producer = new_producer
        self.producer = producer
        self.scope = scope
        self.transactional_id = scope.transactional_id
        self.partition = scope.partition  # the data partition
        self.answered_topic = settings.answered_topic
        self.marker_partition = marker_partition
        self.committed = committed  # before this run: answers it covers are dropped
        self.answered = committed.copy()  # the same, and what this run produced
        self.message_max_bytes = message_max_bytes
        self.shrink = shrink
        self.marker_key = marker_key
        # Between snapshots only without shadow results: a record's shadow result answers nothing, so the
        # marker cannot tell whether it was committed; it must share a transaction with its record's answer,
        # and only a snapshot's commit (both come from the same epoch) is sure to hold both.
        self.commit_interval = None if settings.shadow_results_topic else settings.commit_interval
        self.open = False
        self.opened_at = 0.0  # time.monotonic() when the open transaction began
        self.pending: list[SinkMessage] = []  # the open transaction's messages, to produce again if aborted
        # (topic, value) of each message the broker refused -> why: matched to `pending` if it is aborted
        self.refused: dict[tuple[str | None, bytes | None], KafkaError] = {}
        self.renewals = 0  # new producers since the last commit
        self.dropped = 0
        self.replaced = 0
        self.commits = 0  # what exactly-once cost this partition, logged at close
        self.commit_seconds = 0.0  # time in commits: the worker's, and the clock's under the lock
        self.marker_bytes = 0
        # The worker's calls and the commit clock's commits, one at a time.
        self.lock = threading.Lock()
        self.clock = _CommitClock(self)

    def write_batch(self, values: list[list[Answer]]) -> None:
        with self.lock:
            self.clock.raise_failure()
            self._write(values)
            self.commit_if_due()

    def _write(self, values: list[list[Answer]]) -> None:
        committed, answered = self.committed, self.answered
        for batch in values:
            for covered, message, answers in batch:
                if covered.partition != self.partition:
                    raise ServingError(
                        f"{self.transactional_id}: an answer for {self.scope.topic}[{covered.partition}]@"
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

    def commit_if_due(self) -> None:
        """Commit the open transaction if it has been open the commit interval: answers wait for a commit
        to be seen, not longer than that. Called with the lock held."""
        interval = self.commit_interval
        if interval is not None and self.open and time.monotonic() - self.opened_at >= interval:
            self._commit()

    def snapshot(self) -> None:
        # The state that matters is in Kafka, committed here before Bytewax stores its snapshot.
        with self.lock:
            self.clock.raise_failure()
            self._commit()

    def close(self) -> None:
        self.clock.stop()
        with self.lock:
            self._commit()
        if self.dropped:
            log.info(
                "%s: %d answer(s) dropped, committed before a restart", self.transactional_id, self.dropped
            )
        log.info(
            "%s: %d commit(s) taking %.2f s in all, %d marker bytes",
            self.transactional_id,
            self.commits,
            self.commit_seconds,
            self.marker_bytes,
        )

    def _produce(self, message: SinkMessage) -> None:
        """Add `message` to the open transaction (opening one), on a new producer if this one is lost."""
        try:
            self._produce_on_this_producer(message)
        except _ProducerLost as lost:
            self._renew(lost.error)  # produces `pending`, this message included, on the new producer

    def _produce_on_this_producer(self, message: SinkMessage) -> None:
        self.pending.append(message)
        if not self.open:
            self._call(self.producer.begin_transaction)
            self.open = True
            self.opened_at = time.monotonic()
        self._send(message, self._delivered)

    def _send(
        self,
        message: SinkMessage,
        on_delivery: Callable[[KafkaError | None, Message], None],
        partition: int = PARTITIONER_CHOOSES,
    ) -> None:
        while True:
            try:
                self._call(
                    self.producer.produce,
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

    def _call(self, method: Callable[..., object], *args: object, **kwargs: object) -> object:
        """`method` of the producer; a fatal error ends a fenced process, and is `_ProducerLost` otherwise."""
        try:
            return method(*args, **kwargs)
        except KafkaException as raised:
            error = raised.args[0]
            if error.fatal():
                if error.code() in FENCING_CODES:
                    end_process(
                        f"{self.transactional_id}: fenced ({error.name()}): another process has taken this "
                        "data partition's transactional id, so this one stops",
                        EXIT_FENCED,
                    )
                raise _ProducerLost(error) from None
            raise

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.refused[(message.topic(), message.value())] = error

    def _send_marker(self) -> None:
        """The marker of what is answered so far, into the open transaction; the oldest ranges forgotten
        past MARKER_RANGES (which can repeat an old answer after a restart, never drop one)."""
        forgotten = self.answered.forget_oldest(MARKER_RANGES)
        if forgotten:
            log.warning(
                "%s: the answered set has more than %d ranges (records held in many places at once); the "
                "%d oldest are forgotten, so their answers may come again after a restart",
                self.transactional_id,
                MARKER_RANGES,
                forgotten,
            )
        marker = Marker(*self.scope, self.answered).encode(self.marker_key)
        self.marker_bytes += len(marker)
        message = SinkMessage(self.transactional_id.encode(), marker, topic=self.answered_topic)
        self._send(message, _ignore_delivery, self.marker_partition)

    def _commit(self) -> None:
        if not self.open:
            return
        backoff = FIRST_BACKOFF_S
        started = next_report = time.monotonic()
        aborted = False  # the broker aborted the transaction: produce it again first
        marker_sent = False
        while True:
            try:
                if aborted:
                    self._again()
                    aborted, marker_sent = False, False
                if not marker_sent:
                    self._send_marker()
                    marker_sent = True
                self._call(self.producer.commit_transaction, COMMIT_TIMEOUT_S)
                break
            except _ProducerLost as lost:
                self._renew(lost.error)
                aborted, marker_sent = False, False
                continue
            except KafkaException as raised:
                error = raised.args[0]
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
                    if not error.txn_requires_abort():
                        end_process(
                            f"{self.transactional_id}: commit failed and cannot be retried "
                            f"({error.name()}: {error.str()})",
                            EXIT_PRODUCER_FAILED,
                        )
                    aborted = True
            time.sleep(backoff)
            backoff = min(LONGEST_BACKOFF_S, backoff * 2)
        self.open = False
        self.pending = []
        self.refused = {}
        self.renewals = 0
        self.commits += 1
        self.commit_seconds += time.monotonic() - started

    def _again(self) -> None:
        """Abort the transaction and produce it again, with the smaller form of each message refused for
        itself (the others failed because the transaction did); the caller sends the marker."""
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
            self._produce_on_this_producer(message)

    def _abort(self) -> None:
        while True:
            try:
                self._call(self.producer.abort_transaction, COMMIT_TIMEOUT_S)
                return
            except KafkaException as raised:
                log.warning("%s: abort failed, trying again: %s", self.transactional_id, raised.args[0].str())
                time.sleep(FIRST_BACKOFF_S)

    def _renew(self, error: KafkaError) -> None:
        """A new producer under the same id (which aborts the open transaction), and the open transaction
        produced again on it; the process ends after MAX_RENEWALS in a row without a commit."""
        while True:
            self.renewals += 1
            if self.renewals > MAX_RENEWALS:
                end_process(
                    f"{self.transactional_id}: the producer failed {MAX_RENEWALS + 1} times without a commit "
                    f"between ({error.name()}: {error.str()}); ending the process, which resumes from its "
                    "last snapshot when restarted",
                    EXIT_PRODUCER_FAILED,
                )
            log.warning(
                "%s: the producer cannot go on (%s: %s), though no other process took its id (a broker "
                "that lost the producer's state, a topic deleted): a new producer produces the open "
                "transaction's %d message(s) again",
                self.transactional_id,
                error.name(),
                error.str(),
                len(self.pending),
            )
            self.producer = self.new_producer()
            pending = self.pending
            self.pending, self.refused, self.open = [], {}, False
            try:
                for message in pending:
                    self._produce_on_this_producer(message)
                return
            except _ProducerLost as lost:
                self.pending, error = pending, lost.error

    def _replace(self, message: SinkMessage, reason: str) -> SinkMessage:
        self.replaced += 1
        log.warning(
            "%s: message to %s replaced by its smaller form: %s",
            self.transactional_id,
            message.topic,
            cut(reason, 300),
        )
        return self.shrink(message, cut(reason, 300))


class _CommitClock:
    """Commits a partition's open transaction once it is due while no answers arrive to do it: a thread that
    looks every quarter interval. A failure it meets (not one that ends the process) is raised in the
    worker at its next call, as if the worker had committed."""

    def __init__(self, partition: _TransactionalPartition) -> None:
        self.partition = partition
        self.failure: Exception | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"commit clock {partition.transactional_id}", daemon=True
        )
        if partition.commit_interval is not None:  # else it commits at snapshots only
            self.thread.start()

    def _run(self) -> None:
        partition = self.partition
        assert partition.commit_interval is not None  # started only with one
        while not self.stopped.wait(partition.commit_interval / 4):
            with partition.lock:
                try:
                    partition.commit_if_due()
                # Any failure, handed to the worker, which fails as its own commit would have.
                except Exception as failure:  # noqa: BLE001
                    self.failure = failure
                    return

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()


def _transactional_producer(config: dict[str, str], transactional_id: str) -> Producer:
    """A producer that has taken the transactional id (fencing its previous holder), waiting out a broker
    that is away; the process ends naming the reason if the broker cannot give it transactions."""
    producer = Producer(config)
    started = time.monotonic()
    while True:
        try:
            producer.init_transactions(COMMIT_TIMEOUT_S)
            return producer
        except KafkaException as raised:
            error = raised.args[0]
            if error.fatal() or not error.retriable():
                end_process(
                    f"{transactional_id}: cannot start transactions ({error.name()}: {error.str()}); "
                    "exactly-once needs a broker with transactions (Kafka 0.11 or later, "
                    "transaction.state.log.* set) and the right to use this transactional id",
                    EXIT_PRODUCER_FAILED,
                )
            log.warning(
                "%s: waiting %.0f s to start transactions: %s",
                transactional_id,
                time.monotonic() - started,
                error.str(),
            )


def answered_partitions(config: dict[str, str], topic: str) -> int:
    """How many partitions the answered topic has (ServingError naming it if it cannot be read)."""
    consumer = Consumer({**config, "group.id": "BYTEWAX_IGNORED", "enable.auto.commit": "false"})
    try:
        metadata = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics[topic]
    finally:
        consumer.close()
    if metadata.error is not None or not metadata.partitions:
        why = metadata.error.str() if metadata.error is not None else "no partitions"
        raise ExactlyOnceSetupError(
            f"exactly-once delivery: cannot use the answered topic {topic!r} ({why}); create it, compacted, "
            "with as many partitions as the data topic (SERVING_KAFKA_ANSWERED_TOPIC)"
        )
    return len(metadata.partitions)


class ExactlyOnceSetupError(ConfigurationError):
    """Exactly-once delivery cannot start: what it needs from the broker or the settings is missing."""


def data_end_offset(config: dict[str, str], topic: str, partition: int) -> int:
    """The data partition's end offset as the broker says now: no answered offset can lie at or past it."""
    consumer = Consumer(
        {
            **config,
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=LOOKUP_TIMEOUT_S, cached=False
        )
    finally:
        consumer.close()
    return high


def read_committed_marker(
    config: dict[str, str],
    topic: str,
    partition: int,
    scope: MarkerScope,
    key: bytes,
    data_end: int,
    max_wait_s: float | None = None,
) -> Marker | None:
    """The newest committed marker of `scope` in `partition` of `topic` that the flow's `key` signed and
    that claims no offset at or past `data_end`, or None. Each marker holds the whole set answered when it
    was committed, so the newest valid one is all there is to know; any other message under the id is
    skipped with a warning (see the module docstring). The whole partition is read: compacted, it holds
    one marker per id and the tail not compacted yet (and a read started at a marker's own offset was seen
    to miss it on the test broker).

    Reads as `read_committed` up to the end the partition had when called
    (`flows.adapters.kafka.read_to_end`): a transaction left open there by another producer holds that end
    back; it is waited for `max_wait_s`, then named, and the markers read so far are used.
    """
    newest: Marker | None = None
    skipped = 0
    for message in _messages_of(config, topic, partition, scope.transactional_id, max_wait_s):
        marker, why = _checked(message, scope, key, data_end)
        if marker is not None:
            newest = marker
            continue
        skipped += 1
        if skipped <= SKIPPED_SHOWN:
            log.warning(
                "%s: message at %s[%d]@%d skipped, not a marker of this flow's: %s",
                scope.transactional_id,
                message.topic(),
                message.partition(),
                message.offset(),
                why,
            )
    if skipped > SKIPPED_SHOWN:
        log.warning("%s: %d messages under its key skipped in all", scope.transactional_id, skipped)
    return newest


def _messages_of(
    config: dict[str, str], topic: str, partition: int, transactional_id: str, max_wait_s: float | None
) -> Iterator[Message]:
    """The messages keyed by `transactional_id` in the partition, read to its end or as far as an open
    transaction lets the read go in `max_wait_s`."""
    key = transactional_id.encode()
    try:
        for message in read_to_end(config, topic, "read_committed", {partition}, max_wait_s):
            if message.key() == key:
                yield message
    except StillOpen as still_open:
        log.warning(
            "%s: %s; starting from the markers read before it (answers behind it may be repeated, none lost)",
            transactional_id,
            still_open,
        )


def _checked(message: Message, scope: MarkerScope, key: bytes, data_end: int) -> tuple[Marker | None, str]:
    """The marker in `message` if it is one of `scope`'s (signed, same id, topic and partition, below the
    data's end), else None and why not."""
    try:
        marker = Marker.decode(message.value() or b"", key)
    except ValueError as error:
        return None, str(error)
    found = MarkerScope(marker.transactional_id, marker.topic, marker.partition)
    if found != scope:
        return None, f"signed, but for {found.transactional_id} ({found.topic}[{found.partition}])"
    if marker.answered.last >= data_end:
        return None, (
            f"claims offset {marker.answered.last:,}, past the end of {scope.topic}[{scope.partition}] "
            f"({data_end:,}): the data topic was recreated or truncated"
        )
    return marker, ""


def _ranges_text(answered: AnsweredOffsets) -> str:
    if not len(answered):
        return "nothing"
    shown = ", ".join(f"{first}-{last}" for first, last in answered.to_json()[:5])
    return f"offsets {shown}" + (f" and {len(answered) - 5} more ranges" if len(answered) > 5 else "")


def _ignore_delivery(error: KafkaError | None, message: Message) -> None:
    """A marker's delivery: a failure fails the commit, which is where it is handled."""
