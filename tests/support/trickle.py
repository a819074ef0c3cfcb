"""Records produced in the background while jobs run and are stopped, killed or rescaled."""

from __future__ import annotations

import threading
import time
from functools import partial

from confluent_kafka import Producer

from support.core_runs import sample_records
from support.jobs import encoded

GARBAGE_EVERY = 250  # one undecodable data message (a dead letter) in this many


class Trickle:
    """Data records, with a garbage message every GARBAGE_EVERY, produced in the background while jobs run."""

    def __init__(self, bootstrap: str, topic: str, per_tick: int = 25, tick_s: float = 0.05) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
        self.topic = topic
        self.records = encoded(sample_records(per_tick))
        self.tick_s = tick_s
        self.sent = 0
        self.delivered = 0  # what the broker acknowledged: a broker restart may lose the rest
        self.garbage = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Trickle:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        assert self.producer.flush(60) == 0, "the trickle's records were not all delivered"

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self.records:
                self.sent += 1
                garbage = self.sent % GARBAGE_EVERY == 0
                self._produce(key, b"\x00 garbage, not a record" if garbage else value, garbage)
            self.producer.poll(0)
            time.sleep(self.tick_s)

    def _delivered(self, garbage: bool, error: object, _message: object) -> None:
        if error is None:
            self.delivered += 1
            self.garbage += garbage

    def _produce(self, key: bytes, value: bytes, garbage: bool) -> None:
        while True:
            try:
                self.producer.produce(
                    self.topic, key=key, value=value, on_delivery=partial(self._delivered, garbage)
                )
                return
            except BufferError:  # a broker away: wait for the queue to drain
                self.producer.poll(0.5)
