"""The main job with every transaction commit announced and held for a moment, so that a test can kill it
inside a commit, or between a commit and the next snapshot: `python -m bytewax.run support.announced_commits`
with `tests/` on the path.

Before each commit, the exactly-once sink's producer appends "PID commit" to the file SERVING_TEST_COMMIT_LOG
and waits SERVING_TEST_COMMIT_PAUSE seconds: the answers and the marker are produced, not yet committed.
After a commit made between snapshots (at SERVING_KAFKA_COMMIT_INTERVAL, not by a snapshot), it appends
"PID committed between snapshots" and holds the worker SERVING_TEST_COMMITTED_PAUSE seconds: the worker
cannot snapshot while it waits, so a kill then lands after that commit and before the next snapshot.
"""

import os
import time

from confluent_kafka import Producer

from flows.adapters.kafka import exactly_once

COMMIT_LOG = os.environ["SERVING_TEST_COMMIT_LOG"]
PAUSE_S = float(os.environ.get("SERVING_TEST_COMMIT_PAUSE", "0.3"))
COMMITTED_PAUSE_S = float(os.environ.get("SERVING_TEST_COMMITTED_PAUSE", "0"))
COMMITTED_BETWEEN = "committed between snapshots"
snapshotting = False  # whether the commit under way is a snapshot's (one worker thread: no lock needed)


def announce(what: str) -> None:
    with open(COMMIT_LOG, "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {what}\n")


class AnnouncedProducer(Producer):
    def commit_transaction(self, *args: float) -> None:
        announce("commit")
        time.sleep(PAUSE_S)
        super().commit_transaction(*args)
        if not snapshotting:
            announce(COMMITTED_BETWEEN)
            time.sleep(COMMITTED_PAUSE_S)


class AnnouncedSnapshots(exactly_once._TransactionalPartition):
    def snapshot(self) -> None:
        global snapshotting
        snapshotting = True
        try:
            super().snapshot()
        finally:
            snapshotting = False


# Monkeypatches: the sink builds these classes.
exactly_once.Producer = AnnouncedProducer  # type: ignore[misc]
exactly_once._TransactionalPartition = AnnouncedSnapshots  # type: ignore[misc]

from flows.serving import flow

__all__ = ["flow"]
