"""Witnesses that a parser read no file and fetched no URL: a file that shows any read, and a loopback HTTP
server that counts what is asked of it. Both work across processes (the admission child included)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MARKER_TEXT = "SECRET-MARKER"
REMOTE_TEXT = b"REMOTE-MARKER"


def unread_marker(directory: Path) -> Path:
    """A secret file whose access time predates its modification time, so that under relatime (or
    strictatime) any read moves it: see `was_read`."""
    path = directory / "secret.txt"
    path.write_text(MARKER_TEXT)
    modified = path.stat().st_mtime_ns
    os.utime(path, ns=(modified - 3_600 * 10**9, modified))
    return path


def was_read(marker: Path) -> bool:
    """Whether `unread_marker`'s file has been read since it was made."""
    status = marker.stat()
    return status.st_atime_ns != status.st_mtime_ns - 3_600 * 10**9


class CountingServer(ThreadingHTTPServer):
    """Answers every GET (`REMOTE_TEXT` for a `.txt` path) and records its path in `requests`."""

    requests: list[str]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, CountingServer)
        self.server.requests.append(self.path)
        body = REMOTE_TEXT if self.path.endswith(".txt") else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet."""


@contextmanager
def counting_server() -> Iterator[CountingServer]:
    """A `CountingServer` on a free loopback port, for the block."""
    server = CountingServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
