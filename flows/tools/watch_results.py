"""Console egress: `python -m flows.tools.watch_results` follows the results topic and prints readable
lines."""

from __future__ import annotations

import argparse
import sys
import uuid

from confluent_kafka import Consumer

from flows.adapters.sinks.console import describe_result
from flows.core.records import DecodeFailure
from flows.runtime.settings import Settings
from flows.tools.kafka_args import add_isolation_argument, add_kafka_arguments, consumer_config
from flows.wire.avro import RESULT


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-watch-results", description=__doc__.split("\n\n")[0])
    add_kafka_arguments(parser, settings.kafka, {"--topic": settings.kafka.results_topic})
    add_isolation_argument(parser)
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest result, not the newest"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="stop after this many results (0: follow forever)"
    )
    args = parser.parse_args(argv)

    consumer = Consumer(
        {
            "group.id": f"watch-results-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": "false",
            "session.timeout.ms": "6000",
            **consumer_config(args, settings.kafka),
        }
    )
    consumer.subscribe([args.topic])
    shown = 0
    try:
        while not args.count or shown < args.count:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                print(f"** {args.topic}: {message.error()}", file=sys.stderr)
                continue
            result = RESULT.decode(message.value())
            where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
            if isinstance(result, DecodeFailure):
                print(f"** {where}: undecodable result: {result.reason}")
            else:
                print(describe_result(result), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
