"""The exactly-once sink partition against producers that fail the ways a broker makes them fail: fenced
(a newer process took the id: the process ends saying so), lost (a broker that restarted without the
producer's state: a new producer writes the open transaction again, and the commit goes through), lost again
and again (the process ends naming the error, not fencing), and a marker kept within its bound.

The producer is a stand-in with the calls the partition makes; what it raises is the confluent-kafka error a
real one raises (`KafkaException` of a `KafkaError` flagged fatal). The broker-level runs are in
`test_exactly_once.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pytest
from confluent_kafka import KafkaError, KafkaException
from support.jobs import wait_for

from flows.adapters.kafka import exactly_once
from flows.adapters.kafka.answered import MARKER_RANGES, AnsweredOffsets, Covered, Marker
from flows.adapters.kafka.exactly_once import (
    EXIT_FENCED,
    EXIT_PRODUCER_FAILED,
    MAX_RENEWALS,
    Answer,
    MarkerScope,
    _TransactionalPartition,
)
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.kafka.sink import SinkMessage

KEY = b"k" * 32
SCOPE = MarkerScope("serving.results.records.0", "records", 0)
# The commit clock stays out of these tests (an hour's interval): the worker's calls commit.
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:1", answered_topic="answered", commit_interval=3600)


def fatal(code: int, reason: str) -> KafkaException:
    return KafkaException(KafkaError(code, reason, fatal=True))


class StandInProducer:
    """Records what is produced and committed; `commit_failures` are raised by the next commits, in turn."""

    def __init__(self, commit_failures: Sequence[Exception] = ()) -> None:
        self.commit_failures = list(commit_failures)
        self.produced: list[tuple[str, bytes]] = []
        self.committed: list[list[tuple[str, bytes]]] = []
        self.in_transaction: list[tuple[str, bytes]] = []

    def begin_transaction(self) -> None:
        self.in_transaction = []

    def produce(self, topic: str, value: bytes, **_: object) -> None:
        self.produced.append((topic, value))
        self.in_transaction.append((topic, value))

    def commit_transaction(self, timeout: float) -> None:
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.committed.append(self.in_transaction)

    def abort_transaction(self, timeout: float) -> None:
        self.in_transaction = []

    def poll(self, timeout: float) -> int:
        return 0


class Producers:
    """The producers the partition starts, each failing its commits as `plans` say (the last plan repeats)."""

    def __init__(self, *plans: list[Exception]) -> None:
        self.plans = list(plans)
        self.started: list[StandInProducer] = []

    def __call__(self) -> StandInProducer:
        plan = self.plans.pop(0) if len(self.plans) > 1 else list(self.plans[0])
        self.started.append(StandInProducer(plan))
        return self.started[-1]


def partition(
    producers: Producers, committed: AnsweredOffsets | None = None, settings: KafkaSettings = SETTINGS
) -> _TransactionalPartition:
    return _TransactionalPartition(
        producers,  # type: ignore[arg-type]  # stand-ins for confluent-kafka's Producer, duck-typed
        producers(),  # type: ignore[arg-type]
        SCOPE,
        settings,
        0,
        committed if committed is not None else AnsweredOffsets(),
        1_000_000,
        lambda message, reason: message,
        KEY,
    )


def answers(offsets: range) -> list[Answer]:
    return [
        Answer(Covered(0, offset, offset), SinkMessage(b"user", f"result {offset}".encode(), topic="results"))
        for offset in offsets
    ]


@pytest.fixture
def process_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """`os._exit` raises SystemExit instead, so the test sees the status the process would end with."""

    def exit_instead(status: int) -> None:
        raise SystemExit(status)

    monkeypatch.setattr(exactly_once.os, "_exit", exit_instead)


def test_a_producer_lost_with_the_brokers_state_is_replaced_and_its_transaction_committed(
    process_end, caplog
):
    lost = fatal(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "broker restarted without the producer's state")
    producers = Producers([lost], [])
    sink = partition(producers)
    sink.write_batch([answers(range(10))])
    with caplog.at_level(logging.WARNING):
        sink.snapshot()

    first, second = producers.started
    assert first.committed == []
    (transaction,) = second.committed
    results = [value for topic, value in transaction if topic == "results"]
    assert results == [f"result {offset}".encode() for offset in range(10)]
    [marker] = [Marker.decode(value, KEY) for topic, value in transaction if topic == "answered"]
    assert marker.answered.to_json() == [[0, 9]]
    assert "another process has taken" not in caplog.text
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in caplog.text


@pytest.mark.parametrize(
    "code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH]
)
def test_a_fenced_producer_ends_the_process_saying_another_process_took_its_id(process_end, caplog, code):
    producers = Producers([fatal(code, "fenced by a newer epoch")])
    sink = partition(producers)
    sink.write_batch([answers(range(3))])
    with pytest.raises(SystemExit) as ended, caplog.at_level(logging.ERROR):
        sink.snapshot()
    assert ended.value.code == EXIT_FENCED
    assert "another process has taken this data partition's transactional id" in caplog.text
    assert len(producers.started) == 1  # a zombie writes nothing more


def test_a_producer_lost_again_and_again_ends_the_process_naming_the_error_not_fencing(process_end, caplog):
    producers = Producers([fatal(KafkaError.UNKNOWN_PRODUCER_ID, "unknown producer id")])
    sink = partition(producers)
    sink.write_batch([answers(range(3))])
    with pytest.raises(SystemExit) as ended, caplog.at_level(logging.WARNING):
        sink.snapshot()
    assert ended.value.code == EXIT_PRODUCER_FAILED
    assert len(producers.started) == MAX_RENEWALS + 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "UNKNOWN_PRODUCER_ID" in errors[0]
    assert "another process has taken" not in caplog.text


def test_the_marker_stays_within_its_bound_however_fragmented_the_answered_set(process_end):
    fragmented = AnsweredOffsets()
    for offset in range(0, 10_000, 2):
        fragmented.add(offset, offset)
    producers = Producers([])
    sink = partition(producers, fragmented)
    sink.write_batch([answers(range(20_001, 20_011))])
    sink.snapshot()

    (transaction,) = producers.started[0].committed
    [value] = [value for topic, value in transaction if topic == "answered"]
    marker = Marker.decode(value, KEY)
    assert len(marker.answered) == MARKER_RANGES
    assert marker.answered.covers(20_010) and marker.answered.covers(9_998)
    assert len(value) < 64 * 1024


def test_a_partition_that_goes_quiet_is_committed_by_its_clock_not_left_for_the_snapshot(process_end):
    producers = Producers([])
    sink = partition(producers, settings=SETTINGS.model_copy(update={"commit_interval": 0.05}))
    sink.write_batch([answers(range(5))])  # and nothing after: no answer arrives to commit it
    [producer] = producers.started
    wait_for(lambda: producer.committed, "the commit clock's commit", timeout=30)

    (transaction,) = producer.committed
    assert [value for topic, value in transaction if topic == "results"] == [
        f"result {offset}".encode() for offset in range(5)
    ]
    [marker] = [Marker.decode(value, KEY) for topic, value in transaction if topic == "answered"]
    assert marker.answered.to_json() == [[0, 4]]
    sink.close()
    assert len(producer.committed) == 1  # nothing was left open for the close


def test_a_failure_the_commit_clock_meets_is_raised_in_the_worker_at_its_next_call(process_end):
    producers = Producers([RuntimeError("the commit broke")])
    sink = partition(producers, settings=SETTINGS.model_copy(update={"commit_interval": 0.05}))
    sink.write_batch([answers(range(3))])
    wait_for(lambda: sink.clock.failure is not None, "the commit clock's failure", timeout=30)
    with pytest.raises(RuntimeError, match="the commit broke"):
        sink.write_batch([answers(range(3, 6))])


def test_with_shadow_results_a_partition_commits_at_snapshots_only(process_end):
    """A shadow result must share its record's answer's transaction: only a snapshot is sure of that."""
    producers = Producers([])
    with_shadows = SETTINGS.model_copy(update={"commit_interval": 0.001, "shadow_results_topic": "shadows"})
    sink = partition(producers, settings=with_shadows)
    sink.write_batch([answers(range(3))])
    opened = sink.opened_at
    wait_for(lambda: time.monotonic() > opened + 0.01, "ten commit intervals")
    sink.write_batch([answers(range(3, 6))])
    [producer] = producers.started
    assert producer.committed == [] and not sink.clock.thread.is_alive()
    sink.snapshot()
    assert len(producer.committed) == 1
