"""/state under abuse: half-open connections, floods, wrong paths and methods; scoring goes on."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from support.core_runs import at, messages, run_core, sample_records

from flows.adapters.observability import state_server
from flows.core.explanations import ExplainSettings
from flows.core.serving_state import ServingState
from flows.runtime.settings import Settings
from flows.testing.loopback import free_port, free_ports


def serving_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("Thread-") and thread.daemon)


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


# --- Hostile clients and peers (issue 30, item 4) --------------------------------------------------------

LOGGER = "flows.adapters.observability.state_server"


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closed `sock` within `within_s` seconds (anything it sent first is skipped)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed as well


def dribble(port: int, stop: threading.Event, cut_off: list[float]) -> None:
    """A slowloris client: a request line, then a header byte every 0.3 s; reconnects when dropped,
    noting when (seconds from its connection) in `cut_off`."""
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            stop.wait(0.2)
            continue
        started = time.monotonic()
        with sock:
            try:
                sock.sendall(b"GET /state HTTP/1.1\r\nHost: localhost\r\n")
                while not stop.wait(0.3):
                    sock.sendall(b"X")
            except OSError:
                cut_off.append(time.monotonic() - started)
        stop.wait(0.2)


def test_a_client_that_dribbles_its_request_is_cut_off(monkeypatch):
    monkeypatch.setattr(state_server, "REQUEST_DEADLINE_S", 1.0, raising=False)
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"GET /state HTTP/1.1\r\n")
        deadline = time.monotonic() + 30  # well past the 1 s bound, however loaded the machine
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X")  # a byte every 0.3 s: each read is well within READ_TIMEOUT_S
            except OSError:
                closed = True
            closed = closed or closed_by_server(sock, 0.3)
        assert closed, "a client that dribbled its request for 30 s was never cut off"
    finally:
        sock.close()
        server.shutdown()


def test_slowloris_clients_cannot_hold_every_slot():
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    stop = threading.Event()
    cut_off: list[float] = []
    attackers = [
        threading.Thread(target=dribble, args=(port, stop, cut_off), daemon=True)
        for _ in range(state_server.MAX_CONNECTIONS + 8)
    ]
    statuses = []
    try:
        for attacker in attackers:
            attacker.start()
        stop.wait(1.5)  # every slot is held by now, on the current code
        for _ in range(20):
            try:
                status = urllib3.request(
                    "GET", f"http://127.0.0.1:{port}/state", timeout=10, retries=False
                ).status
            except urllib3.exceptions.HTTPError:
                status = 0
            statuses.append(status)
            stop.wait(0.1)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(timeout=10)
        server.shutdown()
    assert statuses.count(200) >= 18, statuses  # answered while 24 slow clients kept connecting


def test_a_wrong_host_is_refused_on_loopback():
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    url = f"http://127.0.0.1:{port}/state"
    try:
        for host in ("localhost", f"localhost:{port}", "127.0.0.1:1", "[::1]:8081"):
            assert urllib3.request("GET", url, headers={"Host": host}).status == 200, host
        for host in ("rebound.example", f"rebound.example:{port}", "localhost.rebound.example"):
            assert urllib3.request("GET", url, headers={"Host": host}).status in (400, 421), host
            assert urllib3.request("POST", url, headers={"Host": host}).status in (400, 421), host
    finally:
        server.shutdown()


def test_a_non_loopback_bind_answers_only_the_allowed_hosts():
    port = free_port()
    peer = f"http://pod-1.serving:{port}/state"
    server = state_server.start_state_server(
        "0.0.0.0", port, ServingState(), (peer,), allowed_hosts=("state.example",)
    )
    url = f"http://127.0.0.1:{port}/state"
    try:
        for host in (f"state.example:{port}", "pod-1.serving", f"127.0.0.1:{port}", "10.1.2.3"):
            assert urllib3.request("GET", url, headers={"Host": host}).status == 200, host
        assert urllib3.request("GET", url, headers={"Host": "rebound.example"}).status in (400, 421)
    finally:
        server.shutdown()


def test_a_client_that_hangs_up_leaves_one_quiet_line(monkeypatch, caplog, capsys):
    big = {"padding": "x" * 32_000_000}  # far more than the socket buffers take: writing it must fail
    monkeypatch.setattr(state_server, "state_document", lambda state: big)
    caplog.set_level("DEBUG", logger=LOGGER)
    port = free_port()
    server = state_server.start_state_server("127.0.0.1", port, ServingState())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /state HTTP/1.1\r\nHost: localhost\r\n\r\n")
            sock.recv(1)  # the answer has begun
        deadline = time.monotonic() + 30
        while not [r for r in caplog.records if r.name == LOGGER] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.shutdown()
    [record] = [record for record in caplog.records if record.name == LOGGER]
    assert record.levelname in ("DEBUG", "INFO") and "\n" not in record.getMessage()
    assert record.exc_info is None and "Traceback" not in capsys.readouterr().err


HOSTILE_BODIES = {
    "/empty": b"{}",
    "/list": b"[1, 2]",
    "/wrong-types": b'{"models": "all of them", "lag": {"x": 1}}',
    "/wrong-entry": b'{"models": [{"name": 7, "usage": "many"}]}',
    "/nan": b'{"models": [], "time": NaN}',
    "/infinite": b'{"models": [], "drift": {"m": {"windows": 1, "psi": 1e999}}}',
    "/bad-explanations": b'{"models": [], "explanations": {"m": {"explained": "lots", "latest": [{}]}}}',
    "/deep": b"[" * 100_000 + b"]" * 100_000,
    "/deep-inside": b'{"models": [], "drift": {"m": {"windows": 1, "x": ' + b"[" * 990 + b"]" * 990 + b"}}}",
    "/huge": b'{"models": [], "padding": "' + b"x" * (9 * 1024 * 1024) + b'"}',
    "/not-json": b"<html>",
    "/error": b"",
}


class HostilePeers:
    """Peers at one local HTTP server: each path answers one hostile body (`HOSTILE_BODIES`), `/dribble`
    a valid start a byte every 0.2 s, `/silent` nothing at all, until `stop`."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        peers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/silent":
                    peers.stop.wait(60)
                    return
                self.send_response(500 if self.path == "/error" else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if self.path == "/dribble":
                    self.wfile.write(b'{"models": [')
                    while not peers.stop.wait(0.2):
                        self.wfile.write(b" ")
                else:
                    self.wfile.write(HOSTILE_BODIES[self.path])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile_peers():
    peers = HostilePeers()
    yield peers
    peers.close()


def strict_json(data: bytes):
    """JSON as a browser's JSON.parse takes it: no NaN or Infinity."""
    return json.loads(data, parse_constant=lambda constant: pytest.fail(f"{constant} in the answer"))


def cluster_of(model_v1, peer_paths: list[str], hostile_peers: HostilePeers) -> tuple[dict, list[str], int]:
    """/cluster of two healthy processes and the hostile peers at `peer_paths`: the document, the hostile
    URLs and the usage of the one model each healthy process served."""
    run = run_core(
        at(0, messages(sample_records(50))), at(0, [model_v1]), explain=ExplainSettings(fraction=0.2)
    )
    ports = free_ports(2)
    healthy = [f"http://127.0.0.1:{port}/state" for port in ports]
    hostile = [hostile_peers.url(path) for path in peer_paths]
    servers = [
        state_server.start_state_server("127.0.0.1", port, run.context.state, tuple(healthy + hostile))
        for port in ports
    ]
    try:
        answer = urllib3.request("GET", f"http://127.0.0.1:{ports[0]}/cluster", timeout=30, retries=False)
    finally:
        for server in servers:
            assert server is not None  # the ports were free
            server.shutdown()
    assert answer.status == 200, answer.data[:500]
    [alone] = run.context.state.per_model()
    return strict_json(answer.data), hostile, alone["usage"]


def test_cluster_keeps_the_healthy_processes_and_names_each_hostile_peer(model_v1, hostile_peers):
    document, hostile, usage = cluster_of(model_v1, list(HOSTILE_BODIES), hostile_peers)
    assert [(model["name"], model["usage"]) for model in document["models"]] == [
        (model_v1.model_name, 2 * usage)
    ]
    errors = {process["url"]: process.get("error", "") for process in document["processes"]}
    assert [url for url, error in errors.items() if not error] == [
        url for url in errors if url not in hostile
    ]  # the two healthy processes, without an error
    assert all(errors[url] for url in hostile), errors  # every hostile peer named, with its reason
    assert "Infinity" not in json.dumps(document)
    [(name, explained)] = document["explanations"].items()  # the one process's explanations, served twice
    assert name == model_v1.model_name and explained["explained"] > 0 and explained["explained"] % 2 == 0
    assert len(explained["latest"]) == min(10, explained["explained"])
    times = [item["start_time"] for item in explained["latest"]]
    assert times == sorted(times, reverse=True)


def test_cluster_answers_within_its_deadline_whatever_the_peers_do(model_v1, hostile_peers):
    started = time.monotonic()
    document, hostile, usage = cluster_of(model_v1, ["/dribble", "/silent"], hostile_peers)
    assert time.monotonic() - started < 25  # the peers would hold it for 60 s
    assert [model["usage"] for model in document["models"]] == [2 * usage]
    errors = {process["url"]: process.get("error", "") for process in document["processes"]}
    assert all(errors[url] for url in hostile), errors
