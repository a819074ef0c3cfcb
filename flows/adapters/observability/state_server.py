"""HTTP `GET /state`: the ModelToServeStats of the models this process serves, as JSON (as the original did),
with their recent history; `GET /` a live page drawn from it; `GET /cluster` the same document merged over
the processes `SERVING_STATE_PEERS` names (this one's alone if none), which the page reads.

Each process answers for its own shards; `python -m flows.tools.query_state` asks several and merges, as
`/cluster` does. Runs in a daemon thread next to the dataflow; it only reads the flow's `ServingState`.

Whoever can reach the port can open connections, so the server bounds what they cost: at most
`MAX_CONNECTIONS` are served at once, a connection that sends nothing is dropped after `READ_TIMEOUT_S` and
one that has not sent its whole request after `REQUEST_DEADLINE_S`; when every slot is taken, the
connection that has been sending its request longest is dropped for the newcomer (so slow clients cannot
hold every slot), and when all have sent theirs, the newcomer gets a 503. Only `GET`/`HEAD /state` are
answered, with the page's three files and `/cluster` (404 for other paths, 405 for other methods), and only
for a `Host` that is `localhost`, an IP address, a peer's name or one of `SERVING_STATE_ALLOWED_HOSTS` (421
otherwise: a page that rebinds its own name to this address gets nothing). A client that hangs up is a
debug line. It listens on 127.0.0.1 unless SERVING_STATE_HOST says otherwise (the Kubernetes manifests set
0.0.0.0). The page shows names and reasons that whoever writes the models topic chose: it puts them in as
text only, and its Content-Security-Policy allows no script but its own file. `/cluster` asks only the
configured peers, each within `PEER_TIMEOUT_S` and `PEER_MAX_BYTES` and all within `CLUSTER_DEADLINE_S`
however they dribble, and checks each answer (`state_merge.read_document`): a peer that answers late or
wrongly is named with the reason, and the other processes are shown.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from pydantic import Field

from flows.adapters.observability.state_merge import PeerDocumentError, merge_documents, read_document
from flows.core.errors import ServingError
from flows.core.sections import Section, comma_separated
from flows.core.serving_state import ServingState

log = logging.getLogger(__name__)


class StateServerSettings(Section):
    """Where `GET /state` listens (`SERVING_STATE_*`)."""

    port: int = Field(
        8081,
        ge=0,
        le=65535,
        description=(
            "port of the HTTP `GET /state` endpoint (`0`: off); processes of one cluster on one host (`-a` "
            "addresses with one host) each add how many come before them there: 8081, 8082, ..."
        ),
    )
    host: str = Field(
        "127.0.0.1",
        description=(
            "address the `/state` endpoint listens on; `0.0.0.0` for every interface (the Kubernetes "
            "manifests set it)"
        ),
    )
    peers: str = Field(
        "",
        description=(
            "`/state` URLs of every process of the cluster, this one included "
            "(`http://pod-0:8081/state,...`): the live page at `/` merges them; unset: it shows this process "
            "alone"
        ),
    )

    allowed_hosts: str = Field(
        "",
        description=(
            "host names (no port) the endpoint answers to besides `localhost`, IP addresses and the peers' "
            "names, comma-separated (`state.example.com,...`): a request naming another `Host` gets a 421, "
            "so a web page cannot reach the endpoint by rebinding its own name to the address"
        ),
    )

    @property
    def peer_urls(self) -> tuple[str, ...]:
        return comma_separated(self.peers)

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        return comma_separated(self.allowed_hosts)


def state_document(state: ServingState) -> dict[str, Any]:
    return {
        "time": time.time_ns() // 1_000_000,
        "models": state.per_model(),
        "shards": state.models_by_shard(),
        "drift": state.drift_per_model(),
        "outliers": state.outliers_per_model(),
        "explanations": state.explanations_per_model(),
        "challengers": state.challengers(),
        "lag": state.lag_per_partition(),
        "history": state.history.document(),
    }


MAX_CONNECTIONS = 16
READ_TIMEOUT_S = 5.0
REQUEST_DEADLINE_S = 10.0
PATH = "/state"
CLUSTER_PATH = "/cluster"
PEER_TIMEOUT_S = 2.0
CLUSTER_DEADLINE_S = 3.0
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


class DeadlinePassed(ServingError, TimeoutError):
    """A request to a peer, or from a client, ran past its deadline."""


class DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline: each read waits at most `idle_s`, and none starts past the deadline.

    A socket timeout bounds one read only, so a peer that sends a byte now and then would hold a reader
    for ever; this bounds the whole exchange."""

    def __init__(self, sock: socket.socket, deadline: float, idle_s: float) -> None:
        super().__init__()
        self._sock, self._deadline, self._idle_s = sock, deadline, idle_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("deadline passed")
        self._sock.settimeout(min(self._idle_s, left))
        return self._sock.recv_into(buffer)


