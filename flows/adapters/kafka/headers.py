"""Kafka header names the flow writes: where a result or dead letter came from, why a message was
dead-lettered or replaced by a smaller form. Consumers (`flows.tools.audit`, your own) read them by these
names."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from confluent_kafka import Message

# On a dead letter: why it could not be decoded, and where it was read.
REASON_HEADER = "dead-letter.reason"
TOPIC_HEADER = "dead-letter.topic"
PARTITION_HEADER = "dead-letter.partition"
OFFSET_HEADER = "dead-letter.offset"
# On a result: the data message it answers.
SOURCE_TOPIC_HEADER = "source.topic"
SOURCE_PARTITION_HEADER = "source.partition"
SOURCE_OFFSET_HEADER = "source.offset"
SOURCE_TIMESTAMP_HEADER = "source.timestamp"
# On a message replaced by its smaller form (`flows.adapters.kafka.sink`): why, and a dead letter's original
# size.
REPLACED_HEADER = "replaced"
ORIGINAL_SIZE_HEADER = "dead-letter.original-size"


def consumed_headers(message: Message) -> dict[str, bytes]:
    """A consumed message's headers by name (none: empty). librdkafka gives them as (name, bytes) pairs; the
    stubs' type also has the forms that produce() takes."""
    return dict(cast("list[tuple[str, bytes]]", message.headers() or []))
