"""The live page at `/` of the state endpoint: drawn in a real browser (headless Chromium) from a running
main job, hostile names shown as text, a cluster merged from its processes' `/state`, a bounded history."""

from __future__ import annotations

import os
import re
import shutil
import signal
from dataclasses import replace

import urllib3
from support import browser
from support.core_runs import at, messages, run_core, sample_records
from support.jobs import start_job, wait_for

from flows.adapters.observability.state_server import PAGE_HEADERS, start_state_server
from flows.core import history
from flows.core.descriptors import CHALLENGER
from flows.core.events import ModelEvent
from flows.core.history import History
from flows.core.vocabulary import EventKind
from flows.testing.loopback import free_port, free_ports
from flows.tools.query_state import fetch

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
SCREENSHOT = os.environ.get("SERVING_TEST_SCREENSHOT")  # also keep the main job's screenshot there (docs/)


def event_kinds(state: dict) -> set[str]:
    return {event["kind"] for event in state["history"]["events"]}


def shadow_compared(state: dict) -> bool:
    return any(entry["mode"] == "shadow" and entry["compared_records"] for entry in state["challengers"])


def test_the_live_page_draws_the_main_job_in_a_real_browser(tmp_path):
    chromium = browser.chromium()
    port = free_port()
    env = {
        **os.environ,
        "SERVING_STATE_PORT": str(port),
        "SERVING_RECORD_RATE": "1000",
        "SERVING_MODEL_INTERVAL": "4",
        "SERVING_DATA_SHIFT_AFTER": "4000",
        "SERVING_DRIFT_REFERENCE": "1000",
        "SERVING_DRIFT_WINDOW": "1000",
        "SERVING_OUTLIER_WINDOW": "1000",
        "SERVING_CONSOLE_EVERY": "0",
    }
    job = start_job(env, output=tmp_path / "job.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), "the state endpoint", 120)
        wait_for(
            lambda: (
                {"swapped", "drift", "outlier"} <= event_kinds(state := fetch(f"{url}/state", 5))
                and shadow_compared(state)
                and any(entry["latest"] for entry in state["explanations"].values())
            ),
            "a swap, drift and outlier events, a shadow challenger's comparison and an explanation on /state",
            180,
        )
        dom = browser.dump_dom(chromium, tmp_path / "profile", f"{url}/")
        picture = browser.screenshot(chromium, tmp_path / "profile", f"{url}/", tmp_path / "live-page.png")
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
    models = browser.texts(dom, "models", "tr")
    assert any(
        row["text"].startswith("recommender-v") and " champion " in f" {row['text']} " for row in models
    ), models
    events = browser.texts(dom, "events", "li")
    kinds = {
        re.search(r"data-kind=(\w+)", event["attrs"]).group(1)
        for event in events
        if "data-kind" in event["attrs"]
    }
    assert {"accepted", "swapped", "drift", "outlier"} <= kinds, events
    drift_event = next(event for event in events if "data-kind=drift" in event["attrs"])
    assert "PSI of" in drift_event["text"]  # the reason, as the flow wrote it
    outlier_event = next(event for event in events if "data-kind=outlier" in event["attrs"])
    assert "outlier rate" in outlier_event["text"]
    detectors = browser.texts(dom, "outliers", "tr")
    assert any("fitted on its reference" in row["text"] for row in detectors), detectors
    assert "share of each window's records scored as outliers" in dom
    explained = [row["text"] for row in browser.texts(dom, "explanations", "tr")]
    assert any(text.startswith("recommender-v") for text in explained), explained
    challengers = browser.texts(dom, "challengers", "tr")
    shadow = [row for row in challengers if " shadow 100% " in f" {row['text']} "]
    assert shadow, challengers
    agreement = re.search(r"shadow 100% [\d,]+ [\d,]+ \d+ (0(?:\.\d+)?|1) ", shadow[0]["text"])
    assert agreement and 0 <= float(agreement.group(1)) <= 1, shadow[0]["text"]  # the top-k agreement figure
    captions = [caption["text"] for caption in browser.texts(dom, "drift", "figcaption")]
    assert any("PSI per feature" in caption for caption in captions), captions
    assert "threshold 0.2" in dom
    assert "This process only" in dom  # no peers configured: the page says whose figures it shows
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    if SCREENSHOT:
        shutil.copyfile(picture, SCREENSHOT)


def _answers(url: str) -> bool:
    try:
        fetch(f"{url}/state", 2)
        return True
    except (urllib3.exceptions.HTTPError, OSError, RuntimeError):
        return False


def test_a_model_named_like_markup_renders_as_text_on_a_cluster_page(model_v1, model_v2, tmp_path):
    chromium = browser.chromium()
    hostile_challenger = replace(model_v2, model_name=HOSTILE, role=CHALLENGER, mode="shadow", fraction=1.0)
    records = sample_records(300)
    data = at(1.5, [messages(records[start : start + 50]) for start in range(0, len(records), 50)])
    run = run_core(data, at(0, [model_v1]) + at(0.5, [hostile_challenger]))
    ports = free_ports(3)  # two processes (here: one state, served twice) and a peer that never answers
    urls = [f"http://127.0.0.1:{port}/state" for port in ports]
    servers = [start_state_server("127.0.0.1", port, run.context.state, tuple(urls)) for port in ports[:2]]
    try:
        cluster = fetch(f"http://127.0.0.1:{ports[0]}/cluster", 10)
        dom = browser.dump_dom(chromium, tmp_path / "profile", f"http://127.0.0.1:{ports[0]}/")
    finally:
        for server in servers:
            server.shutdown()
    [alone] = run.context.state.per_model()
    assert [(model["name"], model["usage"]) for model in cluster["models"]] == [
        (alone["name"], 2 * alone["usage"])
    ]
    assert [process.get("error", "") == "" for process in cluster["processes"]] == [True, True, False]
    assert sum(
        bucket["records"] for bucket in cluster["history"]["throughput"][model_v1.model_name]
    ) == 2 * len(records)  # each bucket of one start time added over the two processes
    assert HOSTILE in {event["model"] for event in cluster["history"]["events"]}
    assert "<img" not in dom and "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    escaped = "&lt;img src=x onerror=\"document.title='pwned'\"&gt;"
    challengers = browser.texts(dom, "challengers", "tr")
    assert any(row["text"].startswith(HOSTILE) for row in challengers), challengers  # shown, as text
    assert escaped in dom
    assert "The cluster: 2 of 3 processes answered" in dom
    assert f"{urls[2]}: " in dom  # the peer that did not answer is named


def test_the_page_is_served_with_a_policy_that_allows_no_inline_script(model_v1):
    run = run_core(at(0, []), at(0, [model_v1]))
    port = free_port()
    server = start_state_server("127.0.0.1", port, run.context.state)
    try:
        page = urllib3.request("GET", f"http://127.0.0.1:{port}/", retries=False)
        script = urllib3.request("GET", f"http://127.0.0.1:{port}/dashboard.js", retries=False)
        missing = urllib3.request("GET", f"http://127.0.0.1:{port}/../etc/passwd", retries=False)
    finally:
        server.shutdown()
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script>" not in page.data.decode()  # the page's one script is a file, allowed by 'self'
    assert "innerHTML" not in script.data.decode() and "insertAdjacentHTML" not in script.data.decode()
    assert missing.status == 404


def test_the_history_is_bounded_and_folds_one_change_over_shards(monkeypatch):
    recent = History()
    for shard in range(8):
        recent.event(ModelEvent(EventKind.SWAPPED, "m", shard=f"shard-00{shard}"), at_ms=1_000 + shard)
    recent.event(ModelEvent(EventKind.ACCEPTED, "m"), at_ms=2_000)
    events = recent.document()["events"]
    assert [(event["kind"], event["shards"]) for event in events] == [("swapped", 8), ("accepted", 0)]
    for index in range(history.LENGTH + 50):
        recent.event(ModelEvent(EventKind.REJECTED, f"bad-{index}", reason="no"), at_ms=3_000 + index)
        recent.scored(
            f"model-{index % (history.MAX_SERIES + 4)}", 10, 0, 1.0, at_ms=index * 1000 * history.BUCKET_S
        )
        recent.lag("topic", index % (history.MAX_SERIES + 4), index, at_ms=index * 1000 * history.BUCKET_S)
    document = recent.document()
    assert (
        len(document["events"]) == history.LENGTH
        and document["events"][-1]["model"] == f"bad-{history.LENGTH + 49}"
    )
    assert len(document["throughput"]) == history.MAX_SERIES and len(document["lag"]) == history.MAX_SERIES
    assert all(len(series) <= history.LENGTH for series in document["throughput"].values())
    recent.scored("aligned", 5, 1, 2.0, at_ms=10_001)
    recent.scored("aligned", 7, 0, 4.0, at_ms=14_999)  # the same 5-second bucket, on the wall clock
    [bucket] = recent.document()["throughput"]["aligned"]
    assert bucket == {"t": 10_000, "records": 12, "errors": 1, "calls": 2, "call_ms": 6.0, "max_call_ms": 4.0}
