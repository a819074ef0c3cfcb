"""A Kafka sink that no single message can kill, and that never gives up a message while the broker is away.

Bytewax's KafkaSink raises when one message is too large (the process exits, and after a restart it
meets the same message again: a crash loop) and drops, unreported, messages the broker refuses. Here every
message is produced with a delivery report and the batch is not done until each one is delivered (what happens
to a message → what the sink does):

- larger than the producer's `message.max.bytes` → replaced before producing by its smaller form (below)
- refused for itself: too large for the topic (`MSG_SIZE_TOO_LARGE`), `INVALID_RECORD`, `POLICY_VIOLATION`,
  ... → replaced by its smaller form, which is produced instead
- its smaller form refused for itself too → retried with backoff, logged at ERROR: a topic that refuses a
  few hundred bytes is misconfigured
- broker down, timed out, not enough replicas, unknown topic, not authorised, any other error → retried
  with backoff (1 s, doubling to 30 s), logged; the batch, and so the epoch, waits: its input offsets are not
  snapshotted, nothing is lost

A message's smaller form is made by the sink's `shrink` function, given by whoever builds the sink: a result
without the echoed input and scores, a dead letter with its value cut to 1 KiB. Replacements are counted and
logged with topic and reason.

A batch costs one delivery callback per message and one flush: messages are produced as they are, and
the few that fail are rebuilt from their delivery reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message, Producer

from flows.core.text import cut

log = logging.getLogger(__name__)

DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
# What a message costs beyond its key, value and headers, by librdkafka's reckoning (a safe upper bound).
RECORD_OVERHEAD = 512
PER_MESSAGE_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError._BAD_MSG,
        KafkaError._INVALID_ARG,
    }
)
FIRST_BACKOFF_S = 1.0
LONGEST_BACKOFF_S = 30.0


class SinkMessage(NamedTuple):
    """A message to produce: what Bytewax's SinkMessage holds, at a sixth of its cost to make (0.3 us
    instead of 2, once per result)."""

    key: bytes | None
    value: bytes | None
    topic: str | None = None  # None: the sink's topic
    headers: list[tuple[str, bytes]] | None = None  # a list or None: confluent-kafka refuses a tuple
    timestamp: int = 0  # ms since the epoch; 0: the producer's clock


Shrink = Callable[[SinkMessage, str], SinkMessage]


def message_size(message: SinkMessage) -> int:
    """Key, value and headers, plus a bound on the record's own overhead."""
    headers = sum(len(name) + len(value or b"") for name, value in message.headers) if message.headers else 0
    return len(message.key or b"") + len(message.value or b"") + headers + RECORD_OVERHEAD


@dataclass(frozen=True, slots=True)
class _Failure:
    message: SinkMessage
    smaller: bool  # whether it is already the smaller form
    error: KafkaError


