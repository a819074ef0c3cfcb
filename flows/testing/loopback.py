"""Starting local servers (a broker, model servers) for tests and benchmarks: free ports, readiness."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def consecutive_free_ports(count: int, tries: int = 50) -> list[int]:
    """`count` free ports in a row on 127.0.0.1: those the processes of a cluster on one host take for their
    state servers (`flows.runtime.cluster`)."""
    for _ in range(tries):
        [first] = free_ports(1)
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return list(range(first, first + count))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} free ports in a row on 127.0.0.1 in {tries} tries")


def wait_until_ready(
    what: str, ready: Callable[[], bool], process: subprocess.Popen | None, timeout: float
) -> None:
    """Poll `ready` until it returns True; RuntimeError if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout} s")
        time.sleep(0.1)
