"""The flow's side of its recovery store: hold the `-r` directory, refuse logs SQLite would open wrongly and
a partition set the cluster could not resume from.

Bytewax keeps each recovery partition in a SQLite file `part-K.sqlite3` in write-ahead-log mode: the last
commits before a kill -9 live in `part-K.sqlite3-wal` (indexed by `-shm`) until SQLite copies them into the
database. SQLite opens a database whose log is missing, or whose log it does not recognise, without a word and
without those commits: the flow then resumes from older snapshots (a model accepted anew, records answered
again). So before Bytewax opens the store, the main job (`flows.serving`) checks its `-r` directory:

- a side file of one of its partitions lying in another directory of the store (an interrupted regroup, a
  copy of the database alone) is refused; `serving-recovery-store repair STORE` puts it back;
- a log SQLite would ignore (not a log, another format or page size, a broken header checksum, frames salted
  for another header) is refused; `repair STORE --set-aside-foreign` renames it out of the way.

It also takes an exclusive `flock` on a lock file in that directory for the rest of its life, which
`serving-recovery-store regroup` and a second flow on the same directory try without waiting: they refuse
while a flow runs. The kernel drops the lock when the process ends, however it ends (kill -9 included), so
a dead flow never leaves the store locked. (On a network volume the lock is the file system's: NFS v4 and
CephFS pass `flock` on to the server; a node that dies holds it until its lease runs out.)
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from flows.runtime.recovery_partitions import (
    PARTITION_FILE,
    RecoveryStoreError,
    check_complete,
    find_partitions,
)

SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
PROCESS_DIRECTORY = re.compile(r"^process-\d+$")
LOCK_FILE = ".serving-recovery-store.lock"
CREATE_STORE = (
    "Create the store with the flow stopped: `serving-recovery-store init {store} --partitions N` (N at "
    "least the most workers you will run; process I then takes `-r {store}/process-I`)"
)
FOREIGN_SUFFIX = ".foreign"

# SQLite's write-ahead log (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, format, page
# size, checkpoint sequence, salt-1, salt-2, checksum-1, checksum-2), then frames of a 24-byte header (page
# number, size after a commit, salt-1, salt-2, checksum-1, checksum-2) and a page. The magic's low bit says
# in which byte order the checksums read the data.
WAL_BYTE_ORDER = {0x377F0682: "<", 0x377F0683: ">"}
WAL_FORMAT = 3007000
WAL_HEADER = struct.Struct(">8I")
WAL_FRAME_HEADER = struct.Struct(">6I")


@dataclass
class DirectoryLock:
    """An exclusive `flock` held on a directory's lock file, until `release` or the end of the process."""

    directory: Path
    descriptor: int

    def release(self) -> None:
        os.close(self.descriptor)


def lock_directory(directory: Path) -> DirectoryLock:
    """Take the directory's lock without waiting: a flow or a regroup that holds it is running now."""
    path = directory / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RecoveryStoreError(f"{directory}: cannot open its lock file ({error.strerror})") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RecoveryStoreError(
            f"{directory} is in use by a running flow or regroup: stop it first"
        ) from None
    if not _still_there(path, descriptor):  # a regroup removed the directory's lock file as we took it
        os.close(descriptor)
        raise RecoveryStoreError(f"{directory} was regrouped while this process took it: start again")
    return DirectoryLock(directory, descriptor)


