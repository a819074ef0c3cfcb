"""The Kafka lag of the flow: per data partition, the topic's end minus the next offset the flow will read, on
/state, as the `serving.kafka.lag` gauge, and summed across processes by `serving-query-state`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
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
from flows.testing.local_broker import create_topics, produce
from flows.testing.loopback import free_port, free_ports
from flows.tools.query_state import fetch, merge_lag
from flows.wire.avro import MODEL

REPO = Path(__file__).resolve().parents[1]


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


def backlog(bootstrap: str, prefix: str) -> tuple[DataPollSource, str, list[PartitionLag]]:
    """A data source on a new one-partition topic holding 600 records, the partition's name, and the list its
    lag reports go to."""
    topics = create_topics(bootstrap, prefix, ["data"])
    produce(bootstrap, topics["data"], encoded(sample_records(600)))
    settings = KafkaSettings(bootstrap_servers=bootstrap, poll_size=50, tail=True)
    reports: list[PartitionLag] = []
    source = DataPollSource(
        settings, topics["data"], OFFSET_BEGINNING, consumer_config(settings), reports.append
    )
    return source, f"0-{topics['data']}", reports


def test_a_partition_reports_its_lag_while_it_reads(kafka_bootstrap):
    source, name, reports = backlog(kafka_bootstrap, "lag-unit")
    partition = source.build_part("kafka_data", name, None)
    read = read_before_the_report = 0
    try:
        while not reports:  # the consumer learns the partition's end from its first fetch response
            read_before_the_report = read  # a call measures, then polls
            read += sum(len(poll.batch) for poll in partition.next_batch())
        first = reports[0]
        assert first.end_offset == 600 and first.next_offset == read_before_the_report
        assert 0 < first.lag == 600 - read_before_the_report
        deadline = time.monotonic() + 60
        while not (reports[-1].lag == 0 and reports[-1].next_offset == 600):
            assert time.monotonic() < deadline, f"the lag never reached 0: {reports[-1]}"
            read += sum(len(poll.batch) for poll in partition.next_batch())
        assert read == 600
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


def test_the_lag_is_a_gauge_per_partition():
    context = ServingContext.create()
    reader = InMemoryMetricReader()
    context.telemetry.install(None, MeterProvider(metric_readers=[reader]))
    context.state.partition_lag(PartitionLag("data", 0, 40, 100, 1))
    context.state.partition_lag(PartitionLag("data", 3, 7, 7, 1))
    context.state.partition_lag(PartitionLag("data", 0, 90, 100, 2))  # the newer measurement replaces
    points = {
        (point.attributes["topic"], point.attributes["partition"]): point.value
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "serving.kafka.lag"
        for point in metric.data.data_points
    }
    context.telemetry.uninstall()
    assert points == {("data", 0): 10, ("data", 3): 0}


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
    """The lag merged over the processes' /state, as serving-query-state prints it; None while one is not up."""
    urls = [f"http://127.0.0.1:{port}/state" for port in ports]
    done = subprocess.run(
        [sys.executable, "-m", "flows.tools.query_state", "--lag", "--json", *urls],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


@pytest.mark.slow
def test_two_processes_show_the_lag_of_every_partition_and_follow_the_topic(kafka_bootstrap, model_v1):
    topics = create_topics(kafka_bootstrap, "lag-e2e", ["data", "models", "results", "dead"], partitions=4)
    produce(kafka_bootstrap, topics["models"], [(b"recommender", MODEL.encode(model_v1))])
    produce(kafka_bootstrap, topics["data"], encoded(sample_records(2000)))
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(2))
    ports = [free_port() for _ in range(2)]
    jobs = [
        start_flow(
            kafka_bootstrap, topics, "-i", str(index), "-a", addresses,
            SERVING_STATE_PORT=str(ports[index]), SERVING_KAFKA_TAIL="true",
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
            [sys.executable, "-m", "flows.tools.query_state", *[f"http://127.0.0.1:{p}/state" for p in ports]],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "Kafka lag: 0 messages over 4 data partitions" in summary
    finally:
        for job in jobs:
            job.terminate()
        for job in jobs:
            job.communicate(timeout=60)
