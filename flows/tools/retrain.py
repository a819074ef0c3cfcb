"""The retraining loop's hook: `serving-retrain --version 3 --trusted-keys KEY` waits for a `drift` event
on the events topic, trains a new model version and publishes it to the models topic, where the flow picks
it up.

The flow writes its model events to `SERVING_KAFKA_EVENTS_TOPIC` when that is set (drift monitoring:
`flows.core.drift`), signed with `SERVING_EVENTS_SIGNING_KEY` when that is set. This command follows that
topic from its end (`--from-beginning` to replay it); on each `drift` event (of `--model` only, if given) it
trains `recommender-vN` with `serving-train-model`'s deterministic recipe (N from `--version`, then N+1,
...) in the format `--format` names (a SavedModel by default; `onnx`, named `recommender-vN-onnx`, for a
flow that serves ONNX only and so never imports TensorFlow; or `pmml`), publishes it inline with
`serving-publish-model` (signed with `--sign KEYFILE`, for a flow with SERVING_MODEL_TRUSTED_KEYS), and
goes on waiting; `--once` stops after the first. A real pipeline would retrain on recent, labelled data:
this is the loop, with the project's synthetic training data standing in.

A drift event publishes a model, so retrain acts only on events it can trust: signed under `--trusted-keys`
(the public key of SERVING_EVENTS_SIGNING_KEY), newer than the last one accepted from their signer, at most
`--max-age` old; it trains once per drifting model and at most once per `--min-interval` (see
`flows.tools.retrain_gate`). Every event it ignores gets one line on stderr naming where it lies and why.
Without trusted keys it refuses to start unless told `--insecure-accept-unsigned-events`. Text from an
event is printed with its control characters escaped (`flows.core.text.cut`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Message, TopicPartition

from flows.core.admission.signing import load_private_key, parse_trusted_keys
from flows.core.events import SignedModelEvent
from flows.core.model_formats import ONNX, PMML, SAVED_MODEL
from flows.core.records import DecodeFailure
from flows.core.text import cut
from flows.runtime.settings import Settings
from flows.tools import publish_model
from flows.tools.kafka_args import add_kafka_arguments, consumer_config
from flows.tools.retrain_gate import RetrainGate
from flows.tools.train_model import export
from flows.wire.avro import SIGNED_EVENT

# A printed line's bound: an event's reason (1,000 characters at most) and what retrain says around it.
LINE_CHARS = 2_000


def say(text: str, *, error: bool = False) -> None:
    """Print one line, its control characters escaped: much of it comes from events anyone could write."""
    print(cut(text, LINE_CHARS), file=sys.stderr if error else sys.stdout, flush=True)


def where(message: Message) -> str:
    return f"topic {message.topic()} partition {message.partition()} offset {message.offset()}"


def drift_events(
    consumer: Consumer, gate: RetrainGate, timeout_s: float | None
) -> Iterator[tuple[SignedModelEvent, Message]]:
    """Each drift event the gate wants, with its message, as it arrives; stops after `timeout_s` seconds
    without a message, if given."""
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
        signed = SIGNED_EVENT.decode(message.value())
        if isinstance(signed, DecodeFailure):
            say(f"ignored an undecodable event at {where(message)}: {signed.reason}", error=True)
        elif gate.wants(signed.event):
            yield signed, message


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version", type=int, required=True, help="the first version to train (then +1 each)"
    )
    parser.add_argument("--model", help="retrain on drift of this model only (default: any model)")
    parser.add_argument("--once", action="store_true", help="stop after the first retraining")
    parser.add_argument(
        "--format",
        choices=(SAVED_MODEL, ONNX, PMML),
        default=SAVED_MODEL,
        help="what to train and publish (default: savedmodel; onnx for a flow that serves ONNX only)",
    )
    parser.add_argument(
        "--from-beginning", action="store_true", help="replay the events topic from its start"
    )
    parser.add_argument("--timeout", type=float, help="stop after this many seconds without an event")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--trusted-keys",
        metavar="KEYS",
        help="act only on events signed by one of these Ed25519 public keys (base64 or PEM file paths, "
        "comma-separated, as SERVING_MODEL_TRUSTED_KEYS): the flow's SERVING_EVENTS_SIGNING_KEY's public key",
    )
    trust.add_argument(
        "--insecure-accept-unsigned-events",
        action="store_true",
        help="act on unsigned events: anyone who can write to the events topic can then publish models",
    )
    parser.add_argument(
        "--min-interval",
        type=float,
        default=600.0,
        help="seconds from one training to the next at least; drift events sooner are skipped (default 600)",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=3600.0,
        help="ignore signed events issued longer ago than this, seconds (default 3600; 0: no limit)",
    )
    parser.add_argument(
        "--sign",
        metavar="KEYFILE",
        type=Path,
        help="sign the published models with this Ed25519 private key (PEM), as serving-publish-model --sign",
    )
    events_default = settings.kafka.events_topic or "recommender-model-events"
    add_kafka_arguments(
        parser,
        settings.kafka,
        {"--events-topic": events_default, "--models-topic": settings.kafka.models_topic},
    )
    args = parser.parse_args(argv)
    gate = RetrainGate(_trusted_keys(parser, args), args.min_interval, args.max_age, args.model)
    if args.sign:
        try:
            load_private_key(args.sign)  # refused now rather than after the first training
        except ValueError as error:
            parser.error(f"--sign: {error}")

    consumer = Consumer(
        {**consumer_config(args, settings.kafka), "group.id": f"retrain-{uuid.uuid4().hex[:8]}"}
    )
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    partitions = consumer.list_topics(args.events_topic, timeout=10).topics[args.events_topic].partitions
    consumer.assign([TopicPartition(args.events_topic, index, start) for index in partitions])
    version = args.version
    say(f"waiting for drift events on {args.events_topic}")
    try:
        for signed, message in drift_events(consumer, gate, args.timeout):
            event = signed.event
            refusal = gate.judge(signed, time.time_ns() // 1_000_000)
            if refusal:
                say(f"ignored drift of {event.model_name!r} at {where(message)}: {refusal}", error=True)
                continue
            name = f"recommender-v{version}" + ("" if args.format == SAVED_MODEL else f"-{args.format}")
            say(f"drift of {event.model_name!r} at {where(message)}: {event.reason}")
            say(f"training {name} ...")
            with tempfile.TemporaryDirectory() as scratch:
                written = export(version, args.format, Path(scratch) / str(version))
                directory = written if written.is_dir() else written.parent  # ONNX: the model.onnx file
                signing = ["--sign", str(args.sign)] if args.sign else []
                published = publish_model.main(
                    ["--path", str(directory), "--name", name,
                     "--description", f"retrained after drift of {event.model_name}", *signing,
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


def _trusted_keys(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[bytes, ...]:
    """The keys from --trusted-keys; no keys without --insecure-accept-unsigned-events ends the command."""
    if args.insecure_accept_unsigned_events:
        say("warning: unsigned events accepted: who writes to the events topic publishes models", error=True)
        return ()
    try:
        keys = parse_trusted_keys(args.trusted_keys or "")
    except ValueError as error:
        parser.error(f"--trusted-keys: {error}")
    if not keys:
        parser.error(
            "no --trusted-keys: a drift event publishes a model, and anyone who can write to the events "
            "topic can write one. Give the public key of the flow's SERVING_EVENTS_SIGNING_KEY, or pass "
            "--insecure-accept-unsigned-events to act on any event"
        )
    return keys


if __name__ == "__main__":
    sys.exit(main())
