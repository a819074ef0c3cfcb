"""The yardstick: what a careful engineer writes instead of this project, measured on the same broker and
data.

A batched confluent-kafka loop: `consume(500)`, decode every message, one SavedModel call for the whole
poll, encode, produce, wait for delivery, commit (at-least-once, like the flow). No recovery, sharding,
hot swap, admission or dead letters: what the flow must beat to be worth its features.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import numpy as np
from confluent_kafka import Consumer, Message, Producer

from flows.adapters.kafka.config import CONSUMER_DEFAULTS
from flows.adapters.kafka.headers import (
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TIMESTAMP_HEADER,
)
from flows.adapters.scorers import Scorer, build_scorer
from flows.adapters.sources.generators import generated_records, shipped_model
from flows.bench.report import kafka_report
from flows.core.records import (
    DecodeFailure,
    ModelResultMetadata,
    RecommenderRecord,
    RecommenderResult,
    RecommenderServingOutput,
)
from flows.runtime.settings import Settings
from flows.testing.local_broker import (
    consume_all,
    create_topics,
    kafka_broker,
    produce,
)
from flows.wire.avro import RECORD, RESULT

POLL_SIZE = 500


def run_kafka_baseline(records: int, bootstrap: str | None, partitions: int, version: str) -> dict:
    """A pre-loaded data topic through the hand-written loop to a results topic (see the module docstring)."""
    settings = Settings.from_environment()
    model = shipped_model(settings.generator.models_dir, version)
    scorer = build_scorer(model, settings.admission)  # loaded (and probed) before the clock starts
    with ExitStack() as stack:
        servers = bootstrap or stack.enter_context(kafka_broker())
        topics = create_topics(servers, "baseline", ["data", "results"], partitions=partitions)
        produce(
            servers,
            topics["data"],
            [
                (str(r.user).encode(), RECORD.encode(r))
                for r in generated_records(settings.generator.seed, records)
            ],
        )
        _serve(servers, topics["data"], topics["results"], scorer, model.model_name, records)
        results = consume_all(servers, topics["results"], records)
    scorer.close()
    if len(results) < records:
        raise SystemExit(f"bench: expected {records} results, got {len(results)}")
    return kafka_report("kafka-baseline", records, "pre-loaded", results, partitions, bootstrap)


def _serve(
    servers: str, data_topic: str, results_topic: str, scorer: Scorer, model_name: str, records: int
) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"baseline-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": "false",
            **CONSUMER_DEFAULTS,  # the same read-ahead as the flow's consumers
        }
    )
    producer = Producer({"bootstrap.servers": servers, "linger.ms": "5"})
    consumer.subscribe([data_topic])
    answered = 0
    try:
        while answered < records:
            messages = [message for message in consumer.consume(POLL_SIZE, 1.0) if message.error() is None]
            decoded = [(message, RECORD.decode(message.value())) for message in messages]
            batch = [
                (message, record) for message, record in decoded if not isinstance(record, DecodeFailure)
            ]
            if batch:
                for message, result in _score(batch, scorer, model_name):
                    producer.produce(
                        results_topic, key=str(result.input_record.user).encode(),
                        value=RESULT.encode(result),
                        headers=[
                            (SOURCE_PARTITION_HEADER, str(message.partition()).encode()),
                            (SOURCE_OFFSET_HEADER, str(message.offset()).encode()),
                            (SOURCE_TIMESTAMP_HEADER, str(message.timestamp()[1]).encode()),
                        ],
                    )  # fmt: skip
                producer.flush(30)  # delivered before the offsets are committed: at-least-once
                consumer.commit(asynchronous=True)
            answered += len(messages)
    finally:
        consumer.close()


def _score(
    batch: list[tuple[Message, RecommenderRecord]], scorer: Scorer, model_name: str
) -> list[tuple[Message, RecommenderResult]]:
    """One model call for every pair of the poll, split back into one result per record."""
    records: list[RecommenderRecord] = [record for _, record in batch]
    counts = [len(record.products) for record in records]
    users = np.repeat(np.fromiter((record.user for record in records), np.float32, len(records)), counts)
    products = np.fromiter(
        (product for record in records for product in record.products), np.float32, sum(counts)
    )
    started_ms = time.time_ns() // 1_000_000
    started = time.perf_counter()
    scores = scorer.score(users, products).tolist()
    metadata = ModelResultMetadata(
        "", model_name, scorer.source, started_ms, int((time.perf_counter() - started) * 1000)
    )
    results, offset = [], 0
    for (message, record), count in zip(batch, counts):
        output = RecommenderServingOutput(
            [str(product) for product in record.products], scores[offset : offset + count]
        )
        results.append((message, RecommenderResult(record, output, metadata)))
        offset += count
    return results