class _ReadsUntil:
    """A socket as `http.client.HTTPResponse` reads it, through a `DeadlineReader`."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(DeadlineReader(self._sock, self._deadline, PEER_TIMEOUT_S))


def get_before(url: str, deadline: float, max_bytes: int) -> bytes:
    """The body of `GET url` (http only: what `/state` serves), all of it received before `deadline`
    (`time.monotonic()`); PeerDocumentError for another status or a body over `max_bytes`, DeadlinePassed
    (a TimeoutError) for a peer too slow, whether it sends nothing or a byte now and then."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise PeerDocumentError("not an http:// URL")
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed("no time left to ask")
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=left) as sock:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        response = http.client.HTTPResponse(_ReadsUntil(sock, deadline), method="GET")  # type: ignore
        response.begin()
        if response.status != 200:
            raise PeerDocumentError(f"HTTP {response.status}")
        body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PeerDocumentError(f"answer over {max_bytes:,} bytes")
    return body


class Cluster:
    """The documents of the configured peers, merged for `/cluster`; without peers, this process alone.

    Each peer gets `PEER_TIMEOUT_S` and all of them `CLUSTER_DEADLINE_S`, whatever they send; a peer that
    answers late or answers something that is not a /state document is named with the reason, and the
    others are merged."""

    def __init__(self, state: ServingState, peer_urls: tuple[str, ...]) -> None:
        self.state = state
        self.peer_urls = peer_urls
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(len(peer_urls), 8)), thread_name_prefix="peers"
        )

    def document(self) -> dict[str, Any]:
        if not self.peer_urls:
            return {**state_document(self.state), "processes": [{"url": "this process"}]}
        deadline = time.monotonic() + CLUSTER_DEADLINE_S
        asked = [self._pool.submit(self._ask, url, deadline) for url in self.peer_urls]
        wait(asked, timeout=CLUSTER_DEADLINE_S)
        late = (None, f"no answer within {CLUSTER_DEADLINE_S:g} s")
        answers = [future.result() if future.done() else late for future in asked]
        documents = [document for document, _ in answers if document is not None]
        processes = [
            {"url": url, **({"error": error} if error else {})}
            for url, (_, error) in zip(self.peer_urls, answers)
        ]
        return {**merge_documents(documents), "processes": processes}

    def _ask(self, url: str, cluster_deadline: float) -> tuple[dict[str, Any] | None, str]:
        deadline = min(time.monotonic() + PEER_TIMEOUT_S, cluster_deadline)
        try:
            return read_document(get_before(url, deadline, PEER_MAX_BYTES)), ""
        except (OSError, ValueError, http.client.HTTPException) as error:
            return None, f"{type(error).__name__}: {str(error)[:200]}"


LOOPBACK_NAMES = ("localhost",)


