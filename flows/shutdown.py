"""Clean stop on Ctrl-C or SIGTERM.

Bytewax turns a signal into a runtime error with a traceback, mid-batch. Instead, the first SIGINT or
SIGTERM asks the flow's sources to end their input: the dataflow then drains what is in flight, the
sinks flush, and the process exits 0. A second signal aborts at once.
"""

from __future__ import annotations

import signal
import sys
import threading

_requested = threading.Event()


def requested() -> bool:
    """Whether a stop was asked for; sources end their input when it is."""
    return _requested.is_set()


def request() -> None:
    _requested.set()


def _handle(signum: int, frame) -> None:
    if _requested.is_set():
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt
    _requested.set()
    print(
        f"\n** {signal.Signals(signum).name}: stopping after the records in flight (again to abort)",
        file=sys.stderr,
        flush=True,
    )


def install() -> None:
    """Handle SIGINT and SIGTERM as above. Must run in the main thread (as module import does)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)
