"""Accounting after an incident: `python -m flows.tools.audit` checks that every data offset was answered.

It reads the data topic, the results topic and the dead-letter topic up to their ends (as they are when it
starts) and reports data offsets with neither a result nor a dead letter (lost), offsets answered more than
once (duplicates: expected after a restart with at-least-once delivery, up to one snapshot interval's worth;
none with exactly-once), and the errors the results carry, grouped by reason. It reads as `read_committed`
(`--isolation`): what a consumer of exactly-once output sees. Results name the data message they answer in
their `source.*` headers, dead letters in their `dead-letter.*` headers. Exit status: 0 when nothing is lost,
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from flows.adapters.kafka.headers import (
    OFFSET_HEADER,
    PARTITION_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    TOPIC_HEADER,
    consumed_headers,
)
from flows.adapters.kafka.read_to_end import consumed_position, read_to_end
from flows.core.records import DecodeFailure
from flows.runtime.settings import Settings
from flows.tools.kafka_args import add_isolation_argument, add_kafka_arguments, consumer_config
from flows.wire.avro import RESULT

Position = tuple[int, int]  # (partition, offset) of a data message


@dataclass
class Audit:
    """What the topics say about every data offset."""

    data_offsets: set[Position] = field(default_factory=set)
    results: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    unattributed: int = 0  # results or dead letters without source coordinates

    @property
    def answers(self) -> Counter:
        return self.results + self.dead_letters

    @property
    def lost(self) -> list[Position]:
        answered = self.answers
        return sorted(position for position in self.data_offsets if not answered[position])

    @property
    def duplicated(self) -> dict[Position, int]:
        return {position: count for position, count in sorted(self.answers.items()) if count > 1}

    def summary(self) -> dict:
        return {
            "data_offsets": len(self.data_offsets),
            "results": sum(self.results.values()),
            "dead_letters": sum(self.dead_letters.values()),
            "lost": len(self.lost),
            "lost_offsets": [f"{partition}@{offset}" for partition, offset in self.lost[:100]],
            "duplicated_offsets": len(self.duplicated),
            "duplicates": sum(count - 1 for count in self.duplicated.values()),
            "errors_by_reason": dict(self.errors.most_common(20)),
            "unattributed": self.unattributed,
        }


def _reason_class(errors: str) -> str:
    """An error with its numbers taken out, so errors of one kind count together."""
    return re.sub(r"\d[\d,.]*", "N", errors)[:160]


def audit(
    config: dict[str, str],
    data_topic: str,
    results_topic: str,
    dead_letters_topic: str,
    max_wait_s: float | None = None,
) -> Audit:
    """The audit of `data_topic` against the answers in the other two, read as `config` says (its
    `isolation.level`: read_committed unless it says otherwise). With `max_wait_s`, a topic that an open
    transaction holds back longer raises `StillOpen` naming where, instead of waiting for ever."""
    isolation = config.get("isolation.level", "read_committed")
    report = Audit()
    for message in read_to_end(config, data_topic, isolation, max_wait_s=max_wait_s):
        report.data_offsets.add(consumed_position(message))
    for message in read_to_end(config, results_topic, isolation, max_wait_s=max_wait_s):
        headers = consumed_headers(message)
        if headers.get(SOURCE_TOPIC_HEADER, b"").decode() != data_topic:
            report.unattributed += 1
            continue
        position = (int(headers[SOURCE_PARTITION_HEADER]), int(headers[SOURCE_OFFSET_HEADER]))
        report.results[position] += 1
        result = RESULT.decode(message.value() or b"")
        if isinstance(result, DecodeFailure):
            report.errors["(result not decodable)"] += 1
        elif result.metadata.errors:
            report.errors[_reason_class(result.metadata.errors)] += 1
    for message in read_to_end(config, dead_letters_topic, isolation, max_wait_s=max_wait_s):
        headers = consumed_headers(message)
        if headers.get(TOPIC_HEADER, b"").decode() != data_topic:
            continue  # a dead model message: not a data offset
        report.dead_letters[(int(headers[PARTITION_HEADER]), int(headers[OFFSET_HEADER]))] += 1
    return report


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_environment()
    parser = argparse.ArgumentParser(prog="serving-audit", description=__doc__.split("\n\n")[0])
    add_kafka_arguments(
        parser,
        settings.kafka,
        {
            "--data-topic": settings.kafka.data_topic,
            "--results-topic": settings.kafka.results_topic,
            "--dead-letters-topic": settings.kafka.dead_letters_topic,
        },
    )
    add_isolation_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)

    report = audit(
        consumer_config(args, settings.kafka), args.data_topic, args.results_topic, args.dead_letters_topic
    ).summary()
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['data_offsets']:,} data offsets: {report['results']:,} results, "
            f"{report['dead_letters']:,} dead letters; {report['lost']:,} lost, "
            f"{report['duplicates']:,} duplicates over {report['duplicated_offsets']:,} offsets"
        )
        for offset in report["lost_offsets"]:
            print(f"  lost: {args.data_topic} partition@offset {offset}")
        for reason, count in report["errors_by_reason"].items():
            print(f"  {count:>8,} results with error: {reason}")
    return 1 if report["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
