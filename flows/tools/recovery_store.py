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

`regroup` checks everything before it moves anything: it refuses while a flow holds one of the directories
(the lock of `flows.runtime.recovery_store`, which the flow takes at start), and refuses a `process-*` that
is a symbolic link or not a directory and a partition file that is a link or not a regular file. A partition
whose side files lie in another directory than its database (an interrupted regroup) moves as one; run again,
an interrupted regroup finishes. `repair DIR` only puts such side files back next to their database (which
the flow asks for when it finds them apart), and with `--set-aside-foreign` renames a log SQLite would
ignore to `*.foreign`, keeping it for a person to look at.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bytewax.recovery import init_db_dir

from flows.runtime.recovery_partitions import Partition, check_complete, find_partitions
from flows.runtime.recovery_store import (
    FOREIGN_SUFFIX,
    LOCK_FILE,
    RecoveryStoreError,
    foreign_log_problem,
    lock_directory,
    store_directories,
)

PROCESS_DIRECTORY = "process-{index}"


def process_directory(store: Path, index: int) -> Path:
    return store / PROCESS_DIRECTORY.format(index=index)


def init(store: Path, partitions: int, processes: int, workers_per_process: int = 1) -> list[Path]:
    """Create `partitions` recovery partitions in `store`, spread over `processes` directories."""
    if processes < 1 or workers_per_process < 1:
        raise RecoveryStoreError("processes and workers per process must be at least 1")
    workers = processes * workers_per_process
    if partitions < workers:
        raise RecoveryStoreError(
            f"{partitions} recovery partitions for {workers} workers: a store needs at least as many "
            f"partitions as the most workers it will ever run (the count is fixed when it is created)"
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


def check_layout(store: Path) -> list[Path]:
    """The store's directories, if every `process-*` in it is a directory and every partition file a
    regular file: a link would have files moved out of the store, or a directory removed that is none."""
    if not store.is_dir():
        raise RecoveryStoreError(f"{store}: not a directory")
    for entry in sorted(store.glob("process-*")):
        if entry.is_symlink() or not entry.is_dir():
            raise RecoveryStoreError(f"{entry}: {_odd(entry)}, where a process directory belongs")
    directories = store_directories(store)
    for directory in directories:
        for path in sorted(directory.glob("part-*")):
            if path.is_symlink() or not path.is_file():
                raise RecoveryStoreError(f"{path}: {_odd(path)}, where a partition file belongs")
    return directories


def _odd(path: Path) -> str:
    return f"a symbolic link to {path.readlink()}" if path.is_symlink() else "not a regular file or directory"


@contextmanager
def held(directories: list[Path]) -> Iterator[ExitStack]:
    """Every directory's lock, taken without waiting, held until the block ends; more can be added."""
    with ExitStack() as locks:
        for directory in directories:
            locks.callback(lock_directory(directory).release)
        yield locks


def regroup(store: Path, processes: int, workers_per_process: int = 1) -> list[Path]:
    """Move the partitions of `store` into `processes` directories, round robin. Refused while a flow holds
    any of them; everything is checked before anything moves."""
    if processes < 1:
        raise RecoveryStoreError("processes must be at least 1")
    with held(check_layout(store)) as locks:
        partitions = find_partitions(store)
        count = check_complete(partitions, store)
        if count < processes * workers_per_process:
            raise RecoveryStoreError(
                f"{store} has {count} recovery partitions, fewer than {processes * workers_per_process} "
                f"workers; the count is fixed: run at most {count} workers on it, or start a new store"
            )
        directories = [process_directory(store, index) for index in range(processes)]
        for directory in directories:
            if not directory.exists():
                directory.mkdir()
                locks.callback(lock_directory(directory).release)
        for partition in partitions:
            _move(partition, directories[partition.index % processes])
        for extra in sorted(store.glob("process-*")):
            if extra not in directories and all(path.name == LOCK_FILE for path in extra.iterdir()):
                (extra / LOCK_FILE).unlink(missing_ok=True)
                extra.rmdir()
    return directories


def _move(partition: Partition, target: Path) -> None:
    for path in partition.files:
        if path.parent != target:
            path.rename(target / path.name)


def repair(store: Path, set_aside_foreign: bool = False) -> None:
    """Put side files back next to their database; with `set_aside_foreign`, rename each log SQLite would
    ignore (and its index) to `*.foreign`. Refused while a flow holds the store."""
    with held(check_layout(store)):
        for partition in find_partitions(store):
            _move(partition, partition.directory)
            if set_aside_foreign:
                _set_aside_if_foreign(partition.directory / f"part-{partition.index}.sqlite3")


def _set_aside_if_foreign(database: Path) -> None:
    wal = Path(f"{database}-wal")
    if wal.exists() and foreign_log_problem(database, wal):
        for side in (wal, Path(f"{database}-shm")):
            if side.exists():
                side.rename(f"{side}{FOREIGN_SUFFIX}")


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
    mend = commands.add_parser("repair", help="put side files back next to their database")
    mend.add_argument("store", type=Path)
    mend.add_argument(
        "--set-aside-foreign", action="store_true", help="rename logs SQLite would ignore to *.foreign"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            init(args.store, args.partitions, args.processes, args.workers_per_process)
        elif args.command == "regroup":
            regroup(args.store, args.processes, args.workers_per_process)
        elif args.command == "repair":
            repair(args.store, args.set_aside_foreign)
        print(describe(args.store))
    except RecoveryStoreError as error:
        print(f"serving-recovery-store {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
