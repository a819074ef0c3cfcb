"""HTTP `GET /state`: the ModelToServeStats of the models this process serves, as JSON (as the original did),
with their recent history; `GET /` a live page drawn from it; `GET /cluster` the same document merged over
the processes `SERVING_STATE_PEERS` names (this one's alone if none), which the page reads.

Each process answers for its own shards; `python -m flows.tools.query_state` asks several and merges, as
`/cluster` does. Runs in a daemon thread next to the dataflow; it only reads the flow's `ServingState`.

Whoever can reach the port can open connections, so the server bounds what they cost: at most
`MAX_CONNECTIONS` are served at once (more are closed at once, with a 503 if they can take it), a
connection that sends nothing is dropped after `READ_TIMEOUT_S`, and only `GET`/`HEAD /state` are
answered, with the page's three files and `/cluster` (404 for other paths, 405 for other methods). It
listens on 127.0.0.1 unless SERVING_STATE_HOST says otherwise (the Kubernetes manifests set 0.0.0.0). The
page shows names and reasons that whoever writes the models topic chose: it puts them in as text only, and
its Content-Security-Policy allows no script but its own file. `/cluster` asks only the configured peers,
with a timeout and a size limit each.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import urllib3
from pydantic import Field

from flows.core.sections import Section, comma_separated
from flows.core.serving_state import ServingState
from flows.core.state_merge import merge_documents

log = logging.getLogger(__name__)


class StateServerSettings(Section):
    """Where `GET /state` listens (`SERVING_STATE_*`)."""

    port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="port of the HTTP `GET /state` endpoint (`0`: off); two processes on one host need two ports",
    )
    host: str = Field(
        "127.0.0.1",
        description="address the `/state` endpoint listens on; `0.0.0.0` for every interface (the Kubernetes manifests set it)",
    )
    peers: str = Field(
        "",
        description="`/state` URLs of every process of the cluster, this one included (`http://pod-0:8081/state,...`): the live page at `/` merges them; unset: it shows this process alone",
    )

    @property
    def peer_urls(self) -> tuple[str, ...]:
        return comma_separated(self.peers)


def state_document(state: ServingState) -> dict[str, Any]:
    return {
        "time": time.time_ns() // 1_000_000,
        "models": state.per_model(),
        "shards": state.models_by_shard(),
        "drift": state.drift_per_model(),
        "challengers": state.challengers(),
        "lag": state.lag_per_partition(),
        "history": state.history.document(),
    }


MAX_CONNECTIONS = 16
READ_TIMEOUT_S = 5.0
PATH = "/state"
CLUSTER_PATH = "/cluster"
PEER_TIMEOUT_S = 2.0
PEER_MAX_BYTES = 8 * 1024 * 1024
PAGE_FILES = {  # path: (file in page/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("flows.adapters.observability") / "page"
    return {path: ((folder / name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}


class Cluster:
    """The documents of the configured peers, merged for `/cluster`; without peers, this process alone."""

    def __init__(self, state: ServingState, peer_urls: tuple[str, ...]) -> None:
        self.state = state
        self.peer_urls = peer_urls
        self._http = urllib3.PoolManager(timeout=PEER_TIMEOUT_S, retries=False, maxsize=2)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(len(peer_urls), 8)), thread_name_prefix="peers"
        )

    def document(self) -> dict[str, Any]:
        if not self.peer_urls:
            return {**state_document(self.state), "processes": [{"url": "this process"}]}
        answers = list(self._pool.map(self._ask, self.peer_urls))
        documents = [document for document, _ in answers if document is not None]
        processes = [
            {"url": url, **({"error": error} if error else {})}
            for url, (_, error) in zip(self.peer_urls, answers)
        ]
        return {**merge_documents(documents), "processes": processes}

    def _ask(self, url: str) -> tuple[dict[str, Any] | None, str]:
        try:
            response = self._http.request("GET", url, preload_content=False)
            try:
                body = response.read(PEER_MAX_BYTES + 1, decode_content=True)
            finally:
                response.release_conn()
            if response.status != 200:
                return None, f"HTTP {response.status}"
            if len(body) > PEER_MAX_BYTES:
                return None, f"answer over {PEER_MAX_BYTES:,} bytes"
            document = json.loads(body)
            if not isinstance(document, dict):
                return None, "not a /state document"
            return document, ""
        except (urllib3.exceptions.HTTPError, ValueError, OSError) as error:
            return None, f"{type(error).__name__}: {str(error)[:200]}"


def _handler(state: ServingState, cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    page = _page_files()
    documents = {PATH: lambda: state_document(state), CLUSTER_PATH: cluster.document}

    class StateHandler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S  # socket timeout: a client that sends nothing is dropped

        def log_message(self, *args: Any) -> None:
            pass

        def _served_path(self) -> str | None:
            path = self.path.split("?")[0]
            path = path if path == "/" else path.rstrip("/")
            if path in documents or path in page:
                return path
            self.send_error(404, "only /, /state and /cluster are served here")
            return None

        def _answer(self, with_body: bool) -> None:
            path = self._served_path()
            if path is None:
                return
            if path in page:
                body, kind = page[path]
                headers = PAGE_HEADERS
            else:
                body, kind = json.dumps(documents[path]()).encode(), "application/json"
                headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _not_allowed(self) -> None:
            if self._served_path() is not None:
                self.send_response(405)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Length", "0")
                self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    return StateHandler


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but at most `MAX_CONNECTIONS` at once; the rest are turned away."""

    daemon_threads = True
    # Connections waiting to be accepted (and turned away, past the limit): socketserver's default of 5
    # made a burst's extra clients wait for TCP's SYN retries, seconds each.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, request: socket.socket) -> None:
        try:
            request.setblocking(False)
            request.send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        except OSError:
            pass
        self.shutdown_request(request)


def start_state_server(
    host: str, port: int, state: ServingState, peer_urls: tuple[str, ...] = ()
) -> ThreadingHTTPServer | None:
    """Serve /state, /cluster and the page on host:port in a daemon thread; None (and a warning) if the
    port is taken."""
    try:
        server = _BoundedServer((host, port), _handler(state, Cluster(state, peer_urls)))
    except OSError as error:
        log.warning("state endpoint not started: cannot listen on %s:%d: %s", host, port, error)
        return None
    threading.Thread(target=server.serve_forever, name="state-server", daemon=True).start()
    return server
