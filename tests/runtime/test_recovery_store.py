"""`serving-recovery-store`: a recovery store sized for the most workers, regrouped between process counts."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir
from support.jobs import REPO, start_job, wait_for

from flows.runtime.recovery_store import hold_for_flow
from flows.tools.recovery_store import RecoveryStoreError, find_partitions, init, regroup, repair


def contents(store) -> dict[str, str]:
    """Each partition file's digest by name, wherever it lies in the store."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in store.rglob("part-*")}


def layout(store) -> dict[str, list[int]]:
    placed: dict[str, list[int]] = {}
    for partition in find_partitions(store):
        placed.setdefault(partition.directory.name, []).append(partition.index)
    return placed


def test_init_spreads_the_partitions_and_refuses_fewer_than_the_workers(tmp_path):
    with pytest.raises(RecoveryStoreError, match="at least as many partitions as the most workers"):
        init(tmp_path / "small", partitions=3, processes=2, workers_per_process=2)
    init(tmp_path / "store", partitions=6, processes=2, workers_per_process=2)
    assert layout(tmp_path / "store") == {"process-0": [0, 2, 4], "process-1": [1, 3, 5]}
    with pytest.raises(RecoveryStoreError, match="already holds recovery partitions"):
        init(tmp_path / "store", partitions=6, processes=2)


def test_regroup_moves_whole_partitions_with_their_side_files_and_changes_none(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=4, processes=1)
    (store / "process-0" / "part-3.sqlite3-wal").write_bytes(b"the last commits after a kill -9")
    before = contents(store)
    regroup(store, processes=3)
    assert layout(store) == {"process-0": [0, 3], "process-1": [1], "process-2": [2]}
    assert (store / "process-0" / "part-3.sqlite3-wal").exists()
    regroup(store, processes=2)
    assert layout(store) == {"process-0": [0, 2], "process-1": [1, 3]}
    assert not (store / "process-2").exists()  # emptied by the scale-in
    assert (store / "process-1" / "part-3.sqlite3-wal").exists()
    assert contents(store) == before


def test_regroup_refuses_an_incomplete_store_or_more_workers_than_partitions(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=3, processes=3)
    with pytest.raises(RecoveryStoreError, match="fewer than 4 workers"):
        regroup(store, processes=2, workers_per_process=2)
    (store / "process-2" / "part-2.sqlite3").rename(tmp_path / "elsewhere.sqlite3")
    with pytest.raises(RecoveryStoreError, match=r"missing \[2\]"):
        regroup(store, processes=1)
    assert layout(store) == {"process-0": [0], "process-1": [1]}  # nothing moved