def host_name(header: str) -> str:
    """The name a `Host` header gives, without its port: `[::1]:8081` -> `::1`, `a.b:80` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0]


def host_check(allowed: tuple[str, ...], peer_urls: tuple[str, ...]) -> Callable[[str | None], bool]:
    """Whether a request's `Host` header is one this endpoint answers to: `localhost`, an IP address (no
    page can rebind one: its origin would be that address), the peers' names and `allowed`. A request
    without one (HTTP/1.0) is answered: browsers always send it."""
    names = {*LOOPBACK_NAMES, *(name.lower() for name in allowed)}
    names.update(urllib.parse.urlsplit(url).hostname or "" for url in peer_urls)

    def answered(header: str | None) -> bool:
        if header is None:
            return True
        name = host_name(header)
        return name in names or _is_address(name)

    return answered


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _handler(state: ServingState, cluster: Cluster, host_allowed: Callable[[str | None], bool]) -> type:
    page = _page_files()
    documents = {PATH: lambda: state_document(state), CLUSTER_PATH: cluster.document}

    class StateHandler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT_S  # socket timeout: a client that sends nothing is dropped
        server: _BoundedServer

        def setup(self) -> None:
            """Read the request through a `DeadlineReader`: a client that dribbles it is cut off."""
            super().setup()
            self.rfile.close()
            deadline = time.monotonic() + REQUEST_DEADLINE_S
            self.rfile = io.BufferedReader(DeadlineReader(self.connection, deadline, READ_TIMEOUT_S))
            self.server.reading(self.connection)

        def parse_request(self) -> bool:
            # False (no answer) if the server dropped this connection to free its slot meanwhile.
            return super().parse_request() and self.server.request_read(self.connection)

        def finish(self) -> None:
            self.server.request_read(self.connection)
            super().finish()

        def log_message(self, *args: Any) -> None:
            pass

        def _served_path(self) -> str | None:
            if not host_allowed(self.headers.get("Host")):
                self.send_error(421, "this endpoint does not answer for that Host")
                return None
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
            self.connection.settimeout(READ_TIMEOUT_S)  # for all of the answer: sendall's timeout is total
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
    """A thread per connection, but at most `MAX_CONNECTIONS` at once. When all are taken, the connection
    that has been sending its request longest is dropped for the new one (a client that sends its request
    at once is never the oldest for long, a slowloris one is); when all have their request, the new one is
    turned away."""

    daemon_threads = True
    # Connections waiting to be accepted (and turned away, past the limit): socketserver's default of 5
    # made a burst's extra clients wait for TCP's SYN retries, seconds each.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._reading: dict[socket.socket, float] = {}  # connection: when it was accepted

    def reading(self, connection: socket.socket) -> None:
        with self._lock:
            self._reading[connection] = time.monotonic()

    def request_read(self, connection: socket.socket) -> bool:
        """`connection` has sent its request (or is done): True unless it was dropped for its slot."""
        with self._lock:
            return self._reading.pop(connection, None) is not None

    def process_request(self, request, client_address) -> None:
        if not (self._slots.acquire(blocking=False) or self._free_a_slot()):
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

    def _free_a_slot(self) -> bool:
        """Drop the connection that has been sending its request longest and take its slot."""
        with self._lock:
            if not self._reading:
                return False
            oldest = min(self._reading, key=self._reading.__getitem__)
            del self._reading[oldest]
        try:
            oldest.shutdown(socket.SHUT_RDWR)  # its thread's read returns at once, and it ends
        except OSError:
            pass
        return self._slots.acquire(timeout=READ_TIMEOUT_S)

    def _turn_away(self, request: socket.socket) -> None:
        try:
            request.setblocking(False)
            request.send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that hung up, or was too slow, is worth a line at debug level; anything else is a fault
        of this server, logged with its traceback (socketserver would print it to stderr)."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("state endpoint: %s gone before its answer was sent: %r", client_address[0], error)
        else:
            log.exception("state endpoint: answering %s failed", client_address[0])


def start_state_server(
    host: str,
    port: int,
    state: ServingState,
    peer_urls: tuple[str, ...] = (),
    allowed_hosts: tuple[str, ...] = (),
) -> ThreadingHTTPServer | None:
    """Serve /state, /cluster and the page on host:port in a daemon thread; None (and a warning) if the
    port is taken. `allowed_hosts`: the names, besides localhost, addresses and the peers', that requests
    may give as their `Host`."""
    handler = _handler(state, Cluster(state, peer_urls), host_check(allowed_hosts, peer_urls))
    try:
        server = _BoundedServer((host, port), handler)
    except OSError as error:
        log.warning("state endpoint not started: cannot listen on %s:%d: %s", host, port, error)
        return None
    threading.Thread(target=server.serve_forever, name="state-server", daemon=True).start()
    return server
