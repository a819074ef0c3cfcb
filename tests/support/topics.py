"""What the job tests write to a broker's topics and read back from them: models published with the tool,
the flow's events, results by the data offset they answer."""

from __future__ import annotations

import subprocess
import sys
import time

from flows.adapters.kafka.headers import SOURCE_OFFSET_HEADER, consumed_headers
from flows.testing.local_broker import consume_all
from flows.wire.avro import EVENT, RESULT, SIGNED_EVENT
from support.decoded import decoded
from support.jobs import REPO


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
