"""Model publisher: `python -m flows.tools.publish_model --version 2` sends a model to the models topic.

The model goes inline (packed as a tar.gz archive: `--version` for a shipped one, `--path` for any SavedModel
directory or directory holding `model.onnx` and its external data, `--file` for one ONNX file; a PMML
document, `--file model.pmml`, goes as it is) or as a location (`--location`, with `--type`). A message
larger than the broker accepts is refused before sending, with the limit and what to change.
`--sign KEYFILE` signs the descriptor for a flow that requires signatures (SERVING_MODEL_TRUSTED_KEYS).

Experiments (see `flows.core.challenger`): `--challenger shadow|canary [--fraction F]` publishes the model as
a challenger beside the champion; `--promote NAME` makes challenger NAME the champion, `--retire NAME` drops
it. A command names the exact challenger it acts on by its digest (`--target-digest`, or the digest of the
newest challenger NAME on the models topic, looked up), so it cannot act on another model of that name.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from flows.adapters.kafka.sink import DEFAULT_MESSAGE_MAX_BYTES
from flows.adapters.scorers.archive import pack_directory, pack_file
from flows.adapters.sources.generators import model_types_in, shipped_model
from flows.core.admission.descriptor_checks import experiment_refusal
from flows.core.admission.signing import load_private_key, sign
from flows.core.descriptors import CANARY, CHALLENGER, PROMOTE, RETIRE, SHADOW, ModelDescriptor, ModelType
from flows.core.model_formats import ONNX_MODEL_FILE
from flows.runtime.settings import Settings
from flows.tools.audit import read_to_end
from flows.tools.kafka_args import add_kafka_arguments, consumer_config, producer_config
from flows.wire.avro import MODEL


def size_limit(topic: str, config: dict[str, str]) -> tuple[int, str]:
    """The largest message the producer and the topic accept, and which setting sets it."""
    producer_limit = int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
    admin = AdminClient(config)  # type: ignore[arg-type]  # the stubs' dict is invariant; str values are fine
    try:
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        entries = admin.describe_configs([resource])[resource].result(timeout=10)
        topic_limit = int(entries["max.message.bytes"].value)
    except Exception:  # noqa: BLE001 (topic absent or not reported: the producer's limit still holds)
        return producer_limit, "the producer's message.max.bytes"
    if topic_limit < producer_limit:
        return topic_limit, f"topic {topic}'s max.message.bytes"
    return producer_limit, "the producer's message.max.bytes"


def newest_challenger_digest(config: dict[str, str], topic: str, name: str) -> str:
    """The digest of the newest challenger called `name` on the models `topic`, or "" if there is none."""
    digest = ""
    for message in read_to_end(config, topic):
        descriptor = MODEL.decode(message.value())
        if (
            isinstance(descriptor, ModelDescriptor)
            and descriptor.is_challenger
            and descriptor.model_name == name
        ):
            digest = descriptor.digest
    return digest


def descriptor_from(args: argparse.Namespace, settings: Settings) -> ModelDescriptor:
    if args.promote or args.retire:
        command = PROMOTE if args.promote else RETIRE
        name = args.promote or args.retire
        target = args.target_digest or newest_challenger_digest(
            consumer_config(args, settings.kafka), args.topic, name
        )
        return ModelDescriptor(name, "", ModelType.UNKNOWN, command=command, target_digest=target)
    model = _model_from(args, settings)
    if args.challenger:
        return replace(model, role=CHALLENGER, mode=args.challenger, fraction=args.fraction)
    return model


def _model_from(args: argparse.Namespace, settings: Settings) -> ModelDescriptor:
    if args.version:
        return shipped_model(settings.generator.models_dir, args.version)
    if args.path:
        directory = Path(args.path)
        # A SavedModel unless the directory holds another format's file (the last of them, if several).
        detected = ([ModelType.TENSORFLOWSAVED] + model_types_in(directory))[-1]
        return ModelDescriptor(
            args.name or directory.name,
            args.description or f"from {directory}",
            ModelType[args.type] if args.type else detected,
            pack_directory(directory),
        )
    if args.file:
        path = Path(args.file)
        if path.suffix.lower() == ".pmml" or args.type == ModelType.PMML.name:
            return ModelDescriptor(
                args.name or path.stem, args.description or f"from {path}", ModelType.PMML, path.read_bytes()
            )
        return ModelDescriptor(
            args.name or path.stem,
            args.description or f"from {path}",
            ModelType.ONNX,
            pack_file(path, ONNX_MODEL_FILE),
        )
    return ModelDescriptor(
        args.name or args.location,
        args.description,
        ModelType[args.type or "TENSORFLOWSAVED"],
        None,
        args.location,
    )


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-publish-model", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", help="a shipped model version (models/recommender/VERSION)")
    source.add_argument(
        "--path",
        help="a model directory to send inline: a SavedModel, model.onnx and external data, or model.pmml",
    )
    source.add_argument(
        "--file",
        help="a file to send inline: an ONNX model (no external data), as model.onnx; or a PMML document "
        "(.pmml), as it is",
    )
    source.add_argument("--location", help="a model location to send instead of bytes")
    source.add_argument("--promote", metavar="NAME", help="make the challenger NAME the champion")
    source.add_argument("--retire", metavar="NAME", help="stop the challenger NAME")
    parser.add_argument(
        "--challenger",
        choices=[SHADOW, CANARY],
        help=(
            "publish the model as a challenger: shadow (scores "
            "beside the champion) or canary (answers some users)"
        ),
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="a challenger's share of records (shadow) or users (canary), in (0, 1]; default 1",
    )
    parser.add_argument(
        "--type",
        choices=[t.name for t in ModelType],
        help="model type: for --location (default TENSORFLOWSAVED); --path detects it (model.onnx: ONNX); "
        "--file is ONNX, or PMML for a .pmml file",
    )
    parser.add_argument(
        "--target-digest",
        help=(
            "with --promote/--retire: the digest of the challenger "
            "to act on (default: looked up on the topic)"
        ),
    )
    parser.add_argument("--name", help="model name (default: from the version, directory or location)")
    parser.add_argument("--description", default="")
    parser.add_argument(
        "--sign",
        metavar="KEYFILE",
        type=Path,
        help="sign with this Ed25519 private key (PEM; make one with python -m flows.tools.model_keys)",
    )
    add_kafka_arguments(parser, settings.kafka, {"--topic": settings.kafka.models_topic})
    args = parser.parse_args(argv)

    if args.file and args.type not in (None, ModelType.ONNX.name, ModelType.PMML.name):
        parser.error("--file sends an ONNX model, or a PMML document (.pmml): --type ONNX, PMML or none")
    if args.fraction != 1.0 and not args.challenger:
        parser.error("--fraction is for a challenger (--challenger shadow|canary)")
    descriptor = descriptor_from(args, settings)
    problem = experiment_refusal(descriptor)
    if problem:
        parser.error(problem)
    if descriptor.command and args.sign and not descriptor.target_digest:
        print(
            f"refused: no challenger {descriptor.model_name!r} on {args.topic} to {descriptor.command}, "
            "and a signed command must name its target: give --target-digest",
            file=sys.stderr,
        )
        return 2
    if args.sign:
        try:
            descriptor = sign(descriptor, load_private_key(args.sign))
        except ValueError as error:
            print(f"refused: cannot sign with {args.sign}: {error}", file=sys.stderr)
            return 2
    payload = MODEL.encode(descriptor)
    config = producer_config(args, settings.kafka)
    limit, limited_by = size_limit(args.topic, config)
    if len(payload) > limit:
        print(
            f"refused: model {descriptor.model_name!r} encodes to {len(payload):,} bytes, over the {limit:,} "
            f"bytes allowed by {limited_by}. Raise that limit (and the broker's message.max.bytes), or serve "
            f"the model from a location (--location) instead of inline.",
            file=sys.stderr,
        )
        return 2
    producer = Producer(config)
    errors: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error:
            errors.append(str(error))

    producer.produce(args.topic, key=descriptor.model_name.encode(), value=payload, on_delivery=delivered)
    producer.flush(30)
    if errors:
        print(
            f"model {descriptor.model_name!r} was not delivered to {args.topic}: {errors[0]}", file=sys.stderr
        )
        return 1
    signed = ", signed" if descriptor.signature else ""
    if descriptor.command:
        print(f"published {descriptor.command} {descriptor.model_name!r}{signed} to {args.topic}")
        return 0
    role = f" as {descriptor.experiment()}" if descriptor.is_challenger else ""
    print(f"published model {descriptor.model_name!r}{role} ({len(payload):,} bytes{signed}) to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
