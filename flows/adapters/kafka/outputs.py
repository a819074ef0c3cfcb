"""Kafka outputs of the serving flow: results keyed by user, with headers naming the message they answer,
and dead letters. Both go through `flows.adapters.kafka.sink`, which replaces a message the topic refuses for
itself by its smaller form (built here) and retries the rest until delivered, or, with exactly-once delivery,
through `flows.adapters.kafka.exactly_once`, which writes them in transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Stream

from flows.adapters.kafka.answered import marker_key
from flows.adapters.kafka.config import client_config, consumer_config
from flows.adapters.kafka.data_source import KafkaOrigin
from flows.adapters.kafka.dead_letters import Undecodable
from flows.adapters.kafka.exactly_once import Answer, ExactlyOnceSetupError, ExactlyOnceSink, partition_key
from flows.adapters.kafka.headers import (
    ORIGINAL_SIZE_HEADER,
    REPLACED_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TIMESTAMP_HEADER,
    SOURCE_TOPIC_HEADER,
)
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.kafka.sink import ResilientKafkaSink, SinkMessage
from flows.core.errors import ServingError
from flows.core.event_signing import EventSettings, EventSigner, event_signer
from flows.core.events import ChallengerReport, ModelEvent
from flows.core.explanations import Explanation, ExplanationMessage
from flows.core.records import (
    DecodeFailure,
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
    ScoredBatch,
    ScoredMessage,
)
from flows.core.telemetry import TRACEPARENT, trace_context_of
from flows.core.text import cut
from flows.core.vocabulary import EventKind
from flows.wire.avro import EVENT, EXPLANATION, REPORT, RESULT, SIGNED_EVENT, encode_results


def result_messages(batch: Sequence[ScoredMessage], topic: str | None = None) -> list[SinkMessage]:
    """Results as Kafka messages keyed by user, with headers naming the data message each one answers (to
    `topic`, or the sink's)."""
    values = encode_results(batch)
    if isinstance(batch, ScoredBatch):  # read in columns, see flows.core.records.ScoredBatch
        carried = batch.trace_context
        return [
            SinkMessage(
                b"%d" % message.record.user,
                value,
                topic,
                _source_headers(message.origin, carried or trace_context_of(message.origin)),
            )
            for message, value in zip(batch.messages, values)
        ]
    return [
        SinkMessage(
            b"%d" % item.result.input_record.user,
            value,
            topic,
            _source_headers(item.origin, item.trace_context or trace_context_of(item.origin)),
        )
        for item, value in zip(batch, values)
    ]


# The topic and partition headers, shared by every result from that partition (bounded: emptied when full).
_PARTITION_HEADERS: dict[tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}
_MAX_PARTITION_HEADERS = 1 << 12


def _source_headers(origin: object, traceparent: str | None) -> list[tuple[str, bytes]]:
    """Where the record came from (a Kafka origin's coordinates) and the trace context to carry on."""
    headers = []
    if isinstance(origin, KafkaOrigin):
        where = _PARTITION_HEADERS.get((origin.topic, origin.partition))
        if where is None:
            where = (
                (SOURCE_TOPIC_HEADER, origin.topic.encode()),
                (SOURCE_PARTITION_HEADER, b"%d" % origin.partition),
            )
            if len(_PARTITION_HEADERS) >= _MAX_PARTITION_HEADERS:
                _PARTITION_HEADERS.clear()
            _PARTITION_HEADERS[(origin.topic, origin.partition)] = where
        headers = [
            *where,
            (SOURCE_OFFSET_HEADER, b"%d" % origin.offset),
            (SOURCE_TIMESTAMP_HEADER, b"%d" % origin.timestamp_ms),
        ]
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    return headers


DEAD_LETTER_KEPT_BYTES = 1024


def smaller_result(message: SinkMessage, reason: str) -> SinkMessage:
    """The result as an error result without the echoed products and their scores (the sink's `shrink`)."""
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
    return SinkMessage(message.key, RESULT.encode(smaller), topic=message.topic, headers=headers)


def smaller_dead_letter(message: SinkMessage, reason: str) -> SinkMessage:
    """The dead letter with its value cut to 1 KiB and only the flow's own headers (the sink's `shrink`)."""
    ours = [(name, value[:1000]) for name, value in message.headers or [] if name.startswith("dead-letter.")]
    headers = [
        *ours,
        (ORIGINAL_SIZE_HEADER, str(len(message.value or b"")).encode()),
        (REPLACED_HEADER, reason.encode()),
    ]
    key = (message.key or b"")[:DEAD_LETTER_KEPT_BYTES] or None
    value = (message.value or b"")[:DEAD_LETTER_KEPT_BYTES]
    return SinkMessage(key, value, topic=message.topic, headers=headers)


def event_message(event: ModelEvent, signer: EventSigner | None = None) -> list[SinkMessage]:
    """A model event as a message keyed by model name (a batch of one, for the sink), signed by `signer`
    if given (SERVING_EVENTS_SIGNING_KEY)."""
    return [SinkMessage(event.model_name.encode(), _encode_event(event, signer))]


def smaller_event(message: SinkMessage, reason: str, signer: EventSigner | None = None) -> SinkMessage:
    """The event with its reason cut to what a few hundred bytes hold (the sink's `shrink`), signed anew."""
    event = EVENT.decode(message.value or b"")
    if isinstance(event, DecodeFailure):  # cannot happen for our own encoding
        event = ModelEvent(EventKind.UNKNOWN, "")
    smaller = replace(event, reason=cut(f"{event.reason} (cut: {reason})", 300))
    headers = [*(message.headers or []), (REPLACED_HEADER, reason.encode())]
    return SinkMessage(message.key, _encode_event(smaller, signer), topic=message.topic, headers=headers)


def _encode_event(event: ModelEvent, signer: EventSigner | None) -> bytes:
    return EVENT.encode(event) if signer is None else SIGNED_EVENT.encode(signer.sign(event))


def explanation_messages(explained: list[ExplanationMessage]) -> list[SinkMessage]:
    """Explanations as Kafka messages keyed by user, with the headers of the result they explain."""
    return [
        SinkMessage(
            b"%d" % item.explanation.user,
            EXPLANATION.encode(item.explanation),
            headers=_source_headers(item.origin, item.trace_context or trace_context_of(item.origin)),
        )
        for item in explained
    ]


def smaller_explanation(message: SinkMessage, reason: str) -> SinkMessage:
    """The explanation without its products and neighbours, saying why (the sink's `shrink`)."""
    explanation = EXPLANATION.decode(message.value or b"")
    if isinstance(explanation, DecodeFailure):  # cannot happen for our own encoding
        explanation = Explanation(-1, "")
    smaller = replace(
        explanation,
        model_name=explanation.model_name[:200],
        products=[],
        similar_users=[],
        errors=cut(f"explanation not delivered as is ({reason}); its products are withheld"),
    )
    headers = [*(message.headers or []), (REPLACED_HEADER, reason.encode())]
    return SinkMessage(message.key, EXPLANATION.encode(smaller), topic=message.topic, headers=headers)


def report_message(report: ChallengerReport) -> list[SinkMessage]:
    """A challenger report as a message keyed by the challenger's name (a batch of one, for the sink)."""
    return [SinkMessage(report.challenger.encode(), REPORT.encode(report))]


def smaller_report(message: SinkMessage, reason: str) -> SinkMessage:
    """The report with the model names cut short (the sink's `shrink`; a report is a few hundred bytes)."""
    report = REPORT.decode(message.value or b"")
    if isinstance(report, DecodeFailure):  # cannot happen for our own encoding
        return SinkMessage(
            message.key, b"", topic=message.topic, headers=[(REPLACED_HEADER, reason.encode())]
        )
    smaller = replace(report, challenger=report.challenger[:40], champion=report.champion[:40])
    headers = [*(message.headers or []), (REPLACED_HEADER, reason.encode())]
    return SinkMessage(message.key, REPORT.encode(smaller), topic=message.topic, headers=headers)


def kafka_outputs(
    settings: KafkaSettings,
    results: Stream[Sequence[ScoredMessage]],
    dead_letters: Stream[Undecodable],
    events: Stream[ModelEvent],
    reports: Stream[ChallengerReport],
    shadow_results: Stream[ScoredBatch],
    events_signing: EventSettings,
    explanations: Stream[list[ExplanationMessage]] | None = None,
) -> None:
    """Write result batches to the results topic, dead letters to the dead-letter topic and, if
    SERVING_KAFKA_EVENTS_TOPIC / SERVING_KAFKA_CHALLENGER_TOPIC / SERVING_KAFKA_SHADOW_RESULTS_TOPIC /
    SERVING_KAFKA_EXPLANATIONS_TOPIC are set, model events (signed if `events_signing` names a key:
    SERVING_EVENTS_SIGNING_KEY), challenger reports, shadow results and explanations to them (see
    flows.adapters.kafka.sink; all travel as batches, a dead letter, event or report as a batch of one). With
    SERVING_KAFKA_DELIVERY=exactly-once, results, data dead letters and shadow results go through one
    transactional sink instead (`flows.adapters.kafka.exactly_once`); model events, challenger reports,
    explanations and dead model messages stay at-least-once."""
    brokers = settings.brokers
    config = client_config(settings, settings.producer_config)
    if settings.exactly_once:
        key = _marker_key(settings, events_signing)
        _exactly_once_answers(settings, config, results, dead_letters, shadow_results, key)
    else:
        _at_least_once_answers(settings, config, results, dead_letters, shadow_results)
    if settings.events_topic:
        topic = settings.events_topic
        signer = event_signer(events_signing)  # the key is read only where events are written
        messages = op.map("event_messages", events, partial(event_message, signer=signer))
        shrink = partial(smaller_event, signer=signer)
        op.output("kafka_events", messages, ResilientKafkaSink(brokers, topic, config, shrink))
    if settings.challenger_topic:
        topic = settings.challenger_topic
        messages = op.map("report_messages", reports, report_message)
        op.output("kafka_reports", messages, ResilientKafkaSink(brokers, topic, config, smaller_report))
    if settings.explanations_topic and explanations is not None:
        topic = settings.explanations_topic
        explained = op.map("explanation_messages", explanations, explanation_messages)
        sink = ResilientKafkaSink(brokers, topic, config, smaller_explanation)
        op.output("kafka_explanations", explained, sink)


def _at_least_once_answers(
    settings: KafkaSettings,
    config: dict[str, str],
    results: Stream[Sequence[ScoredMessage]],
    dead_letters: Stream[Undecodable],
    shadow_results: Stream[ScoredBatch],
) -> None:
    brokers = settings.brokers
    encoded = op.map("encode_results", results, result_messages)
    op.output(
        "kafka_results",
        encoded,
        ResilientKafkaSink(brokers, settings.results_topic, config, smaller_result),
    )
    _write_dead_letters(settings, config, op.map("dead_letter_messages", dead_letters, _as_messages))
    if settings.shadow_results_topic:
        topic = settings.shadow_results_topic
        messages = op.map("encode_shadow_results", shadow_results, result_messages)
        op.output(
            "kafka_shadow_results", messages, ResilientKafkaSink(brokers, topic, config, smaller_result)
        )


def _exactly_once_answers(
    settings: KafkaSettings,
    config: dict[str, str],
    results: Stream[Sequence[ScoredMessage]],
    dead_letters: Stream[Undecodable],
    shadow_results: Stream[ScoredBatch],
    marker_key: bytes,
) -> None:
    """Answers keyed by data partition into the transactional sink; dead model messages answer no data
    offset and keep the at-least-once sink."""
    answers = op.flat_map(
        "answer_results", results, partial(result_answers, topic=settings.results_topic, answers=True)
    )
    split = op.branch("split_dead_letters", dead_letters, lambda item: item.covered is not None)
    letters = op.map("answer_dead_letters", split.trues, dead_letter_answer)
    answers = op.merge("answers", answers, letters)
    if settings.shadow_results_topic:
        shadows = op.flat_map(
            "answer_shadow_results",
            shadow_results,
            partial(result_answers, topic=settings.shadow_results_topic, answers=False),
        )
        answers = op.merge("answers_and_shadows", answers, shadows)
    shrink = partial(_smaller_answer, settings)
    sink = ExactlyOnceSink(settings, config, consumer_config(settings), shrink, marker_key)
    op.output("kafka_answers", answers, sink)
    _write_dead_letters(settings, config, op.map("dead_model_messages", split.falses, _as_messages))


def _as_messages(item: Undecodable) -> list[SinkMessage]:
    """A dead letter as a batch of one for the sink."""
    return [item.dead_letter]


def _write_dead_letters(
    settings: KafkaSettings, config: dict[str, str], letters: Stream[list[SinkMessage]]
) -> None:
    """Dead letters, at least once, into the dead-letter topic (with either delivery: see `kafka_outputs`)."""
    op.output(
        "kafka_dead_letters",
        letters,
        ResilientKafkaSink(settings.brokers, settings.dead_letters_topic, config, smaller_dead_letter),
    )


def _marker_key(settings: KafkaSettings, events_signing: EventSettings) -> bytes:
    """The key of the answered markers (`flows.adapters.kafka.answered.marker_key`), read where it is used."""
    secret = settings.marker_key.get_secret_value() if settings.marker_key is not None else None
    events_key = events_signing.signing_key.read_bytes() if events_signing.signing_key is not None else None
    try:
        return marker_key(secret, events_key)
    except ValueError as error:
        raise ExactlyOnceSetupError(str(error)) from None


def result_answers(
    batch: Sequence[ScoredMessage], topic: str, answers: bool
) -> list[tuple[str, list[Answer]]]:
    """Results as answers for the exactly-once sink, one batch per data partition they answer."""
    messages = result_messages(batch, topic)
    origins = (
        [message.origin for message in batch.messages]
        if isinstance(batch, ScoredBatch)
        else [item.origin for item in batch]
    )
    by_partition: dict[int, list[Answer]] = {}
    for origin, message in zip(origins, messages):
        if not isinstance(origin, KafkaOrigin):
            raise ServingError(f"exactly-once output: a result without a Kafka origin ({origin!r})")
        covered = origin.covered
        by_partition.setdefault(covered.partition, []).append(Answer(covered, message, answers))
    return [(partition_key(partition), batch) for partition, batch in by_partition.items()]


def dead_letter_answer(item: Undecodable) -> tuple[str, list[Answer]]:
    """A data message's dead letter as the answer for its offsets."""
    covered = item.covered
    assert covered is not None  # split off above
    return partition_key(covered.partition), [Answer(covered, item.dead_letter)]


def _smaller_answer(settings: KafkaSettings, message: SinkMessage, reason: str) -> SinkMessage:
    if message.topic == settings.dead_letters_topic:
        return smaller_dead_letter(message, reason)
    return smaller_result(message, reason)
