"""Create, regroup and show a Bytewax recovery store laid out for rescaling: `serving-recovery-store`.

Bytewax keeps a flow's state and input offsets in a fixed set of recovery partitions (SQLite files
`part-K.sqlite3`), created once with their count. Each process of a cluster opens the partitions found in its
own `-r` directory, and the cluster resumes when every partition of the set is found exactly once across its
processes. The partition count never changes afterwards, so the store is sized for the largest cluster it
will ever run:

    partitions >= the most workers (processes x workers per process) you will ever run.

Each partition is written by one worker (its primary); with fewer partitions than workers the others route
their snapshots to those, which concentrates snapshot writes and leaves workers without a partition of
their own. `init` therefore asks for the partition count and refuses fewer than the workers it is told
about.

The layout is one directory: `DIR/process-I/` is process I's `-r` directory. Rescaling from N to M
processes is `regroup DIR --processes M` with the flow stopped: it moves whole partitions (with their SQLite
side files, which hold the last commits after a kill -9) round robin into `process-0 .. process-(M-1)`; the
partitions themselves never change, so the cluster resumes where it stopped. No two processes ever open one
file, which matters on a shared network volume (SQLite's write-ahead log needs one host per file).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from bytewax.recovery import init_db_dir

from flows.core.errors import ServingError

PROCESS_DIRECTORY = "process-{index}"
PARTITION_FILE = re.compile(r"^part-(\d+)\.sqlite3(-wal|-shm|-journal)?$")


class RecoveryStoreError(ServingError):
    """The store is not what the command needs; the message says what and where."""


@dataclass(frozen=True)
class Partition:
    """One recovery partition: its index, the count of the set it was created in, where it lies, and the
    files that make it up (the database and its side files)."""

    index: int
    count: int
    directory: Path
    files: tuple[Path, ...]


def process_directory(store: Path, index: int) -> Path:
    return store / PROCESS_DIRECTORY.format(index=index)


def init(store: Path, partitions: int, processes: int, workers_per_process: int = 1) -> list[Path]:
    """Create `partitions` recovery partitions in `store`, spread over `processes` directories."""
    if processes < 1 or workers_per_process < 1:
        raise RecoveryStoreError("processes and workers per process must be at least 1")
    workers = processes * workers_per_process
    if partitions < workers:
        raise RecoveryStoreError(
            f"{partitions} recovery partitions for {workers} workers: a store needs at least as many partitions "
            f"as the most workers it will ever run (the count is fixed when it is created)"
        )
    if store.exists() and find_partitions(store):
        raise RecoveryStoreError(f"{store} already holds recovery partitions; `regroup` it instead")
    scratch = store / ".init"
    scratch.mkdir(parents=True, exist_ok=False)
    init_db_dir(scratch, partitions)
    directories = [process_directory(store, index) for index in range(processes)]
    for directory in directories:
        directory.mkdir(exist_ok=True)
    for index in range(partitions):
        name = f"part-{index}.sqlite3"
        (scratch / name).rename(directories[index % processes] / name)
    scratch.rmdir()
    return directories


def find_partitions(store: Path) -> list[Partition]:
    """Every recovery partition under `store` (in `process-*` directories or directly in it), by index."""
    files: dict[tuple[int, Path], list[Path]] = {}
    for path in sorted([*store.glob("part-*"), *store.glob("process-*/part-*")]):
        matched = PARTITION_FILE.match(path.name)
        if matched:
            files.setdefault((int(matched.group(1)), path.parent), []).append(path)
    partitions = []
    for (index, directory), paths in sorted(files.items()):
        database = directory / f"part-{index}.sqlite3"
        if not database.exists():
            raise RecoveryStoreError(f"{directory}: side files of partition {index} without its database")
        partitions.append(Partition(index, _partition_count(database), directory, tuple(paths)))
    return partitions


def _partition_count(database: Path) -> int:
    """The size of the set the partition was created in, as Bytewax wrote it at creation. Read as immutable:
    an ordinary read of a write-ahead-log database leaves side files behind, which would then be parted
    from it."""
    connection = sqlite3.connect(f"file:{database}?immutable=1", uri=True)
    try:
        row = connection.execute("SELECT part_count FROM parts").fetchone()
    except sqlite3.DatabaseError as error:
        raise RecoveryStoreError(f"{database}: not a Bytewax recovery partition ({error})") from None
    finally:
        connection.close()
    if row is None:
        raise RecoveryStoreError(f"{database}: not a Bytewax recovery partition (no part_count)")
    return int(row[0])


def check_complete(partitions: list[Partition], where: Path) -> int:
    """The partition count of a complete set; an error naming what is missing, doubled or inconsistent."""
    if not partitions:
        raise RecoveryStoreError(
            f"{where}: no recovery partitions (create them with `serving-recovery-store init`)"
        )
    counts = {partition.count for partition in partitions}
    if len(counts) != 1:
        raise RecoveryStoreError(f"{where}: partitions from sets of different sizes {sorted(counts)}")
    [count] = counts
    indexes = [partition.index for partition in partitions]
    doubled = sorted({index for index in indexes if indexes.count(index) > 1})
    missing = sorted(set(range(count)) - set(indexes))
    if doubled or missing:
        raise RecoveryStoreError(f"{where}: partitions missing {missing}, found twice {doubled}, of {count}")
    return count


def regroup(store: Path, processes: int, workers_per_process: int = 1) -> list[Path]:
    """Move the partitions of `store` into `processes` directories, round robin; run with the flow stopped."""
    partitions = find_partitions(store)
    count = check_complete(partitions, store)
    if processes < 1:
        raise RecoveryStoreError("processes must be at least 1")
    if count < processes * workers_per_process:
        raise RecoveryStoreError(
            f"{store} has {count} recovery partitions, fewer than {processes * workers_per_process} workers; "
            f"the count is fixed: run at most {count} workers on it, or start a new store"
        )
    directories = [process_directory(store, index) for index in range(processes)]
    for directory in directories:
        directory.mkdir(exist_ok=True)
    for partition in partitions:
        target = directories[partition.index % processes]
        for path in partition.files:
            if path.parent != target:
                path.rename(target / path.name)
    for extra in sorted(store.glob("process-*")):
        if extra not in directories and not any(extra.iterdir()):
            extra.rmdir()
    return directories


def describe(store: Path) -> str:
    partitions = find_partitions(store)
    count = check_complete(partitions, store)
    by_directory: dict[Path, list[int]] = {}
    for partition in partitions:
        by_directory.setdefault(partition.directory, []).append(partition.index)
    lines = [f"{store}: {count} recovery partitions (up to {count} workers)"]
    lines.extend(
        f"  {directory.relative_to(store) if directory != store else '.'}: partitions {indexes}"
        for directory, indexes in sorted(by_directory.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="serving-recovery-store", description=__doc__.split("\n")[0].rstrip(".")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("init", help="create a store (sized for the most workers you will run)")
    create.add_argument("store", type=Path)
    create.add_argument("--partitions", type=int, required=True, help="at least the most workers ever run")
    move = commands.add_parser("regroup", help="spread the partitions over a new number of processes")
    move.add_argument("store", type=Path)
    for command in (create, move):
        command.add_argument("--processes", type=int, required=True)
        command.add_argument("--workers-per-process", type=int, default=1)
    show = commands.add_parser("show", help="which process directory holds which partition")
    show.add_argument("store", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            init(args.store, args.partitions, args.processes, args.workers_per_process)
        elif args.command == "regroup":
            regroup(args.store, args.processes, args.workers_per_process)
        print(describe(args.store))
    except RecoveryStoreError as error:
        print(f"serving-recovery-store {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
