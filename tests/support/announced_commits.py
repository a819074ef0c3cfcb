"""The main job with every transaction commit announced and held for a moment, so that a test can kill it
inside a commit: `python -m bytewax.run support.announced_commits` with `tests/` on the path.

Before each commit, the exactly-once sink's producer appends a line to the file SERVING_TEST_COMMIT_LOG and
waits SERVING_TEST_COMMIT_PAUSE seconds: the answers and the marker are produced, not yet committed.
"""

import os
import time

from confluent_kafka import Producer

from flows.adapters.kafka import exactly_once

COMMIT_LOG = os.environ["SERVING_TEST_COMMIT_LOG"]
PAUSE_S = float(os.environ.get("SERVING_TEST_COMMIT_PAUSE", "0.3"))


class AnnouncedProducer(Producer):
    def commit_transaction(self, *args: float) -> None:
        with open(COMMIT_LOG, "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} commit\n")
        time.sleep(PAUSE_S)
        super().commit_transaction(*args)


exactly_once.Producer = AnnouncedProducer  # type: ignore[misc]  # a monkeypatch: the sink builds this class

from flows.serving import flow

__all__ = ["flow"]