def _still_there(path: Path, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def store_of(directory: Path) -> Path:
    """The store a `-r` directory belongs to: its parent for a `process-N` directory, else itself."""
    return directory.parent if PROCESS_DIRECTORY.match(directory.name) else directory


def store_directories(store: Path) -> list[Path]:
    """The store itself and its `process-*` directories, the places a partition file may lie."""
    return [store, *sorted(path for path in store.glob("process-*") if path.is_dir())]


def hold_for_flow(directory: Path, processes: int = 1) -> DirectoryLock:
    """Lock the flow's `-r` directory, then check its partitions' logs and that the cluster of `processes`
    will find the whole set; the lock is held until released or the process ends."""
    if not directory.is_dir():
        raise RecoveryStoreError(f"{directory}: no such directory. {CREATE_STORE.format(store=directory)}")
    lock = lock_directory(directory)
    try:
        check_logs(directory)
        check_partition_set(directory, processes)
    except RecoveryStoreError:
        lock.release()
        raise
    return lock


def check_partition_set(directory: Path, processes: int) -> None:
    """Refuse a `-r` directory from which the cluster could not resume: one holding no partition, or, where
    the whole set is in view (a process directory of a store, or the one directory of a one-process flow),
    a set with partitions missing, doubled or of different sizes. Bytewax would find out only once its
    workers run, and panic in each of them."""
    store = store_of(directory)
    if not any(PARTITION_FILE.match(path.name) for path in directory.glob("part-*.sqlite3")):
        fix = (
            f"With the flow stopped, run `serving-recovery-store regroup {store} --processes N` to spread "
            f"the store's partitions over N processes"
            if store != directory and find_partitions(store)
            else CREATE_STORE.format(store=store)
        )
        raise RecoveryStoreError(f"{directory}: no recovery partition, so the flow cannot resume. {fix}")
    if store == directory and processes > 1:
        return  # the other processes hold the rest, each in a directory of its own
    try:
        check_complete(find_partitions(store), store)
    except RecoveryStoreError as incomplete:
        raise RecoveryStoreError(
            f"{incomplete}: the cluster cannot resume without every partition exactly once. Put back the "
            f"partitions that are missing (from a copy of the store), or start on a new store"
        ) from None


def check_logs(directory: Path) -> None:
    """Refuse a partition of `directory` whose side files lie elsewhere in the store, or whose log SQLite
    would ignore. Reads only names in other directories: their processes may be writing their files."""
    store = store_of(directory)
    for database in sorted(directory.glob("part-*.sqlite3")):
        for elsewhere in _side_files_elsewhere(database, store):
            raise RecoveryStoreError(
                f"{database}: its side file {elsewhere} lies in another directory; opened without it, SQLite "
                f"would lose the commits it holds. With every process stopped, run "
                f"`serving-recovery-store repair {store}`"
            )
        wal = Path(f"{database}-wal")
        problem = foreign_log_problem(database, wal) if wal.exists() else None
        if problem:
            raise RecoveryStoreError(
                f"{wal}: {problem}, so SQLite would ignore it and drop the commits it holds. If the "
                f"partition's own log is elsewhere, put it back; else, with every process stopped, run "
                f"`serving-recovery-store repair {store} --set-aside-foreign`"
            )


def _side_files_elsewhere(database: Path, store: Path) -> list[Path]:
    """Side files of `database`'s partition in other directories that lack the database itself."""
    return [
        directory / f"{database.name}{suffix}"
        for directory in store_directories(store)
        if directory != database.parent and not (directory / database.name).exists()
        for suffix in SIDE_SUFFIXES
        if (directory / f"{database.name}{suffix}").exists()
    ]


def foreign_log_problem(database: Path, wal: Path) -> str | None:
    """Why SQLite would not read `wal` as the log of `database`, or None. An empty log, or one whose first
    frame is not complete, holds no commit to lose."""
    with wal.open("rb") as log:
        header = log.read(WAL_HEADER.size)
        if not header:
            return None
        if len(header) < WAL_HEADER.size:
            return "it is shorter than a log header"
        magic, version, page_size, _, salt_1, salt_2, *checksum = WAL_HEADER.unpack(header)
        order = WAL_BYTE_ORDER.get(magic)
        if order is None:
            return "it is not a SQLite write-ahead log"
        if version != WAL_FORMAT:
            return f"its format is {version}, not {WAL_FORMAT}"
        if page_size != database_page_size(database):
            return f"its page size is {page_size}, the database's {database_page_size(database)}"
        if wal_checksum(order, header[:24], (0, 0)) != tuple(checksum):
            return "its header checksum is wrong"
        frame_header, page = log.read(WAL_FRAME_HEADER.size), log.read(page_size)
    if len(frame_header) < WAL_FRAME_HEADER.size or len(page) < page_size:
        return None
    _, _, frame_salt_1, frame_salt_2, *frame_checksum = WAL_FRAME_HEADER.unpack(frame_header)
    if (frame_salt_1, frame_salt_2) != (salt_1, salt_2):
        return "its frames are salted for another header"
    if wal_checksum(order, frame_header[:8] + page, tuple(checksum)) != tuple(frame_checksum):
        return "its first frame's checksum is wrong"
    return None


def database_page_size(database: Path) -> int:
    """The page size in the database header (two bytes at offset 16; 1 stands for 65536)."""
    with database.open("rb") as file:
        file.seek(16)
        size = int.from_bytes(file.read(2), "big")
    return 65536 if size == 1 else size


def wal_checksum(order: str, data: bytes, start: tuple[int, ...]) -> tuple[int, int]:
    """SQLite's running log checksum over `data` (32-bit words, two at a time), continued from `start`."""
    first, second = start
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for index in range(0, len(words), 2):
        first = (first + words[index] + second) & 0xFFFFFFFF
        second = (second + words[index + 1] + first) & 0xFFFFFFFF
    return first, second


def hold_recovery_store() -> DirectoryLock | None:
    """Hold the `-r` directory of the `python -m bytewax.run` that imports the flow, checked; None without
    one. Runs while Bytewax imports the flow, before it opens the store."""
    arguments = bytewax_run_arguments()
    if arguments is None or arguments.recovery_directory is None:
        return None
    processes = len(arguments.addresses.split(";")) if arguments.addresses else 1
    return hold_for_flow(arguments.recovery_directory, processes)


def bytewax_run_arguments() -> argparse.Namespace | None:
    """The arguments of `python -m bytewax.run` (its `-r` directory, also read from
    `BYTEWAX_RECOVERY_DIRECTORY`, and its `-a` addresses), parsed again by its own parser as it has just
    parsed them; None when the flow was not started that way."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is None or spec is None or spec.name != "bytewax.run":
        return None
    return main._parse_args()
