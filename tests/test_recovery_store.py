"""`serving-recovery-store`: a recovery store sized for the most workers, regrouped between process counts."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from support.jobs import REPO

from flows.tools.recovery_store import RecoveryStoreError, find_partitions, init, regroup


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