class _ResilientPartition(StatelessSinkPartition[list[SinkMessage]]):
    def __init__(self, producer: Producer, topic: str, message_max_bytes: int, shrink: Shrink) -> None:
        self.producer = producer
        self.topic = topic
        self.message_max_bytes = message_max_bytes
        self.shrink = shrink
        self.replaced = 0
        self._failures: list[_Failure] = []

    def write_batch(self, batches: list[list[SinkMessage]]) -> None:
        # (message to send, whether it is already the smaller form)
        pending = [(message, False) for batch in batches for message in batch]
        backoff = FIRST_BACKOFF_S
        while pending:
            self._failures = []
            for message, smaller in pending:
                if not smaller and message_size(message) > self.message_max_bytes:
                    message, smaller = self._over_limit(message), True
                self._produce(message, smaller)
            self._flush()
            pending, waits = self._after(self._failures)
            if waits:
                time.sleep(backoff)
                backoff = min(LONGEST_BACKOFF_S, backoff * 2)

    def _over_limit(self, message: SinkMessage) -> SinkMessage:
        size = message_size(message)
        reason = f"{size:,} bytes, over the producer's message.max.bytes of {self.message_max_bytes:,}"
        return self._replace(message, reason)

    def _produce(self, message: SinkMessage, smaller: bool) -> None:
        try:
            self.producer.produce(
                message.topic or self.topic,
                value=message.value,
                key=message.key,
                # A list[tuple[str, bytes]] is one of the forms the stubs allow, but their list is invariant.
                headers=message.headers,  # type: ignore[arg-type]
                timestamp=message.timestamp,
                on_delivery=self._smaller_delivered if smaller else self._delivered,
            )
        except BufferError:
            self.producer.poll(0.5)  # the local queue is full: let deliveries drain, then try it again
            self._failures.append(_Failure(message, smaller, KafkaError(KafkaError._QUEUE_FULL)))
        except KafkaException as error:
            self._failures.append(_Failure(message, smaller, error.args[0]))
        # No poll per message: the flush after the batch serves the delivery reports (and a full local
        # queue is drained above), so a batch of a thousand results costs one poll, not a thousand.

    def _delivered(self, error: KafkaError | None, delivered: Message) -> None:
        if error is not None:
            self._failures.append(_Failure(_rebuilt(delivered), False, error))

    def _smaller_delivered(self, error: KafkaError | None, delivered: Message) -> None:
        if error is not None:
            self._failures.append(_Failure(_rebuilt(delivered), True, error))

    def _flush(self) -> None:
        started = next_report = time.monotonic()
        while self.producer.flush(1.0) > 0:
            if time.monotonic() >= next_report:
                waited = time.monotonic() - started
                log.warning(
                    "kafka sink: %d message(s) to %s not delivered yet after %.0f s (broker down?); waiting",
                    len(self.producer),
                    self.topic,
                    waited,
                )
                next_report += 10

    def _after(self, failures: list[_Failure]) -> tuple[list[tuple[SinkMessage, bool]], bool]:
        """What to send again: smaller forms of messages refused for themselves, the rest as they were."""
        again = []
        waits = False
        for failure in failures:
            message, error = failure.message, failure.error
            topic = message.topic or self.topic
            if error.code() in PER_MESSAGE_ERRORS and not failure.smaller:
                reason = f"refused by {topic}: {error.name()} ({error.str()})"
                again.append((self._replace(message, reason), True))
                continue
            waits = True
            level = logging.ERROR if error.code() in PER_MESSAGE_ERRORS else logging.WARNING
            log.log(
                level,
                "kafka sink: %s to %s failed, retrying: %s",
                "smaller form" if failure.smaller else "message",
                topic,
                error.str(),
            )
            again.append((message, failure.smaller))
        return again, waits

    def _replace(self, message: SinkMessage, reason: str) -> SinkMessage:
        self.replaced += 1
        log.warning(
            "kafka sink: message to %s replaced by its smaller form: %s",
            message.topic or self.topic,
            cut(reason, 300),
        )
        return self.shrink(message, cut(reason, 300))

    def close(self) -> None:
        self._flush()


def _rebuilt(delivered: Message) -> SinkMessage:
    """The message a delivery report is about, to be sent again (with the timestamp it was first given)."""
    kind, timestamp = delivered.timestamp()
    return SinkMessage(
        delivered.key(),
        delivered.value(),
        topic=delivered.topic(),
        # librdkafka gives a message's headers as (name, bytes) pairs; the stubs' type has produce()'s dict.
        headers=cast("list[tuple[str, bytes]]", delivered.headers() or []),
        timestamp=timestamp if kind != TIMESTAMP_NOT_AVAILABLE else 0,
    )


class ResilientKafkaSink(DynamicSink[list[SinkMessage]]):
    """Produce batches of messages to `topic` (or each message's own topic); a message the topic cannot take
    is replaced by `shrink(message, reason)`. See the module docstring."""

    def __init__(self, brokers: list[str], topic: str, config: dict[str, str], shrink: Shrink) -> None:
        self.brokers = brokers
        self.topic = topic
        self.config = config
        self.shrink = shrink

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ResilientPartition:
        config = {"bootstrap.servers": ",".join(self.brokers), **self.config}
        limit = int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        return _ResilientPartition(Producer(config), self.topic, limit, self.shrink)
