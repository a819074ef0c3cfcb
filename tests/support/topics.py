"""What the job tests write to a broker's topics and read back from them: models published with the tool,
the flow's events, results by the data offset they answer; a main job tailing its data topic."""

from __future__ import annotations

import subprocess
import sys
import time

from flows.adapters.kafka.headers import SOURCE_OFFSET_HEADER, consumed_headers
from flows.adapters.sources.generators import generated_records
from flows.core.descriptors import ModelDescriptor
from flows.core.records import RecommenderRecord, RecommenderResult
from flows.testing.local_broker import consume_all, create_topics, produce
from flows.wire.avro import EVENT, MODEL, RESULT, SIGNED_EVENT
from support.decoded import decoded
from support.jobs import REPO, encoded, start_flow


def publish(bootstrap: str, topic: str, *args: str) -> str:
    """Run `serving-publish-model` with `args`; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.tools.publish_model", *args, "--bootstrap-servers", bootstrap,
         "--topic", topic],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def flow_events(bootstrap: str, topic: str, signed: bool = False) -> list[tuple[str, str]]:
    """(kind, model) of the flow-wide events on `topic` so far (per-shard ones left out); with `signed`, the
    topic carries signed events and only those with a signature count."""
    messages = consume_all(bootstrap, topic, 1_000_000, timeout=2)
    if signed:
        envelopes = (decoded(SIGNED_EVENT, message.value()) for message in messages)
        events = [envelope.event for envelope in envelopes if envelope.signature]
    else:
        events = [decoded(EVENT, message.value()) for message in messages]
    return [(event.kind, event.model_name) for event in events if not event.shard]


def results_by_offset(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> dict[int, list]:
    """Every result on `topic`, grouped by the data offset it answers, once offsets 0 to `expected` - 1 all
    have one (or `timeout` passed): duplicates after a restart must not end the reading early."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[int, list] = {}
        for message in consume_all(bootstrap, topic, 10**9, timeout=3):
            offset = int(consumed_headers(message)[SOURCE_OFFSET_HEADER])
            found.setdefault(offset, []).append(RESULT.decode(message.value()))
        if len(found) >= expected or time.monotonic() > deadline:
            return found


class TailingFlow:
    """A main job tailing the data topic of `topics` (start_tailing_flow), as the cross-format experiments
    drive it: records in, each one's single result back, the flow-wide events."""

    def __init__(self, bootstrap: str, topics: dict[str, str], process: subprocess.Popen) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.process = process
        self.sent = 0

    def events(self) -> list[tuple[str, str]]:
        return flow_events(self.bootstrap, self.topics["events"])

    def answer(self, seed: int, count: int) -> tuple[list[RecommenderRecord], dict[int, RecommenderResult]]:
        """Produce `count` generated records; their results by index, each record answered once."""
        records = list(generated_records(seed, count))
        produce(self.bootstrap, self.topics["data"], encoded(records))
        start, self.sent = self.sent, self.sent + count
        answers = results_by_offset(self.bootstrap, self.topics["results"], self.sent)
        assert sorted(answers) == list(range(self.sent))
        assert all(len(results) == 1 for results in answers.values())
        return records, {offset - start: answers[offset][0] for offset in range(start, self.sent)}


def start_tailing_flow(
    bootstrap: str, prefix: str, champion: ModelDescriptor, **settings: str
) -> TailingFlow:
    """The main job on fresh topics named after `prefix`, tailing its data topic, with `champion` on its
    models topic, events, challenger reports, shadow results and explanations on topics of their own, two
    shards, and any other `settings`."""
    names = ["data", "models", "results", "dead", "events", "reports", "shadow", "explanations"]
    topics = create_topics(bootstrap, prefix, names)
    produce(bootstrap, topics["models"], [(b"champion", MODEL.encode(champion))])
    process = start_flow(
        bootstrap,
        topics,
        SERVING_KAFKA_EVENTS_TOPIC=topics["events"],
        SERVING_KAFKA_CHALLENGER_TOPIC=topics["reports"],
        SERVING_KAFKA_SHADOW_RESULTS_TOPIC=topics["shadow"],
        SERVING_KAFKA_EXPLANATIONS_TOPIC=topics["explanations"],
        SERVING_KAFKA_TAIL="true",
        SERVING_SHARDS="2",
        output=None,
        **settings,
    )
    return TailingFlow(bootstrap, topics, process)
