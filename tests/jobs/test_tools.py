"""The command-line tools against the test broker: publish a model, load records, watch the results."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tomllib
from support.hostile_pmml import quadrant_tree
from support.jobs import REPO, run_flow_to_end_of_topics

from flows.core.descriptors import ModelType
from flows.testing.local_broker import consume_all, create_topics
from flows.tools import loadgen, publish_model, query_state, watch_results
from flows.wire.avro import MODEL, RECORD

TOOLS = [
    "loadgen",
    "publish_model",
    "watch_results",
    "query_state",
    "audit",
    "model_keys",
    "train_model",
    "plot_bench",
    "retrain",
    "recovery_store",
    "onnx_ensemble",
    "onnx_wrap",
]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_has_help_under_its_script_name(tool):
    done = subprocess.run(
        [sys.executable, "-m", f"flows.tools.{tool}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    script = f"serving-{tool.replace('_', '-')}"
    assert done.returncode == 0 and f"usage: {script}" in done.stdout, done.stderr


def test_every_tool_is_a_script_and_every_script_is_a_tool():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts.pop("serving-bench") == "flows.bench.__main__:main"
    assert scripts == {f"serving-{tool.replace('_', '-')}": f"flows.tools.{tool}:main" for tool in TOOLS}


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


def test_a_pmml_file_is_published_as_it_is(kafka_bootstrap, tmp_path):
    topics = create_topics(kafka_bootstrap, "pmml", ["models"])
    document = tmp_path / "quadrants.pmml"
    document.write_bytes(quadrant_tree())
    assert (
        publish_model.main(
            ["--file", str(document), "--topic", topics["models"], "--bootstrap-servers", kafka_bootstrap]
        )
        == 0
    )
    [message] = consume_all(kafka_bootstrap, topics["models"], 1)
    published = MODEL.decode(message.value())
    assert (published.model_name, published.model_type) == ("quadrants", ModelType.PMML)
    assert published.model_bytes == quadrant_tree()


def test_publisher_refuses_a_model_over_the_size_limit(kafka_bootstrap, monkeypatch, capsys):
    topics = create_topics(kafka_bootstrap, "big", ["models"])
    monkeypatch.setenv("SERVING_KAFKA_PRODUCER_CONFIG", json.dumps({"message.max.bytes": "100000"}))
    code = publish_model.main(
        ["--version", "1", "--topic", topics["models"], "--bootstrap-servers", kafka_bootstrap]
    )
    assert code == 2
    assert "over the 100,000 bytes allowed by the producer's message.max.bytes" in capsys.readouterr().err
    assert consume_all(kafka_bootstrap, topics["models"], 1, timeout=3) == []


def test_plot_bench_draws_throughput_and_latency_from_json_lines(tmp_path):
    from flows.tools import plot_bench

    lines = [
        {"scenario": "embedded", "offered_rate": "unthrottled", "records_per_s": 20_000, "p50_ms": 9,
         "p99_ms": 20},
        {"scenario": "embedded", "offered_rate": "unthrottled", "records_per_s": 30_000, "p50_ms": 8,
         "p99_ms": 19},
        {"scenario": "kafka-embedded", "offered_rate": "pre-loaded", "records_per_s": 9_000, "partitions": 4,
         "p50_ms": 900, "p99_ms": 1500},
        {"scenario": "embedded", "offered_rate": 1000, "records_per_s": 1000, "p50_ms": 1.0, "p99_ms": 3.0},
        {"scenario": "embedded", "offered_rate": 1000, "records_per_s": 1000, "p50_ms": 2.0, "p99_ms": 5.0},
        {"scenario": "embedded", "offered_rate": 5000, "records_per_s": 5000, "p50_ms": 1.5, "p99_ms": 4.0},
    ]  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    read = plot_bench.read_results([results])
    assert plot_bench.throughput_by_scenario(read) == {
        "embedded": [20_000, 30_000],
        "kafka-embedded ×4 partitions": [9_000],
    }
    assert plot_bench.latency_by_rate(read) == {"embedded": {1000.0: (1.5, 4.0), 5000.0: (1.5, 4.0)}}
    out = tmp_path / "plot.png"
    assert plot_bench.main([str(results), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert plot_bench.main([str(empty), "--out", str(tmp_path / "none.png")]) == 2


def test_plot_bench_draws_the_scaling_curve_where_runs_differ_in_process_count(tmp_path):
    from flows.tools import plot_bench

    def run(partitions, processes, rate):
        return {"scenario": "kafka-embedded", "offered_rate": "pre-loaded", "records_per_s": rate,
                "partitions": partitions, "processes": processes, "p50_ms": 900, "p99_ms": 1500}  # fmt: skip

    read = [run(4, 1, 10_000), run(4, 1, 12_000), run(4, 2, 19_000), run(8, 2, 20_000), run(8, 4, 30_000),
            run(2, 2, 5_000)]  # fmt: skip
    assert plot_bench.throughput_by_processes(read) == {
        "kafka-embedded ×4 partitions": {1: 11_000, 2: 19_000},
        "kafka-embedded ×8 partitions": {2: 20_000, 4: 30_000},
    }  # 2 partitions ran on one process count only: no curve
    results = tmp_path / "scaling.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in read))
    out = tmp_path / "scaling.png"
    assert plot_bench.main([str(results), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_bench_latency_gives_medians_per_delivery_and_rate_and_draws_them(tmp_path, capsys):
    from flows.tools import plot_bench

    def run(delivery, rate, visible_p99, scenario="kafka-embedded"):
        return {"scenario": scenario, "offered_rate": rate, "delivery": delivery, "records_per_s": rate,
                "p50_ms": 10, "p99_ms": 40, "visible_p50_ms": 20, "visible_p99_ms": visible_p99}  # fmt: skip

    read = [run("exactly-once", 5000, 300), run("exactly-once", 5000, 100), run("exactly-once", 5000, 200),
            run("at-least-once", 1000, 50), run("at-least-once", "pre-loaded", 9),
            run("at-least-once", 1000, 7, scenario="embedded")]  # fmt: skip
    assert {delivery: list(by_rate) for delivery, by_rate in plot_bench.latency_runs(read).items()} == {
        "at-least-once": [1000.0],
        "exactly-once": [5000.0],
    }
    results = tmp_path / "latency.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in read))
    out = tmp_path / "latency.png"
    assert plot_bench.main([str(results), "--latency", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| exactly-once | 5,000 | 5,000 | 20 | 200 | 10 | 40 | 3 |" in table
    assert "| at-least-once | 1,000 | 1,000 | 20 | 50 | 10 | 40 | 1 |" in table
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_bench_prints_a_table_of_medians(tmp_path, capsys):
    from flows.tools import plot_bench

    lines = [
        {"scenario": "kafka-embedded", "offered_rate": "pre-loaded", "records_per_s": rate, "p50_ms": p50,
         "p99_ms": 2 * p50, "partitions": 2, "processes": 2}
        for rate, p50 in [(30_000, 10), (20_000, 30), (40_000, 20)]
    ] + [{"scenario": "kafka-baseline", "offered_rate": "pre-loaded", "records_per_s": 25_000, "p50_ms": 1,
          "p99_ms": 2}, {"scenario": "embedded", "offered_rate": 1000, "records_per_s": 1000, "p50_ms": 1,
          "p99_ms": 2}]  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in lines))
    assert plot_bench.main([str(results), "--table"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2:] == [
        (
            "| `kafka-embedded ×2 partitions, main job ×2 processes` "
            "| 30,000 (20,000 – 40,000; 3) | 20.0 | 40.0 |"
        ),
        "| `kafka-baseline` | 25,000 (25,000 – 25,000; 1) | 1.0 | 2.0 |",
    ]


def test_plot_bench_prints_the_formats_table_one_column_per_scorer(tmp_path, capsys):
    from flows.tools import plot_bench

    def embedded(source, rate, p99, rss, offered="unthrottled"):
        return {"scenario": "embedded", "offered_rate": offered, "records_per_s": rate, "p50_ms": 5,
                "p99_ms": p99, "call_p50_ms": 2, "call_p99_ms": 4, "rss_mb": rss,
                "source": source}  # fmt: skip

    def call_cost(source, one, rss):
        return {"scenario": "call-cost", "offered_rate": "unthrottled", "source": source, "rss_mb": rss,
                "call_ms_batch_1": one, "call_ms_batch_100": 2 * one,
                "call_ms_batch_1000": 10 * one}  # fmt: skip

    lines = [embedded("embedded:onnx", 100_000, 9, 120), embedded("embedded:pmml", 20_000, 60, 230),
             embedded("embedded:onnx", 140_000, 19, 124), embedded("embedded:onnx", 900, 1, 1, offered=1000),
             call_cost("embedded:pmml", 0.5, 232), call_cost("embedded:pmml", 0.7, 236),
             {"scenario": "kafka-embedded", "offered_rate": "pre-loaded", "records_per_s": 1, "p50_ms": 1,
              "p99_ms": 1}]  # fmt: skip
    results = tmp_path / "formats.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in lines))
    assert plot_bench.main([str(results), "--formats"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| | `embedded:onnx` | `embedded:pmml` |"
    assert "| `embedded`: records/s, median (range; runs) | 120,000 (100,000 – 140,000; 2) " in rows[2]
    assert rows[4] == "| `embedded`: p99 per record | 14.0 ms | 60.0 ms |"
    assert rows[7] == "| `embedded`: resident memory after warm-up | 122 MB | 230 MB |"
    assert rows[8:11] == [
        "| one call, 1 pair | - | 0.600 ms |",
        "| one call, 100 pairs | - | 1.200 ms |",
        "| one call, 1,000 pairs | - | 6.000 ms |",
    ]
    assert rows[11] == "| resident memory, the scorer alone (`call-cost`) | - | 234 MB |"


def test_plot_bench_prints_what_outlier_scoring_and_explanations_cost(tmp_path, capsys):
    from flows.tools import plot_bench

    def run(state, rate, p99, cpu=None, scenario="embedded", offered="unthrottled"):
        return {"scenario": scenario, "offered_rate": offered, "records_per_s": rate, "p50_ms": 1,
                "p99_ms": p99, "source": "embedded:onnx", "outliers": state, "explain": state,
                **({"cpu_us_per_record": cpu} if cpu else {})}  # fmt: skip

    def cost(source, one, sixteen):
        return {"scenario": "explain-cost", "offered_rate": "unthrottled", "source": source,
                "ms_per_explained_1_records": one, "ms_per_explained_16_records": sixteen}  # fmt: skip

    lines = [run("on", 90_000, 20, 9.0), run("off", 100_000, 10, 8.0), run("on", 94_000, 30, 10.0),
             run("off", 96_000, 12, 9.0), run("on", 5_000, 40, None, "kafka-embedded", 5000),
             run("off", 5_000, 30, None, "kafka-embedded", 5000),
             {**run("on", 1, 1), "explain": "off"},  # neither both on nor both off: left out
             cost("embedded:onnx", 0.5, 0.15), cost("embedded:onnx", 0.7, 0.13),
             cost("tfserving+grpc://127.0.0.1:1", 3.0, 0.3)]  # fmt: skip
    results = tmp_path / "monitoring.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in lines))
    assert plot_bench.main([str(results), "--monitoring"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == (
        "| `embedded` embedded:onnx | unthrottled | 92,000 (90,000 – 94,000; 2) "
        "| 98,000 (96,000 – 100,000; 2) | +6.1% | 25.0 ms | 11.0 ms | 9.50 µs | 8.50 µs |"
    )
    assert rows[3].startswith("| `kafka-embedded` embedded:onnx | 5,000/s | 5,000 ")
    assert rows[3].endswith("| +0.0% | 40.0 ms | 30.0 ms | - | - |")
    assert rows[7:] == [
        "| `embedded:onnx` | 0.600 ms | 0.140 ms |",
        "| `tfserving+grpc` | 3.000 ms | 0.300 ms |",
    ]


@pytest.mark.parametrize(
    "body, reason",
    [(b"{}", "models"), (b'{"models": [{"name": 1}]}', "models.0"), (b'{"models": [], "time": NaN}', "NaN"),
     (b"[" * 100_000, "nested")],
    ids=["empty", "wrong-type", "nan", "deep"],
)  # fmt: skip
def test_query_state_names_the_process_whose_answer_is_not_a_state_document(
    body, reason, monkeypatch, capsys
):
    class Answer(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/state"
    monkeypatch.setattr(sys, "argv", ["serving-query-state", url])
    try:
        with pytest.raises(SystemExit) as exit_:
            query_state.main()
    finally:
        server.shutdown()
        server.server_close()
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and url in error and reason in error and "Traceback" not in error, error
