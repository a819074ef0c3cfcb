"""The main job as a subprocess (embedded or over Kafka), and waiting on what it does."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from flows.core.model_holder import HolderState
from flows.tools import audit, recovery_store
from flows.wire.avro import RECORD

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def announced_imports(log: Path) -> list[tuple[str, str]]:
    """(thread, package) of each first import a flow run as `support.watched_imports` announced so far."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [(thread, package) for thread, _, package in (line.rpartition(" imports ") for line in lines)]


def start_job(
    env: dict[str, str], *args: str, module: str = "flows.serving", output: Path | None = None
) -> subprocess.Popen:
    """The main job, `python -m bytewax.run flows.serving ARGS`, as a subprocess with `env` (or another
    module's flow: one of `tests/support`, which is put on the path). Its output is a pipe to read when it
    ends, or appended to the file `output` (a job that logs a lot while the test waits fills a pipe, and
    then blocks writing to it)."""
    if module != "flows.serving":
        env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")])),
        }
    job = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE if output is None else output.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    STARTED.append(job)
    return job


STARTED: list[subprocess.Popen] = []  # every job `start_job` started, for `reap_started_jobs`


def reap_started_jobs() -> None:
    """End every job a test started that still runs, so that a failed test leaves none behind (conftest
    calls it after each test). A paused job (a zombie test sends SIGSTOP) is woken first, so that it can
    die."""
    while STARTED:
        job = STARTED.pop()
        if job.poll() is None:
            job.send_signal(signal.SIGCONT)
            job.kill()
            job.wait(timeout=30)


def run_flow_to_end_of_topics(bootstrap: str, topics: dict[str, str], *args: str, **settings: str) -> str:
    """Run the main job on `topics` until the end of its input topics; its console output."""
    environment = {"SERVING_KAFKA_TAIL": "false", **settings}
    # mypy checks a dict[str, str] against every keyword, `output` too; these are SERVING_* names only.
    return finished_output(start_flow(bootstrap, topics, *args, **environment))  # type: ignore[arg-type]


def start_flow(
    bootstrap: str,
    topics: dict[str, str],
    *args: str,
    module: str = "flows.serving",
    output: Path | None = None,
    **settings: str,
) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        SERVING_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SERVING_KAFKA_DATA_TOPIC=topics["data"],
        SERVING_KAFKA_MODELS_TOPIC=topics["models"],
        SERVING_KAFKA_RESULTS_TOPIC=topics["results"],
        SERVING_KAFKA_DEAD_LETTERS_TOPIC=topics["dead"],
        SERVING_CONSOLE_EVERY="0",
    )
    env.update(settings)
    return start_job(env, *args, module=module, output=output)


