"""HTTP `GET /state`: the ModelToServeStats of the models this process serves, as JSON (as the original did).

Each process answers for its own shards; `python -m flows.query_state` asks several and merges. Runs in
a daemon thread next to the dataflow; it only reads the registry in `flows.serving_state`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flows.serving_state import SERVING_STATE, ServingState

log = logging.getLogger(__name__)


def state_document(state: ServingState) -> dict[str, Any]:
    return {
        "time": time.time_ns() // 1_000_000,
        "models": state.per_model(),
        "shards": state.models_by_shard(),
    }


def _handler(state: ServingState) -> type[BaseHTTPRequestHandler]:
    class StateHandler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") != "/state":
                self.send_error(404, "only GET /state is served here")
                return
            body = json.dumps(state_document(state)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return StateHandler


def start_state_server(
    host: str, port: int, state: ServingState = SERVING_STATE
) -> ThreadingHTTPServer | None:
    """Serve /state on host:port in a daemon thread; None (and a warning) if the port is taken."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(state))
    except OSError as error:
        log.warning("state endpoint not started: cannot listen on %s:%d: %s", host, port, error)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="state-server", daemon=True).start()
    return server
