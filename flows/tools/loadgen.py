"""Load generator: `python -m flows.tools.loadgen --records N --rate R` writes generated RecommenderRecords
(Avro, keyed by user) to the data topic at R records/s, with a progress line."""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from confluent_kafka import Producer

from flows.adapters.sources.generators import generated_records
from flows.adapters.sources.pacing import Pace
from flows.runtime.settings import Settings
from flows.tools.kafka_args import add_kafka_arguments, producer_config
from flows.wire.avro import RECORD

PROGRESS_EVERY = 1000
BURST_S = 0.001  # records are offered in bursts of a millisecond's worth


def burst_size(rate: float) -> int:
    """How many records go out together at `rate`: a millisecond's worth, at least one (all at once when
    unthrottled). Sleeping for each record at 10,000/s cost the generator half a core, taken from the
    flow it loads when both share a machine; a producer batches records at least this long anyway
    (linger.ms)."""
    if rate <= 0:
        return 1000
    return max(1, int(rate * BURST_S))


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, required=True, help="records to send")
    parser.add_argument(
        "--rate", type=float, default=333.0, help="records per second (0: as fast as possible)"
    )
    add_kafka_arguments(parser, settings.kafka, {"--topic": settings.kafka.data_topic})
    parser.add_argument("--seed", type=int, default=settings.generator.seed)
    parser.add_argument(
        "--shift-after",
        type=int,
        default=0,
        help=(
            "records after which the data drifts for as many again (a newly popular product range; 0: never)"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    producer = Producer({"linger.ms": "5", **producer_config(args, settings.kafka)})
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(f"{message.topic()}[{message.partition()}]: {error}")

    pace = Pace(args.rate)
    started = pace.started
    records = generated_records(args.seed, args.records, shift_after=args.shift_after)
    burst = burst_size(args.rate)
    for position in range(0, args.records, burst):
        pace.wait_for(position)
        for record in itertools.islice(records, burst):
            while True:
                try:
                    producer.produce(
                        args.topic,
                        key=str(record.user).encode(),
                        value=RECORD.encode(record),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        sent = min(position + burst, args.records)
        if not args.quiet and sent // PROGRESS_EVERY > position // PROGRESS_EVERY:
            elapsed = time.monotonic() - started
            print(
                f"\rsent {sent:,}/{args.records:,} ({sent / elapsed:,.0f}/s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    producer.flush(60)
    elapsed = time.monotonic() - started
    if not args.quiet:
        print(
            f"\rsent {args.records:,} records to {args.topic} in {elapsed:.1f} s "
            f"({args.records / max(elapsed, 1e-9):,.0f}/s)",
            file=sys.stderr,
        )
    if failures:
        print(f"{len(failures)} records were not delivered; first: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
