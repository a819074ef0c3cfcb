"""The Kafka lag of the flow: per data partition, the topic's end minus the next offset the flow will read, on
/state, as the `serving.kafka.lag` gauge, and summed across processes by `serving-query-state`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from support.core_runs import sample_records
from support.jobs import encoded, start_flow, wait_for

from flows.adapters.kafka.config import consumer_config
from flows.adapters.kafka.data_source import DataPollSource
from flows.adapters.kafka.settings import KafkaSettings
from flows.adapters.sources.model_gate import WaitForChampion
from flows.core.champion_gate import ChampionGate
from flows.core.context import ServingContext
from flows.core.serving_state import PartitionLag
from flows.testing.local_broker import create_topics, kafka_broker, produce
from flows.testing.loopback import consecutive_free_ports, free_ports
from flows.tools.query_state import fetch, merge_lag, render_lag
from flows.wire.avro import MODEL

REPO = Path(__file__).resolve().parents[2]


def topic_ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset, asked of the broker (not of the flow)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "lag-test"})
    try:
        return {
            index: consumer.get_watermark_offsets(TopicPartition(topic, index), timeout=10)[1]
            for index in range(partitions)
        }
    finally:
        consumer.close()


def backlog(bootstrap: str, prefix: str, report=None) -> tuple[DataPollSource, str, list[PartitionLag]]:
    """A data source on a new one-partition topic holding 600 records, the partition's name, and the list its
    lag reports go to (unless `report` takes them)."""
    topics = create_topics(bootstrap, prefix, ["data"])
    produce(bootstrap, topics["data"], encoded(sample_records(600)))
    settings = KafkaSettings(bootstrap_servers=bootstrap, poll_size=50, tail=True)
    reports: list[PartitionLag] = []
    source = DataPollSource(
        settings, topics["data"], OFFSET_BEGINNING, consumer_config(settings), report or reports.append
    )
    return source, f"0-{topics['data']}", reports


def produce_to(bootstrap: str, topic: str, partition: int, count: int) -> None:
    """`count` records onto one partition of `topic`."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in encoded(sample_records(count)):
        producer.produce(topic, key=key, value=value, partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0, f"{topic}[{partition}]: records left unsent"


def polled(partition) -> bool:
    """Call a partition's `next_batch` once, as Bytewax does between other work."""
    partition.next_batch()
    return True


def within_twice(reported: int, true: int) -> bool:
    """Whether a reported lag is within a factor of 2 of the true backlog."""
    return true / 2 <= reported <= true * 2


def wait_for_reports(
    reports: list[PartitionLag], holds, what: str, timeout: float = 60, keep_polling=None
) -> PartitionLag:
    """The first report (newest first) that `holds`, waiting for one up to `timeout` seconds; `keep_polling`
    is called in between (a partition's `next_batch`, as Bytewax calls it)."""
    deadline = time.monotonic() + timeout
    while True:
        for report in reversed(reports):
            if holds(report):
                return report
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last reports {reports[-3:]}"
        if keep_polling is not None:
            keep_polling()
        time.sleep(0.05)


def test_a_partition_reports_its_lag_while_it_reads(kafka_bootstrap):
    source, name, reports = backlog(kafka_bootstrap, "lag-unit")
    partition = source.build_part("kafka_data", name, None)
    read = 0
    try:
        wait_for(lambda: reports, "a first lag", 60)
        assert (reports[0].next_offset, reports[0].end_offset, reports[0].lag) == (0, 600, 600)
        deadline = time.monotonic() + 60
        while not (reports[-1].lag == 0 and reports[-1].next_offset == 600):
            assert time.monotonic() < deadline, f"the lag never reached 0: {reports[-1]}"
            read += sum(len(poll.batch) for poll in partition.next_batch())
        assert read == 600
        assert all(report.end_offset == 600 and report.lag == 600 - report.next_offset for report in reports)
    finally:
        partition.close()


def test_a_partition_waiting_for_its_first_model_reports_the_backlog_it_has_not_read(kafka_bootstrap):
    source, name, reports = backlog(kafka_bootstrap, "lag-gated")
    gate = ChampionGate()
    gated = WaitForChampion(source, gate, wait_s=3600).build_part("kafka_data", name, None)
    try:
        deadline = time.monotonic() + 60
        while not reports:  # librdkafka's prefetch tells the consumer the partition's end
            assert time.monotonic() < deadline, "no lag reported while waiting for a model"
            assert gated.next_batch() == []  # nothing read before a champion
            time.sleep(0.02)
        assert (reports[0].next_offset, reports[0].end_offset, reports[0].lag) == (0, 600, 600)
        gate.open()
        read = 0
        while read < 600:
            assert time.monotonic() < deadline, f"read {read} of 600 after the gate opened"
            read += sum(len(poll.batch) for poll in gated.next_batch())
    finally:
        gated.close()


def test_the_lag_tracks_a_growing_backlog_while_the_partition_waits_for_its_first_model(kafka_bootstrap):
    """The red team's stuck consumer: librdkafka stops fetching once ~1,000 messages are queued, so the end
    offset it last heard goes stale while the backlog grows (/state read 480-1,020 for a true 17,520)."""
    source, name, reports = backlog(kafka_bootstrap, "lag-stuck")
    topic = name.split("-", 1)[1]
    gated = WaitForChampion(source, ChampionGate(), wait_s=3600).build_part("kafka_data", name, None)
    try:
        true = 600
        for _ in range(5):  # the backlog grows to 8,100 while nothing is read
            produce(kafka_bootstrap, topic, encoded(sample_records(1500)))
            true += 1500
            wait_for_reports(
                reports,
                lambda report, true=true: report.end_offset == true and within_twice(report.lag, true),
                f"a lag within 2x of the true backlog of {true:,}",
                keep_polling=gated.next_batch,
            )
    finally:
        gated.close()


def test_the_lag_tracks_a_growing_backlog_while_the_flow_is_busy_scoring(kafka_bootstrap):
    """A very slow scorer keeps the worker from calling `next_batch` for as long as a model call lasts: the
    lag must still follow the topic (it read nothing new for up to 31 s before)."""
    source, name, reports = backlog(kafka_bootstrap, "lag-busy")
    topic = name.split("-", 1)[1]
    partition = source.build_part("kafka_data", name, None)
    try:
        deadline = time.monotonic() + 60
        read = 0
        while not read:
            assert time.monotonic() < deadline, "nothing read from a backlog of 600"
            read = sum(len(poll.batch) for poll in partition.next_batch())
        true = 600 - read
        for _ in range(3):  # the worker scores and does not poll while the backlog grows
            produce(kafka_bootstrap, topic, encoded(sample_records(1000)))
            true += 1000
            wait_for_reports(
                reports,
                lambda report, true=true: report.next_offset == read and within_twice(report.lag, true),
                f"a lag within 2x of the true backlog of {true:,} while the worker is busy",
            )
    finally:
        partition.close()


def test_a_partition_added_while_the_flow_runs_is_shown_unread_with_its_backlog(kafka_bootstrap):
    """Bytewax lists the partitions once, at the start: one added later is not read until a restart, and
    showed nothing at all before (lag 0 for 42 s with 600 records waiting)."""
    source, name, reports = backlog(kafka_bootstrap, "lag-added")
    topic = name.split("-", 1)[1]
    assert source.list_parts() == [name]
    partition = source.build_part("kafka_data", name, None)
    try:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
        produce_to(kafka_bootstrap, topic, 1, 300)
        added = wait_for_reports(
            reports,
            lambda report: report.partition == 1 and report.end_offset == 300,
            "the added partition's backlog",
            keep_polling=partition.next_batch,
        )
        assert added.unread and added.lag == 300 and added.next_offset == 0
        assert all(not report.unread for report in reports if report.partition == 0)
    finally:
        partition.close()


def test_a_broker_that_stops_answering_leaves_the_last_lag_with_its_growing_age():
    """Without an answer from the broker the lag is not measured: /state keeps the last figure and says how
    old it is, instead of re-stamping what the consumer heard before."""
    context = ServingContext.create()
    partition = None
    try:
        with kafka_broker() as bootstrap:
            source, name, _ = backlog(bootstrap, "lag-gone", context.state.partition_lag)
            partition = source.build_part("kafka_data", name, None)
            wait_for(lambda: polled(partition) and context.state.lag_per_partition(), "a first lag", 60)
            [measured] = context.state.lag_per_partition()
        deadline = time.monotonic() + 60
        while True:  # the partition goes on polling, the broker gone
            partition.next_batch()
            [entry] = context.state.lag_per_partition()
            if entry.get("age_s", 0) >= 5:
                break
            assert time.monotonic() < deadline, f"the lag's age never grew: {entry}"
            time.sleep(0.05)
        assert {**entry, "age_s": None} == {**measured, "age_s": None}
    finally:
        if partition is not None:
            partition.close()


def test_the_lag_and_its_age_are_gauges_per_partition():
    context = ServingContext.create()
    reader = InMemoryMetricReader()
    context.telemetry.install(None, MeterProvider(metric_readers=[reader]))
    now_ms = time.time_ns() // 1_000_000
    context.state.partition_lag(PartitionLag("data", 0, 40, 100, now_ms - 30_000))
    context.state.partition_lag(PartitionLag("data", 3, 7, 7, now_ms - 30_000))
    context.state.partition_lag(PartitionLag("data", 0, 90, 100, now_ms - 20_000))  # the newer replaces
    context.state.partition_lag(PartitionLag("data", 5, 0, 600, now_ms, unread=True))
    points = {
        (metric.name, point.attributes["topic"], point.attributes["partition"]): point.value
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name.startswith("serving.kafka.lag")
        for point in metric.data.data_points
    }
    context.telemetry.uninstall()
    lags = {key[1:]: value for key, value in points.items() if key[0] == "serving.kafka.lag"}
    ages = {key[1:]: value for key, value in points.items() if key[0] == "serving.kafka.lag_age"}
    assert lags == {("data", 0): 10, ("data", 3): 0}  # an unread partition: every process reports it
    assert ages.keys() == {("data", 0), ("data", 3)}
    assert 20 <= ages[("data", 0)] < 80 and 30 <= ages[("data", 3)] < 90
    state = {entry["partition"]: entry for entry in context.state.lag_per_partition()}
    assert 20 <= state[0]["age_s"] < 80 and state[5]["unread"] and not state[0]["unread"]


def test_serving_query_state_shows_each_lags_age_and_the_partitions_nobody_reads():
    entries = [
        {"topic": "data", "partition": 0, "lag": 20, "next_offset": 80, "end_offset": 100, "measured_ms": 2,
         "age_s": 31.0, "unread": False},
        {"topic": "data", "partition": 1, "lag": 600, "next_offset": 0, "end_offset": 600, "measured_ms": 2,
         "age_s": 0.4, "unread": True},
    ]  # fmt: skip
    text = render_lag(merge_lag([{"lag": entries}]), per_partition=True)
    assert "Kafka lag: 620 messages over 2 data partitions" in text
    assert "31 s ago" in text and "1 unread" in text
    [line_0] = [line for line in text.splitlines() if "data[0]" in line]
    [line_1] = [line for line in text.splitlines() if "data[1]" in line]
    assert "31 s ago" in line_0 and "unread" not in line_0
    assert "unread" in line_1 and "600" in line_1


def test_merging_keeps_the_newest_measurement_of_a_partition():
    older = {
        "topic": "data",
        "partition": 1,
        "lag": 500,
        "next_offset": 0,
        "end_offset": 500,
        "measured_ms": 1,
    }
    newer = {**older, "lag": 20, "next_offset": 480, "measured_ms": 2}
    other = {**older, "partition": 2, "lag": 5, "next_offset": 495, "measured_ms": 1}
    merged = merge_lag([{"lag": [older, other]}, {"lag": [newer]}, {}])
    assert merged["total"] == 25
    assert [(entry["partition"], entry["lag"]) for entry in merged["partitions"]] == [(1, 20), (2, 5)]


def lag_of(ports: list[int]) -> dict | None:
    """The lag merged over the processes' /state, as serving-query-state prints it; None while one is not
    up."""
    urls = [f"http://127.0.0.1:{port}/state" for port in ports]
    done = subprocess.run(
        [sys.executable, "-m", "flows.tools.query_state", "--lag", "--json", *urls],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_two_processes_show_the_lag_of_every_partition_and_follow_the_topic(kafka_bootstrap, model_v1):
    topics = create_topics(kafka_bootstrap, "lag-e2e", ["data", "models", "results", "dead"], partitions=4)
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    produce(kafka_bootstrap, topics["data"], encoded(sample_records(2000)))
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(2))
    ports = consecutive_free_ports(2)
    jobs = [
        start_flow(
            kafka_bootstrap, topics, "-i", str(index), "-a", addresses,
            SERVING_STATE_PORT=str(ports[0]), SERVING_KAFKA_TAIL="true",  # process 1 takes the next port
        )
        for index in range(2)
    ]  # fmt: skip
    try:

        def caught_up_with(ends: dict[int, int]) -> bool:
            lag = lag_of(ports)
            if lag is None or len(lag["partitions"]) != 4:
                return False
            return (
                lag["total"] == 0
                and {entry["partition"]: entry["end_offset"] for entry in lag["partitions"]} == ends
            )

        wait_for(
            lambda: caught_up_with(topic_ends(kafka_bootstrap, topics["data"], 4)),
            "lag 0 on 4 partitions",
            120,
        )
        per_process = [fetch(f"http://127.0.0.1:{port}/state", timeout_s=5)["lag"] for port in ports]
        assert all(per_process), "each process reads some of the partitions"
        read_by = [{entry["partition"] for entry in entries} for entries in per_process]
        assert read_by[0].isdisjoint(read_by[1]) and read_by[0] | read_by[1] == {0, 1, 2, 3}

        produce(kafka_bootstrap, topics["data"], encoded(sample_records(1000, 5000)))
        ends = topic_ends(kafka_bootstrap, topics["data"], 4)
        assert sum(ends.values()) == 3000
        wait_for(lambda: caught_up_with(ends), "the lag to follow 1,000 more records back to 0", 120)
        summary = subprocess.run(
            [sys.executable, "-m", "flows.tools.query_state",
             *[f"http://127.0.0.1:{p}/state" for p in ports]],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "Kafka lag: 0 messages over 4 data partitions" in summary
    finally:
        for job in jobs:
            job.terminate()
        for job in jobs:
            job.communicate(timeout=60)
