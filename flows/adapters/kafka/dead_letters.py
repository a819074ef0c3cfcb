"""Messages of the input topics that cannot be decoded: each becomes a dead letter (its original key, value
and headers, plus headers saying why and where it came from) and a DecodeFailure the flow reports."""

from __future__ import annotations

from dataclasses import dataclass

from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import KafkaError as ConsumerError

from flows.adapters.kafka.answered import Covered
from flows.adapters.kafka.headers import OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER, TOPIC_HEADER
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.kafka.sink import SinkMessage
from flows.core.records import DecodeFailure
from flows.core.text import cut
from flows.wire.avro import AvroCodec


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message that goes to the dead letters, and what the flow is told about it."""

    dead_letter: SinkMessage
    failure: DecodeFailure
    covered: Covered | None = None  # the data offsets it answers (None for a model message)


def decode_failure(
    codec: AvroCodec,
    settings: KafkaSettings,
    message: KafkaSourceMessage,
    failure: DecodeFailure,
    covered: Covered | None = None,
) -> Undecodable:
    """A message `codec` could not decode."""
    reason = f"{message.topic}[{message.partition}]@{message.offset}: {failure.reason}"
    return _undecodable(codec, settings, message, reason, covered)


def consumer_failure(
    codec: AvroCodec,
    settings: KafkaSettings,
    message: KafkaSourceMessage,
    error: ConsumerError,
    covered: Covered | None = None,
) -> Undecodable:
    """A message the consumer reported an error for."""
    return _undecodable(codec, settings, message, f"Kafka consumer error: {error.str()}", covered)


def _undecodable(
    codec: AvroCodec,
    settings: KafkaSettings,
    message: KafkaSourceMessage,
    reason: str,
    covered: Covered | None,
) -> Undecodable:
    where = [
        (REASON_HEADER, cut(reason).encode()),
        (TOPIC_HEADER, str(message.topic).encode()),
        (PARTITION_HEADER, str(message.partition).encode()),
        (OFFSET_HEADER, str(message.offset).encode()),
    ]
    letter = SinkMessage(
        message.key,
        message.value,
        topic=settings.dead_letters_topic,
        headers=[*(message.headers or ()), *where],
    )
    return Undecodable(letter, DecodeFailure(codec.name, reason, message.value), covered)
