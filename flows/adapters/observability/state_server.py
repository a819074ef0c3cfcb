"""HTTP `GET /state`: the ModelToServeStats of the models this process serves, as JSON (as the original did).

Each process answers for its own shards; `python -m flows.tools.query_state` asks several and merges. Runs in
a daemon thread next to the dataflow; it only reads the flow's `ServingState`.

Whoever can reach the port can open connections, so the server bounds what they cost: at most
`MAX_CONNECTIONS` are served at once (more are closed at once, with a 503 if they can take it), a
connection that sends nothing is dropped after `READ_TIMEOUT_S`, and only `GET`/`HEAD /state` are
answered (404 for other paths, 405 for other methods). It listens on 127.0.0.1 unless SERVING_STATE_HOST
says otherwise (the Kubernetes manifests set 0.0.0.0).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import Field

from flows.core.sections import Section
from flows.core.serving_state import ServingState

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


def state_document(state: ServingState) -> dict[str, Any]:
    return {
        "time": time.time_ns() // 1_000_000,
        "models": state.per_model(),
        "shards": state.models_by_shard(),
        "drift": state.drift_per_model(),
        "challengers": state.challengers(),
        "lag": state.lag_per_partition(),
    }


MAX_CONNECTIONS = 16
READ_TIMEOUT_S = 5.0
PATH = "/state"


def _handler(state: ServingState) -> type[BaseHTTPRequestHandler]:
    class StateHandler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S  # socket timeout: a client that sends nothing is dropped

        def log_message(self, *args: Any) -> None:
            pass

        def _on_state_path(self) -> bool:
            if self.path.split("?")[0].rstrip("/") == PATH:
                return True
            self.send_error(404, "only GET /state is served here")
            return False

        def _answer(self, with_body: bool) -> None:
            if not self._on_state_path():
                return
            body = json.dumps(state_document(state)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _not_allowed(self) -> None:
            if self._on_state_path():
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


def start_state_server(host: str, port: int, state: ServingState) -> ThreadingHTTPServer | None:
    """Serve /state on host:port in a daemon thread; None (and a warning) if the port is taken."""
    try:
        server = _BoundedServer((host, port), _handler(state))
    except OSError as error:
        log.warning("state endpoint not started: cannot listen on %s:%d: %s", host, port, error)
        return None
    threading.Thread(target=server.serve_forever, name="state-server", daemon=True).start()
    return server
