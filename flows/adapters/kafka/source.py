"""Kafka inputs of the serving flow: Avro messages in, dead letters for what does not decode.

The data topic is read by `flows.adapters.kafka.data_source` (a poll of a partition is one item, decoded at
once); the model topic by Bytewax's KafkaSource, always from its beginning when there is no recovery state,
and the model holder starts with the newest model on it (`flows.adapters.kafka.catch_up`). Offsets of both are
part of the recovery snapshots. A message that cannot be decoded (garbage, another schema, truncated) goes to
the dead-letter topic (`flows.adapters.kafka.dead_letters`); the flow goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from flows.adapters.kafka.catch_up import CatchUpSource
from flows.adapters.kafka.config import consumer_config
from flows.adapters.kafka.data_source import DataPollSource, KafkaOrigin
from flows.adapters.kafka.dead_letters import Undecodable, consumer_failure, decode_failure
from flows.adapters.kafka.lag_probe import LagReport
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.sources.model_gate import WaitForChampion
from flows.adapters.sources.stoppable import StoppableSource
from flows.core.champion_gate import ChampionGate
from flows.core.descriptors import ModelDescriptor
from flows.core.model_holder import CaughtUp
from flows.core.records import DataMessage, DecodeFailure
from flows.wire.avro import MODEL

__all__ = [
    "KafkaInputs",
    "KafkaOrigin",
    "kafka_inputs",
]  # KafkaOrigin: recovery snapshots of 0.1.0 name it here


@dataclass(frozen=True)
class KafkaInputs:
    data: Stream[list[DataMessage]]  # one batch per poll of a partition
    # Undecodable model messages come along as DecodeFailures, so the flow reports them as rejected models.
    models: Stream[ModelDescriptor | DecodeFailure | CaughtUp]
    dead_letters: Stream[Undecodable]  # of both topics; a data message's names the offsets it answers


def _decode_model(settings: KafkaSettings, item: KafkaSourceMessage | KafkaError | CaughtUp):
    """A model-source item as its ModelDescriptor (or the start-up marker), or an Undecodable."""
    if isinstance(item, CaughtUp):
        return item  # the model holder's start-up marker, see flows.adapters.kafka.catch_up
    if isinstance(item, KafkaError):
        return consumer_failure(MODEL, settings, item.msg, item.err)
    value = MODEL.decode(item.value)
    return decode_failure(MODEL, settings, item, value) if isinstance(value, DecodeFailure) else value


def _models_source(settings: KafkaSettings) -> StoppableSource:
    config = consumer_config(settings)
    topic = settings.models_topic
    source = KafkaSource(
        settings.brokers,
        [topic],
        tail=settings.tail,
        starting_offset=OFFSET_BEGINNING,
        add_config=config,
        batch_size=settings.poll_size,
        raise_on_errors=False,
    )
    lookup = {"bootstrap.servers": settings.bootstrap_servers, **config}
    return StoppableSource(CatchUpSource(source, topic, lookup))


def kafka_inputs(
    flow: Dataflow,
    settings: KafkaSettings,
    gate: ChampionGate,
    wait_for_model: float,
    on_lag: LagReport | None = None,
) -> KafkaInputs:
    """The data and model streams from Kafka, and the dead letters of both. The data partitions read
    nothing until `gate` opens (a champion is ready in this process: `flows.adapters.sources.model_gate`), or
    for `wait_for_model` seconds at most; the lag of each is reported to `on_lag` about once a second, reading
    or not (`flows.adapters.kafka.lag_probe`)."""
    data_start = OFFSET_BEGINNING if settings.data_start == "earliest" else OFFSET_END
    data_source = DataPollSource(settings, settings.data_topic, data_start, consumer_config(settings), on_lag)
    gated = WaitForChampion(data_source, gate, wait_for_model)
    polls = op.input("kafka_data", flow, StoppableSource(gated))
    data = op.filter_map("data_batches", polls, lambda poll: poll.batch or None)
    undecodable_data = op.flat_map("undecodable_data", polls, lambda poll: poll.undecodable)

    raw_models = op.input("kafka_models", flow, _models_source(settings))
    models = op.map("decode_models", raw_models, lambda item: _decode_model(settings, item))
    model_split = op.branch("split_models", models, lambda item: not isinstance(item, Undecodable))
    dead = op.merge("dead_letters", undecodable_data, model_split.falses)
    model_failures = op.map("model_failures", model_split.falses, lambda item: item.failure)
    return KafkaInputs(
        data=data,
        models=op.merge("models_and_failures", model_split.trues, model_failures),
        dead_letters=dead,
    )
