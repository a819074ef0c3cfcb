"""This process's place in a Bytewax cluster, read as `bytewax.run` reads it: `-i/--process-id` and
`-a/--addresses` on the command line, else `BYTEWAX_PROCESS_ID`, `BYTEWAX_ADDRESSES`, a StatefulSet pod's
name (`BYTEWAX_POD_NAME`, `BYTEWAX_STATEFULSET_NAME`) and `BYTEWAX_HOSTFILE_PATH`.

The state server needs it: processes of one cluster started on one host (`-a "127.0.0.1:2101;127.0.0.1:2102"`)
would all bind `SERVING_STATE_PORT`, and every one but the first would run without `/state`. Each takes the
port plus how many processes before it share its host; processes on hosts of their own (a StatefulSet's pods)
keep the port as set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


def _option(argv: Sequence[str], short: str, long: str) -> str | None:
    for index, argument in enumerate(argv):
        if argument in (short, long) and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith(f"{long}="):
            return argument.split("=", 1)[1]
    return None


def cluster_addresses(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The cluster's `host:port` addresses, in process order (empty: a single process)."""
    addresses = _option(argv, "-a", "--addresses") or env.get("BYTEWAX_ADDRESSES")
    if addresses:
        return [address.strip() for address in addresses.split(";") if address.strip()]
    hostfile = env.get("BYTEWAX_HOSTFILE_PATH")
    if hostfile and os.path.isfile(hostfile):
        with open(hostfile, encoding="utf-8") as hosts:
            return [line.strip() for line in hosts if line.strip()]
    return []


def cluster_processes(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """How many processes the cluster has (1: this one alone)."""
    return max(1, len(cluster_addresses(argv, env)))


def process_index(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """This process's index in the cluster (0 for a single process)."""
    given = _option(argv, "-i", "--process-id") or env.get("BYTEWAX_PROCESS_ID")
    if given is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        given = env["BYTEWAX_POD_NAME"].removeprefix(env["BYTEWAX_STATEFULSET_NAME"] + "-")
    try:
        return int(given) if given is not None else 0
    except ValueError:
        return 0  # Bytewax itself refuses it, with its own message


def processes_before_on_this_host(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """How many processes before this one the cluster's addresses place on this process's host."""
    addresses = cluster_addresses(argv, env)
    index = process_index(argv, env)
    if index >= len(addresses):
        return 0
    host = _host(addresses[index])
    return sum(1 for address in addresses[:index] if _host(address) == host)


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")
