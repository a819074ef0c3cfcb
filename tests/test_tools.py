"""The command-line tools against the test broker: publish a model, load records, watch the results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from test_kafka import run_flow_to_end_of_topics

from flows import loadgen, publish_model, watch_results
from flows.avro import MODEL, RECORD
from flows.testing.local_broker import consume_all, create_topics


@pytest.mark.parametrize("tool", ["loadgen", "publish_model", "watch_results", "audit", "model_keys"])
def test_every_tool_has_help(tool):
    done = subprocess.run(
        [sys.executable, "-m", f"flows.{tool}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "usage: python -m flows." in done.stdout


def test_publish_load_serve_and_watch(kafka_bootstrap, capsys):
    topics = create_topics(kafka_bootstrap, "tools", ["data", "models", "results", "dead"])
    broker = ["--bootstrap-servers", kafka_bootstrap]
    assert publish_model.main(["--version", "2", "--topic", topics["models"], *broker]) == 0
    assert loadgen.main(["--records", "300", "--rate", "0", "--topic", topics["data"], *broker]) == 0
    models = consume_all(kafka_bootstrap, topics["models"], 1)
    assert MODEL.decode(models[0].value()).model_name == "recommender-v2"
    assert len(consume_all(kafka_bootstrap, topics["data"], 300)) == 300
    assert RECORD.decode(consume_all(kafka_bootstrap, topics["data"], 1)[0].value()).products

    run_flow_to_end_of_topics(kafka_bootstrap, topics)
    capsys.readouterr()
    assert (
        watch_results.main(["--topic", topics["results"], "--from-beginning", "--count", "300", *broker]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 300
    assert all("[recommender-v2, batch" in line for line in lines)


def test_publisher_refuses_a_model_over_the_size_limit(kafka_bootstrap, monkeypatch, capsys):
    topics = create_topics(kafka_bootstrap, "big", ["models"])
    monkeypatch.setenv("SERVING_KAFKA_PRODUCER_CONFIG", json.dumps({"message.max.bytes": "100000"}))
    code = publish_model.main(
        ["--version", "1", "--topic", topics["models"], "--bootstrap-servers", kafka_bootstrap]
    )
    assert code == 2
    assert "over the 100,000 bytes allowed by the producer's message.max.bytes" in capsys.readouterr().err
    assert consume_all(kafka_bootstrap, topics["models"], 1, timeout=3) == []