def finished_output(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    return output


def wait_for_model_snapshot(
    database: Path, timeout: float = 30, holds: Callable[[HolderState], bool] = lambda state: True
) -> None:
    """Wait until a snapshot of the model holder that holds a model is committed: what a restart resumes from.

    A holder row alone is not enough: the holder also writes a snapshot without a model (its start-up
    marker arrives before the model is judged), and a snapshot of an epoch later than the committed one is
    not what a restart reads. Under load, waiting for any row and a fixed second and a half once killed a
    job before its model's snapshot was committed, and the restarted job had no model. `holds` can ask for
    more of the snapshot (a challenger, say).
    """
    _wait_for_committed_snapshot(
        database, "%model_holder", None, lambda state: _holds_a_champion(state, holds), timeout,
        "the model holder with a model",
    )  # fmt: skip


def wait_for_fitted_outlier_snapshot(database: Path, model: str, timeout: float = 60) -> None:
    """Wait until a committed snapshot holds `model`'s outlier detector fitted: a restart from it goes on
    scoring with that detector instead of taking a new reference."""
    _wait_for_committed_snapshot(
        database, "%_outliers", model, lambda state: state.ranks is not None, timeout,
        f"{model}'s fitted outlier detector",
    )  # fmt: skip


def _wait_for_committed_snapshot(
    database: Path, step_like: str, key: str | None, holds: Callable[[Any], bool], timeout: float, what: str
) -> None:
    """Wait until the store holds a snapshot of a step whose id is LIKE `step_like` (of `key`, if given),
    of an epoch before the committed one, that `holds`."""
    deadline = time.monotonic() + timeout
    query = "SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE ? AND ser_change IS NOT NULL"
    arguments: tuple[str, ...] = (step_like,)
    if key is not None:
        query, arguments = query + " AND state_key = ?", (step_like, key)
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            [(committed,)] = db.execute("SELECT min(commit_epoch) FROM commits").fetchall()
            snapshots = db.execute(query, arguments).fetchall()
        if committed is not None and any(
            epoch < committed and holds(pickle.loads(state))  # the test's own store
            for epoch, state in snapshots
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"no committed snapshot of {what} in {database} after {timeout} s")


def resumed_snapshots(store: Path, step: str) -> dict[str, Any]:
    """The states of `step` (its step id's end) a restart on `store` (a stopped cluster's recovery
    directories) resumes with, by state key, found as Bytewax finds them: the resume epoch is the lowest
    frontier of the last execution's workers (a worker without a frontier row stands at the execution's own
    resume epoch), and each key resumes from its snapshot of the latest epoch before that."""
    executions: dict[int, tuple[int, int]] = {}  # execution -> (workers, resume epoch)
    frontiers: dict[tuple[int, int], int] = {}  # (execution, worker) -> frontier
    snapshots: dict[str, list[tuple[int, bytes]]] = {}
    for database in sorted(store.glob("**/part-*.sqlite3")):
        with closing(sqlite3.connect(database)) as db:  # closed at once: no log files left behind
            for execution, workers, epoch in db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs"):
                executions[execution] = (workers, epoch)
            for execution, worker, frontier in db.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts"
            ):
                frontiers[execution, worker] = max(frontier, frontiers.get((execution, worker), frontier))
            rows = db.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps "
                "WHERE step_id LIKE ? AND ser_change IS NOT NULL",
                (f"%{step}",),
            ).fetchall()
        for key, epoch, state in rows:
            snapshots.setdefault(key, []).append((epoch, state))
    assert executions, f"no execution recorded in {store}"
    last = max(executions)
    workers, started_at = executions[last]
    resume_epoch = min(
        max(started_at, frontiers.get((last, worker), started_at)) for worker in range(workers)
    )
    resumed = {}
    for key, taken in snapshots.items():
        before = [(epoch, state) for epoch, state in taken if epoch < resume_epoch]
        if before:
            resumed[key] = pickle.loads(
                max(before, key=lambda snapshot: snapshot[0])[1]
            )  # the test's own store
    return resumed


def resume_offsets(store: Path) -> dict[int, int]:
    """The data offsets a restart on `store` resumes from, per data partition (see `resumed_snapshots`)."""
    return {
        int(key.split("-", 1)[0]): offset for key, offset in resumed_snapshots(store, "kafka_data").items()
    }


def _holds_a_champion(state: HolderState | None, holds: Callable[[HolderState], bool]) -> bool:
    return state is not None and state.champion is not None and holds(state)


def encoded(records):
    return [(str(r.user).encode(), RECORD.encode(r)) for r in records]


def audit_report(bootstrap: str, topics: dict[str, str], isolation: str = "read_committed") -> dict:
    config = {"bootstrap.servers": bootstrap, "isolation.level": isolation}
    return audit.audit(config, topics["data"], topics["results"], topics["dead"]).summary()


def recovery_stores(tmp_path: Path, processes: int, partitions: int | None = None) -> list[Path]:
    """One recovery directory per process, made by `serving-recovery-store init` (as many partitions as
    processes unless told otherwise)."""
    return recovery_store.init(tmp_path / "recovery", partitions or processes, processes)


def regroup_recovery(stores: list[Path], processes: int) -> list[Path]:
    """The partitions of `stores` moved into `processes` directories by `serving-recovery-store regroup`, as
    an operator rescaling the cluster would; the partitions themselves never change."""
    return recovery_store.regroup(stores[0].parent, processes)
