"""The retraining loop's hook: `serving-retrain --version 3` waits for a `drift` event on the events topic,
trains a new model version and publishes it to the models topic, where the flow picks it up.

The flow writes its model events to `SERVING_KAFKA_EVENTS_TOPIC` when that is set (drift monitoring:
`flows.drift`). This command follows that topic from its end (`--from-beginning` to replay it); on each
`drift` event (of `--model` only, if given) it trains `recommender-vN` with `serving-train-model`'s
deterministic recipe (N from `--version`, then N+1, ...), publishes it inline with `serving-publish-model`,
and goes on waiting; `--once` stops after the first. A real pipeline would retrain on recent, labelled
data: this is the loop, with the project's synthetic training data standing in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from flows.avro import EVENT
from flows.records import DecodeFailure, ModelEvent
from flows.settings import Settings
from flows.tools import publish_model
from flows.tools.kafka_args import add_kafka_arguments, consumer_config
from flows.tools.train_model import train


def drift_events(consumer: Consumer, model: str | None, timeout_s: float | None):
    """Each `drift` event on the assigned topic (of `model`, if given), as it arrives; stops after
    `timeout_s` seconds without a message, if given."""
    while True:
        message = consumer.poll(1.0 if timeout_s is None else min(timeout_s, 1.0))
        if message is None:
            if timeout_s is not None:
                timeout_s -= 1.0
                if timeout_s <= 0:
                    return
            continue
        if message.error() is not None:
            continue
        event = EVENT.decode(message.value())
        if isinstance(event, ModelEvent) and event.kind == "drift" and model in (None, event.model_name):
            yield event
        elif isinstance(event, DecodeFailure):
            print(
                f"skipped an undecodable event at offset {message.offset()}: {event.reason}", file=sys.stderr
            )


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="serving-retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version", type=int, required=True, help="the first version to train (then +1 each)"
    )
    parser.add_argument("--model", help="retrain on drift of this model only (default: any model)")
    parser.add_argument("--once", action="store_true", help="stop after the first retraining")
    parser.add_argument(
        "--from-beginning", action="store_true", help="replay the events topic from its start"
    )
    parser.add_argument("--timeout", type=float, help="stop after this many seconds without an event")
    events_default = settings.kafka_events_topic or "recommender-model-events"
    add_kafka_arguments(
        parser,
        settings,
        {"--events-topic": events_default, "--models-topic": settings.kafka_models_topic},
    )
    args = parser.parse_args(argv)

    consumer = Consumer({**consumer_config(args, settings), "group.id": f"retrain-{uuid.uuid4().hex[:8]}"})
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    partitions = consumer.list_topics(args.events_topic, timeout=10).topics[args.events_topic].partitions
    consumer.assign([TopicPartition(args.events_topic, index, start) for index in partitions])
    version = args.version
    print(f"waiting for drift events on {args.events_topic}", flush=True)
    try:
        for event in drift_events(consumer, args.model, args.timeout):
            name = f"recommender-v{version}"
            print(f"drift of {event.model_name!r}: {event.reason}", flush=True)
            print(f"training {name} ...", flush=True)
            with tempfile.TemporaryDirectory() as scratch:
                directory = train(version, Path(scratch) / str(version))
                published = publish_model.main(
                    ["--path", str(directory), "--name", name,
                     "--description", f"retrained after drift of {event.model_name}",
                     "--bootstrap-servers", args.bootstrap_servers, "--topic", args.models_topic]
                )  # fmt: skip
            if published != 0:
                return published
            version += 1
            if args.once:
                return 0
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