def test_the_command_line_shows_where_each_partition_is(tmp_path):
    store = tmp_path / "store"
    run = [sys.executable, "-m", "flows.tools.recovery_store"]
    created = subprocess.run(
        [*run, "init", str(store), "--partitions", "4", "--processes", "2"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "4 recovery partitions (up to 4 workers)" in created.stdout
    assert "process-1: partitions [1, 3]" in created.stdout
    refused = subprocess.run(
        [*run, "regroup", str(store), "--processes", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "fewer than 5 workers" in refused.stderr


# What a flow killed with SIGKILL leaves: commits in the write-ahead log (`-wal`, with its index `-shm`) that
# SQLite has not yet copied into the database file.
KILLED_WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_autocheckpoint=0")
for epoch in range(int(sys.argv[2])):
    db.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (?, ?)", (epoch, epoch))
    db.commit()
os.kill(os.getpid(), 9)
"""


def killed_while_writing(database: Path, commits: int = 3) -> None:
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(database), str(commits)], check=False)
    assert Path(f"{database}-wal").stat().st_size > 0


def commits_read(database: Path) -> int:
    """What SQLite reads of the commits, with whatever log lies next to the database."""
    db = sqlite3.connect(database)
    try:
        return db.execute("SELECT count(*) FROM commits").fetchone()[0]
    finally:
        db.close()


def files_in(store: Path) -> list[str]:
    """Where each partition file lies (a lock file appears where a flow or a regroup took a directory)."""
    return sorted(str(path.relative_to(store)) for path in store.rglob("part-*"))


def test_the_flow_refuses_a_partition_whose_log_lies_in_another_directory_and_repair_rejoins_them(tmp_path):
    """An interrupted regroup (the database moved, its log not yet): opened alone, it loses its last
    commits."""
    store = tmp_path / "store"
    init(store, partitions=2, processes=2)
    database = store / "process-0" / "part-0.sqlite3"
    killed_while_writing(database)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").rename(store / "process-1" / f"part-0.sqlite3{suffix}")
    fix = r"part-0\.sqlite3.*serving-recovery-store repair"
    with pytest.raises(RecoveryStoreError, match=fix) as refused:
        hold_for_flow(store / "process-0")
    assert str(store / "process-1" / "part-0.sqlite3-wal") in str(refused.value)
    repair(store)
    assert sorted(path.name for path in (store / "process-0").glob("part-*")) == [
        "part-0.sqlite3", "part-0.sqlite3-shm", "part-0.sqlite3-wal",
    ]  # fmt: skip
    hold_for_flow(store / "process-0").release()
    assert commits_read(database) == 3


def test_regroup_finishes_an_interrupted_regroup(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=2, processes=1)
    database = store / "process-0" / "part-1.sqlite3"
    killed_while_writing(database)
    (store / "process-1").mkdir()
    database.rename(store / "process-1" / "part-1.sqlite3")  # moved, its log not yet
    regroup(store, processes=2)
    assert layout(store) == {"process-0": [0], "process-1": [1]}
    assert commits_read(store / "process-1" / "part-1.sqlite3") == 3


def _wal_header_checksum_broken(wal: Path) -> None:
    data = bytearray(wal.read_bytes())
    data[24:28] = bytes(4)
    wal.write_bytes(bytes(data))


def _wal_headed_by_another_log(wal: Path) -> None:
    """A well-formed header, from another partition's log: its salts are not those of these frames."""
    other = wal.parent / "part-1.sqlite3"
    killed_while_writing(other)
    wal.write_bytes(Path(f"{other}-wal").read_bytes()[:32] + wal.read_bytes()[32:])


def _wal_of_another_page_size(wal: Path) -> None:
    data = bytearray(wal.read_bytes())
    data[8:12] = (8192).to_bytes(4, "big")
    wal.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (_wal_header_checksum_broken, "its header checksum is wrong"),
        (_wal_headed_by_another_log, "its frames are salted for another header"),
        (_wal_of_another_page_size, "its page size is 8192, the database's 4096"),
    ],
)
def test_the_flow_refuses_a_log_that_sqlite_would_ignore_and_repair_sets_it_aside(tmp_path, spoil, problem):
    store = tmp_path / "store"
    init(store, partitions=2, processes=1)
    database = store / "process-0" / "part-0.sqlite3"
    killed_while_writing(database)
    wal = Path(f"{database}-wal")
    spoil(wal)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for path in (database, wal):
        shutil.copy(path, scratch)
    assert commits_read(scratch / database.name) == 0  # what SQLite makes of it: the commits are gone
    with pytest.raises(RecoveryStoreError, match=rf"part-0\.sqlite3-wal: {problem}.*repair .*--set-aside"):
        hold_for_flow(store / "process-0")
    repair(store, set_aside_foreign=True)
    assert not wal.exists() and Path(f"{wal}.foreign").exists()  # kept for a person to look at
    hold_for_flow(store / "process-0").release()


def test_the_flow_takes_an_intact_log_and_its_commits(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=1, processes=1)
    database = store / "process-0" / "part-0.sqlite3"
    killed_while_writing(database)
    hold_for_flow(store / "process-0").release()
    assert commits_read(database) == 3


HOLDER = """
import sys
from pathlib import Path
from flows.runtime.recovery_store import hold_for_flow
hold = hold_for_flow(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_regroup_refuses_while_a_flow_holds_the_store_and_not_after_it_is_killed(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=2, processes=2)
    before = files_in(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store / "process-1")],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RecoveryStoreError, match=f"{store / 'process-1'}.*in use"):
            regroup(store, processes=1)
        assert files_in(store) == before
        with pytest.raises(RecoveryStoreError, match="in use"):
            hold_for_flow(store / "process-1")  # nor can a second flow open it
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait(timeout=60)
    regroup(store, processes=1)
    assert layout(store) == {"process-0": [0, 1]}


def _held_by_another_process(directory: Path) -> bool:
    try:
        hold_for_flow(directory).release()
    except RecoveryStoreError:
        return True
    return False


def test_the_main_job_holds_its_recovery_directory_until_it_is_killed(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=1, processes=1)
    env = {**os.environ, "SERVING_CONSOLE_EVERY": "0", "SERVING_RECORD_RATE": "200"}
    job = start_job(env, "-r", str(store / "process-0"), "-s", "5", "-b", "30", output=tmp_path / "job.log")
    try:
        wait_for(lambda: _held_by_another_process(store / "process-0"), "the job to hold its store", 120)
        refused = subprocess.run(
            [sys.executable, "-m", "flows.tools.recovery_store", "regroup", str(store), "--processes", "1"],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert refused.returncode == 2 and str(store / "process-0") in refused.stderr
        assert job.poll() is None, (tmp_path / "job.log").read_text()
    finally:
        job.kill()
        job.wait(timeout=60)
    assert not _held_by_another_process(store / "process-0")


def test_the_main_job_refuses_a_partition_whose_log_lies_elsewhere(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=2, processes=1)
    database = store / "process-0" / "part-0.sqlite3"
    killed_while_writing(database)
    (store / "process-1").mkdir()  # a regroup to two processes, interrupted after moving the log
    Path(f"{database}-wal").rename(store / "process-1" / "part-0.sqlite3-wal")
    bounded = {**os.environ, "SERVING_RECORDS": "100", "SERVING_RECORD_RATE": "0"}
    job = start_job(bounded, "-r", str(store / "process-0"), "-s", "5", "-b", "30")  # would end by itself
    try:
        output, _ = job.communicate(timeout=180)
    finally:
        job.kill()
    assert job.returncode != 0 and f"{store / 'process-1' / 'part-0.sqlite3-wal'}" in output
    assert "serving-recovery-store repair" in output


def _process_1_a_symlink(store: Path, outside: Path) -> None:
    (store / "process-1").rename(outside)
    (store / "process-1").symlink_to(outside, target_is_directory=True)


def _process_1_a_file(store: Path, outside: Path) -> None:
    (store / "process-1" / "part-1.sqlite3").rename(store / "part-1.sqlite3")
    (store / "process-1").rmdir()
    (store / "process-1").write_text("not a directory")


def _partition_a_symlink_outside(store: Path, outside: Path) -> None:
    outside.mkdir()
    (store / "process-1" / "part-1.sqlite3").rename(outside / "part-1.sqlite3")
    (store / "process-1" / "part-1.sqlite3").symlink_to(outside / "part-1.sqlite3")


@pytest.mark.parametrize("spoil", [_process_1_a_symlink, _process_1_a_file, _partition_a_symlink_outside])
def test_regroup_refuses_an_odd_layout_before_moving_anything(tmp_path, spoil):
    store = tmp_path / "store"
    init(store, partitions=3, processes=3)
    spoil(store, tmp_path / "outside")
    before = files_in(store)
    with pytest.raises(RecoveryStoreError, match=f"{store / 'process-1'}"):
        regroup(store, processes=1)
    assert files_in(store) == before


# --- the partition set, checked before the flow starts ----------------------------------------------------


def test_a_directory_that_is_not_there_is_refused_with_the_command_that_creates_the_store(tmp_path):
    with pytest.raises(RecoveryStoreError, match=r"missing: no such directory.*serving-recovery-store init"):
        hold_for_flow(tmp_path / "missing")


def test_a_directory_without_partitions_is_refused_with_the_command_that_creates_them(tmp_path):
    with pytest.raises(RecoveryStoreError, match=rf"{tmp_path}: no recovery partition.*init {tmp_path} "):
        hold_for_flow(tmp_path)


def test_a_process_directory_left_empty_is_refused_with_the_regroup_that_fills_it(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=2, processes=1)
    (store / "process-1").mkdir()  # started as two processes on a store laid out for one
    with pytest.raises(RecoveryStoreError, match=rf"process-1: no recovery partition.*regroup {store} "):
        hold_for_flow(store / "process-1")


def test_a_one_process_flow_missing_a_partition_is_refused_naming_it(tmp_path):
    init_db_dir(tmp_path, 3)
    (tmp_path / "part-1.sqlite3").unlink()
    with pytest.raises(
        RecoveryStoreError, match=r"partitions missing \[1\].* of 3: the cluster cannot resume"
    ):
        hold_for_flow(tmp_path)
    hold_for_flow(tmp_path, processes=2).release()  # in a cluster, another process may hold it


def test_a_store_missing_or_doubling_a_partition_is_refused_by_every_process(tmp_path):
    store = tmp_path / "store"
    init(store, partitions=4, processes=2)
    hold_for_flow(store / "process-0", processes=2).release()
    shutil.copy(store / "process-1" / "part-1.sqlite3", store / "process-0")
    with pytest.raises(RecoveryStoreError, match=r"found twice \[1\]"):
        hold_for_flow(store / "process-0", processes=2)
    (store / "process-1" / "part-1.sqlite3").unlink()
    (store / "process-0" / "part-1.sqlite3").unlink()
    for process in ("process-0", "process-1"):
        with pytest.raises(RecoveryStoreError, match=r"partitions missing \[1\]"):
            hold_for_flow(store / process, processes=2)
