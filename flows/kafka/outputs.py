"""Kafka outputs of the serving flow: results keyed by user, with headers naming the message they answer,
and dead letters. Both go through `flows.kafka.sink`, which replaces a message the topic refuses for itself
by its smaller form (built here) and retries the rest until delivered.
"""

from __future__ import annotations

from dataclasses import replace

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream

from flows.avro import RESULT
from flows.kafka.config import client_config
from flows.kafka.headers import (
    ORIGINAL_SIZE_HEADER,
    REPLACED_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TIMESTAMP_HEADER,
    SOURCE_TOPIC_HEADER,
)
from flows.kafka.sink import Outgoing, ResilientKafkaSink
from flows.kafka.source import KafkaOrigin
from flows.observability.telemetry import TRACEPARENT, trace_context_of
from flows.records import (
    DecodeFailure,
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredMessage,
    cut,
)
from flows.settings import Settings


def result_message(scored: ScoredMessage) -> KafkaSinkMessage:
    """A result as a Kafka message keyed by user, with headers naming the data message it answers."""
    origin = scored.origin
    headers = []
    if isinstance(origin, KafkaOrigin):
        headers = [
            (SOURCE_TOPIC_HEADER, origin.topic.encode()),
            (SOURCE_PARTITION_HEADER, str(origin.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(origin.offset).encode()),
            (SOURCE_TIMESTAMP_HEADER, str(origin.timestamp_ms).encode()),
        ]
    # The batch span's context when tracing is on (it links to the record's own), else the record's own.
    traceparent = scored.trace_context or trace_context_of(origin)
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    return KafkaSinkMessage(
        str(scored.result.input_record.user).encode(), RESULT.encode(scored.result), headers=headers
    )


DEAD_LETTER_KEPT_BYTES = 1024


def smaller_result(message: KafkaSinkMessage, reason: str) -> KafkaSinkMessage:
    """The result as an error result without the echoed products and their scores (`Outgoing.shrink`)."""
    result = RESULT.decode(message.value or b"")
    if isinstance(result, DecodeFailure):  # cannot happen for our own encoding; keep the coordinates anyway
        result = RecommenderResult(
            RecommenderRecord(-1, []), RecommenderServingOutput(), ModelResultMetadata()
        )
    record, metadata = result.input_record, result.metadata
    errors = (
        f"result not delivered as is ({reason}); the record's {len(record.products):,} products and their "
        f"scores are withheld" + (f"; {metadata.errors}" if metadata.errors else "")
    )
    smaller = RecommenderResult(
        RecommenderRecord(record.user, [], record.datatype),
        RecommenderServingOutput(),
        replace(metadata, errors=cut(errors)),
    )
    headers = [*(message.headers or []), (REPLACED_HEADER, reason.encode())]
    return KafkaSinkMessage(message.key, RESULT.encode(smaller), topic=message.topic, headers=headers)


def smaller_dead_letter(message: KafkaSinkMessage, reason: str) -> KafkaSinkMessage:
    """The dead letter with its value cut to 1 KiB and only the flow's own headers (`Outgoing.shrink`)."""
    ours = [(name, value[:1000]) for name, value in message.headers or [] if name.startswith("dead-letter.")]
    headers = [
        *ours,
        (ORIGINAL_SIZE_HEADER, str(len(message.value or b"")).encode()),
        (REPLACED_HEADER, reason.encode()),
    ]
    key = (message.key or b"")[:DEAD_LETTER_KEPT_BYTES] or None
    value = (message.value or b"")[:DEAD_LETTER_KEPT_BYTES]
    return KafkaSinkMessage(key, value, topic=message.topic, headers=headers)


def kafka_outputs(
    settings: Settings, results: Stream[list[ScoredMessage]], dead_letters: Stream[KafkaSinkMessage]
) -> None:
    """Write result batches to the results topic and dead letters to the dead-letter topic (see
    flows.kafka.sink; both travel as batches, a dead letter as a batch of one)."""
    brokers = settings.kafka_bootstrap_servers.split(",")
    config = client_config(settings, settings.kafka_producer_config)
    encoded = op.map(
        "encode_results",
        results,
        lambda batch: [Outgoing(result_message(scored), smaller_result) for scored in batch],
    )
    op.output("kafka_results", encoded, ResilientKafkaSink(brokers, settings.kafka_results_topic, config))
    letters = op.map(
        "dead_letter_messages", dead_letters, lambda letter: [Outgoing(letter, smaller_dead_letter)]
    )
    op.output(
        "kafka_dead_letters", letters, ResilientKafkaSink(brokers, settings.kafka_dead_letters_topic, config)
    )
