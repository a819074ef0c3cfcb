"""Clean stop on Ctrl-C or SIGTERM.

Bytewax turns a signal into a runtime error with a traceback, mid-batch. Instead, for a single process,
the first SIGINT or SIGTERM asks the flow's sources to end their input: the dataflow then drains what is
in flight, the sinks flush, and the process exits 0. A second signal aborts at once.

One process of a cluster (`-a` with several addresses: a pod of the StatefulSet) cannot drain alone: its
peers keep their inputs open, the epoch never closes, and the process would hang until its peers die.
So there the first signal ends the process at once, as a rolling update or an eviction expects. Nothing
is lost: when it comes back the cluster resumes from its last snapshot (its peers, seeing it gone, exit too
and are restarted); what the replay answers again is repeated with at-least-once delivery, and dropped by
the exactly-once sink.

The drain is bounded (`SERVING_DRAIN_TIMEOUT`): a model call that does not return (a model that takes
minutes per batch, a server that holds the connection) would otherwise keep the process alive after the
signal, as it did for 20 s and more. Past the bound the process ends at once, saying so, with a non-zero
status; recovery treats that like a kill -9 and loses nothing.

A Python signal handler runs only when the main thread executes Python code, and Bytewax runs a worker on
the main thread: a worker stuck in a model's C++ code would not see the signal until the call returned. So
the handlers installed here do nothing themselves; the interpreter's C-level handler, which runs on whichever
thread the kernel picks, also writes the signal's number to a wakeup socket (`signal.set_wakeup_fd`), and a
thread of its own reads it and acts, whatever the workers are doing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from flows.adapters.sources.stoppable import request_stop, stop_requested
from flows.runtime.cluster import cluster_processes

SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
DRAIN_OVERDUE_STATUS = 5  # (3 and 4: the exactly-once sink's fenced and failed producers)
ABORTED_STATUS = 130
_drain_timeout_s = 30.0


def set_drain_timeout(seconds: float) -> None:
    """The drain bound (SERVING_DRAIN_TIMEOUT), once the settings are read."""
    global _drain_timeout_s
    _drain_timeout_s = seconds


def _handle(signum: int, frame: object = None) -> None:
    name = signal.Signals(signum).name
    if cluster_processes(sys.argv, os.environ) > 1:
        _end(
            f"{name}: one process of a cluster cannot drain alone; exiting now (the cluster resumes from its "
            "last snapshot)",
            0,
        )
    if stop_requested():
        _end(f"{name} again: aborting without draining", ABORTED_STATUS)
    # Said before the stop is asked: a short drain can end the process (and this daemon thread) before
    # a line written after it, as it did once on a loaded machine.
    _say(f"{name}: stopping after the records in flight, within {_drain_timeout_s:g} s (again to abort)")
    timer = threading.Timer(_drain_timeout_s, _drain_overdue, args=(name,))
    timer.daemon = True
    timer.start()
    request_stop()


def _drain_overdue(name: str) -> None:
    _end(
        f"the flow did not drain within {_drain_timeout_s:g} s of {name} (SERVING_DRAIN_TIMEOUT): a model "
        "call or a sink did not return; exiting now (a restart resumes from the last snapshot)",
        DRAIN_OVERDUE_STATUS,
    )


def _say(text: str) -> None:
    print(f"\n** {text}", file=sys.stderr, flush=True)


def _end(text: str, status: int) -> None:
    _say(text)
    sys.stdout.flush()
    os._exit(status)


def _noted(signum: int, frame: object) -> None:
    """The main thread's handler: nothing to do, the signal thread has it (see the module docstring)."""


def _take_signals(wakeup: socket.socket) -> None:
    while True:
        for signum in wakeup.recv(64):
            if signum in SIGNALS:
                _handle(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM as above. Must run in the main thread (as module import does)."""
    if threading.current_thread() is not threading.main_thread():
        return
    wakeup, writer = socket.socketpair()
    writer.setblocking(False)
    for signum in SIGNALS:
        signal.signal(signum, _noted)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_take_signals, args=(wakeup,), name="signals", daemon=True).start()
    _keep.append((wakeup, writer))


_keep: list[tuple[socket.socket, socket.socket]] = []  # the wakeup socket lives as long as the process
