"""/state under abuse: half-open connections, floods, wrong paths and methods; scoring goes on."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import urllib3
from support.core_runs import at, messages, run_core, sample_records

from flows.adapters.observability import state_server
from flows.core.serving_state import ServingState
from flows.runtime.settings import Settings
from flows.testing.loopback import free_port


def serving_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("Thread-") and thread.daemon)


@pytest.mark.slow
def test_half_open_connections_neither_leak_threads_nor_stop_scoring(model_v1, monkeypatch):
    monkeypatch.setattr(state_server, "READ_TIMEOUT_S", 1.0)
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    assert server is not None
    baseline = threading.active_count()
    sockets = []
    try:
        for _ in range(200):  # connect, send nothing
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() - baseline <= state_server.MAX_CONNECTIONS
        # Scoring is not disturbed meanwhile.
        records = sample_records(200)
        run = run_core(at(0, messages(records)), at(0, [model_v1]))
        assert len(run.results) == len(records) and run.errors() == []
        time.sleep(1.5)  # past the read timeout: the held connections are dropped, their threads end
        assert threading.active_count() <= baseline + 1
        answer = urllib3.request("GET", f"http://127.0.0.1:{port}/state", timeout=5)
        assert answer.status == 200 and "models" in answer.json()
    finally:
        for held in sockets:
            held.close()
        server.shutdown()


def test_a_flood_of_requests_gets_answers_or_quick_refusals(monkeypatch):
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    statuses: list[int] = []
    lock = threading.Lock()

    def ask() -> None:
        try:
            status = urllib3.request("GET", f"http://127.0.0.1:{port}/state", timeout=5, retries=False).status
        except urllib3.exceptions.HTTPError:
            status = 0  # turned away before any answer
        with lock:
            statuses.append(status)

    started = time.monotonic()
    askers = [threading.Thread(target=ask) for _ in range(200)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    server.shutdown()
    assert time.monotonic() - started < 5  # nobody waited for a timeout
    assert len(statuses) == 200 and statuses.count(200) >= 16
    assert set(statuses) <= {200, 503, 0}


def test_paths_and_methods_get_the_right_status():
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    base = f"http://127.0.0.1:{port}"
    try:
        assert urllib3.request("GET", f"{base}/state").status == 200
        assert urllib3.request("GET", f"{base}/state/").status == 200
        head = urllib3.request("HEAD", f"{base}/state")
        assert head.status == 200 and head.data == b""
        assert urllib3.request("GET", f"{base}/other").status == 404
        refused = urllib3.request("POST", f"{base}/state", body=b"{}")
        assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
        assert urllib3.request("DELETE", f"{base}/state").status == 405
    finally:
        server.shutdown()


def test_state_listens_on_loopback_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("SERVING_STATE_HOST", raising=False)
    assert Settings.from_environment().state.host == "127.0.0.1"
