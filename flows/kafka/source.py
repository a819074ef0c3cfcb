"""Kafka inputs of the serving flow: Avro messages in, dead letters for what does not decode.

Data and model topics are read with Bytewax's KafkaSource (offsets are part of recovery snapshots). The
model topic is always read from its beginning when there is no recovery state, and the model holder starts
with the newest model on it (`flows.kafka.catch_up`). A message that cannot be decoded (garbage, another schema, truncated) goes to the
dead-letter topic with its original key, value and headers, and headers saying why and where it came from;
the flow goes on. Results are keyed by user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from flows.avro import MODEL, RECORD, AvroCodec
from flows.kafka.catch_up import CatchUpSource
from flows.kafka.config import consumer_config
from flows.kafka.headers import OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER, TOPIC_HEADER
from flows.model_holder import CaughtUp
from flows.record_polls import decode_records
from flows.records import (
    DataMessage,
    DecodeFailure,
    ModelDescriptor,
    cut,
)
from flows.settings import Settings
from flows.sources.batched import PollBatches
from flows.sources.stoppable import StoppableSource


@dataclass(frozen=True, slots=True)
class KafkaOrigin:
    """Where a data message was read; `timestamp_ms` is the message's Kafka timestamp."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class KafkaInputs:
    data: Stream[list[DataMessage]]  # one batch per poll of a partition
    # Undecodable model messages come along as DecodeFailures, so the flow reports them as rejected models.
    models: Stream[ModelDescriptor | DecodeFailure | CaughtUp]
    dead_letters: Stream[KafkaSinkMessage]


def _dead_letter(settings: Settings, message: KafkaSourceMessage, reason: str) -> KafkaSinkMessage:
    where = [
        (REASON_HEADER, cut(reason).encode()),
        (TOPIC_HEADER, str(message.topic).encode()),
        (PARTITION_HEADER, str(message.partition).encode()),
        (OFFSET_HEADER, str(message.offset).encode()),
    ]
    return KafkaSinkMessage(
        message.key,
        message.value,
        topic=settings.kafka_dead_letters_topic,
        headers=[*message.headers, *where],
    )


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """A message that goes to the dead letters, and what the flow is told about it."""

    dead_letter: KafkaSinkMessage
    failure: DecodeFailure


def _undecodable(
    codec: AvroCodec,
    settings: Settings,
    item: KafkaSourceMessage | KafkaError,
    failure: DecodeFailure | None = None,
) -> _Undecodable:
    """A consumer error, or a message that did not decode (`failure`), as a dead letter and a DecodeFailure."""
    if isinstance(item, KafkaError):
        reason = f"Kafka consumer error: {item.err.str()}"
        return _Undecodable(
            _dead_letter(settings, item.msg, reason), DecodeFailure(codec.name, reason, item.msg.value)
        )
    reason = f"{item.topic}[{item.partition}]@{item.offset}: {failure.reason if failure else 'not decoded'}"
    return _Undecodable(_dead_letter(settings, item, reason), DecodeFailure(codec.name, reason, item.value))


def _model_decoder(settings: Settings):
    """Turn a model-source item into its ModelDescriptor (or marker), or an _Undecodable."""

    def decode(item: KafkaSourceMessage | KafkaError | CaughtUp):
        if isinstance(item, CaughtUp):
            return item  # the model holder's start-up marker, see flows.kafka.catch_up
        if isinstance(item, KafkaError):
            return _undecodable(MODEL, settings, item)
        value = MODEL.decode(item.value)
        return _undecodable(MODEL, settings, item, value) if isinstance(value, DecodeFailure) else value

    return decode


@dataclass(frozen=True, slots=True)
class _DecodedPoll:
    """One poll of a data partition: its records, in order, and the messages that did not decode."""

    batch: list[DataMessage]
    undecodable: list[_Undecodable]


def _poll_decoder(settings: Settings):
    """Decode a whole poll of a data partition (see `flows.sources.batched` and `flows.record_polls`)."""

    def decode_poll(items: list[KafkaSourceMessage | KafkaError]) -> _DecodedPoll:
        entered_ns = time.time_ns()  # the poll's records entered the flow together
        messages = [item for item in items if not isinstance(item, KafkaError)]
        undecodable = [_undecodable(RECORD, settings, item) for item in items if isinstance(item, KafkaError)]
        batch = []
        for message, value in zip(messages, decode_records([message.value for message in messages])):
            if isinstance(value, DecodeFailure):
                undecodable.append(_undecodable(RECORD, settings, message, value))
            else:
                batch.append(DataMessage(value, entered_ns, _origin(message)))
        return _DecodedPoll(batch, undecodable)

    return decode_poll


def _origin(message: KafkaSourceMessage) -> KafkaOrigin:
    timestamp_ms = message.timestamp[1] if message.timestamp else 0
    return KafkaOrigin(
        message.topic, message.partition, message.offset, timestamp_ms, tuple(message.headers or ())
    )


def _source(
    settings: Settings, topic: str, start: int, catch_up: bool = False, polls: bool = False
) -> StoppableSource:
    config = consumer_config(settings)
    source = KafkaSource(
        settings.kafka_bootstrap_servers.split(","),
        [topic],
        tail=settings.kafka_tail,
        starting_offset=start,
        add_config=config,
        batch_size=settings.kafka_poll_size,
        raise_on_errors=False,
    )
    if catch_up:
        lookup = {"bootstrap.servers": settings.kafka_bootstrap_servers, **config}
        return StoppableSource(CatchUpSource(source, topic, lookup))
    return StoppableSource(PollBatches(source) if polls else source)


def kafka_inputs(flow: Dataflow, settings: Settings) -> KafkaInputs:
    """The data and model streams from Kafka, and the dead letters of both."""
    data_start = OFFSET_BEGINNING if settings.kafka_data_start == "earliest" else OFFSET_END
    raw_data = op.input(
        "kafka_data", flow, _source(settings, settings.kafka_data_topic, data_start, polls=True)
    )
    raw_models = op.input(
        "kafka_models", flow, _source(settings, settings.kafka_models_topic, OFFSET_BEGINNING, catch_up=True)
    )

    polls = op.map("decode_data", raw_data, _poll_decoder(settings))
    data = op.filter_map("data_batches", polls, lambda poll: poll.batch or None)
    undecodable_data = op.flat_map("undecodable_data", polls, lambda poll: poll.undecodable)
    models = op.map("decode_models", raw_models, _model_decoder(settings))
    model_split = op.branch("split_models", models, lambda item: not isinstance(item, _Undecodable))
    dead = op.merge("dead_letters", undecodable_data, model_split.falses)
    model_failures = op.map("model_failures", model_split.falses, lambda item: item.failure)
    return KafkaInputs(
        data=data,
        models=op.merge("models_and_failures", model_split.trues, model_failures),
        dead_letters=op.map("dead_message", dead, lambda item: item.dead_letter),
    )
