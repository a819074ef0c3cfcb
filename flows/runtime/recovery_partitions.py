"""The recovery partitions of a store: where each lies, and whether the set is whole.

Bytewax creates a fixed set of partitions (`part-K.sqlite3`, each recording the size of its set) and resumes
only when a cluster finds every one of them exactly once across its processes' `-r` directories; otherwise
it panics in every worker after the flow has started (`NoPartitionsError`, `MissingPartitionsError`). The
main job checks the set before it starts (`flows.runtime.recovery_store.hold_for_flow`), and
`serving-recovery-store` before it moves anything.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from flows.core.errors import ServingError

PARTITION_FILE = re.compile(r"^part-(\d+)\.sqlite3(-wal|-shm|-journal)?$")


class RecoveryStoreError(ServingError):
    """The store is not what the command or the flow needs; the message says what and where."""


@dataclass(frozen=True)
class Partition:
    """One recovery partition: its index, the count of the set it was created in, where it lies, and the
    files that make it up (the database and its side files)."""

    index: int
    count: int
    directory: Path
    files: tuple[Path, ...]


def find_partitions(store: Path) -> list[Partition]:
    """Every recovery partition under `store` (in `process-*` directories or directly in it), by index. Side
    files lying apart from their database (an interrupted regroup) count with it, where it is."""
    files: dict[tuple[int, Path], list[Path]] = {}
    for path in sorted([*store.glob("part-*"), *store.glob("process-*/part-*")]):
        matched = PARTITION_FILE.match(path.name)
        if matched:
            files.setdefault((int(matched.group(1)), path.parent), []).append(path)
    homes: dict[int, list[Path]] = {}
    for index, directory in files:
        if (directory / f"part-{index}.sqlite3").exists():
            homes.setdefault(index, []).append(directory)
    for (index, directory), paths in list(files.items()):
        if directory not in homes.get(index, []):
            home = _home_of(index, directory, homes)
            files[(index, home)].extend(_movable_to(home, paths))
            del files[(index, directory)]
    return [
        Partition(index, _partition_count(directory / f"part-{index}.sqlite3"), directory, tuple(paths))
        for (index, directory), paths in sorted(files.items())
    ]


def _home_of(index: int, directory: Path, homes: dict[int, list[Path]]) -> Path:
    """The one directory holding the database of partition `index`, whose side files lie in `directory`."""
    if len(homes.get(index, [])) != 1:
        raise RecoveryStoreError(
            f"{directory}: side files of partition {index}, whose database is in "
            f"{len(homes.get(index, []))} directories, not one"
        )
    return homes[index][0]


def _movable_to(home: Path, paths: list[Path]) -> list[Path]:
    """`paths`, side files apart from their database in `home`, unless `home` has its own of the same kind:
    which of the two belongs to the database is for a person to say."""
    for path in paths:
        if (home / path.name).exists():
            raise RecoveryStoreError(
                f"{path} and {home / path.name}: two {path.name} files; move the one that does not belong "
                f"to {home / path.name.split('.sqlite3')[0]}.sqlite3 out of the store"
            )
    return paths


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
