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
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from flows.adapters.sources.stoppable import request_stop, stop_requested


def cluster_processes(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """How many processes the `bytewax.run` command line (or its environment) makes a cluster of."""
    addresses = env.get("BYTEWAX_ADDRESSES")
    for index, argument in enumerate(argv):
        if argument in ("-a", "--addresses") and index + 1 < len(argv):
            addresses = argv[index + 1]
        elif argument.startswith("--addresses="):
            addresses = argument.split("=", 1)[1]
    if addresses:
        return len([address for address in addresses.split(";") if address.strip()])
    hostfile = env.get("BYTEWAX_HOSTFILE_PATH")
    if hostfile and os.path.isfile(hostfile):
        with open(hostfile, encoding="utf-8") as hosts:
            return len([line for line in hosts if line.strip()])
    return 1


def _handle(signum: int, frame) -> None:
    if cluster_processes(sys.argv, os.environ) > 1:
        print(
            f"\n** {signal.Signals(signum).name}: one process of a cluster cannot drain alone; exiting now "
            "(the cluster resumes from its last snapshot)",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(0)
    if stop_requested():
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt
    request_stop()
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
