"""The main job as a subprocess (embedded or over Kafka), and waiting on what it does."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flows.avro import RECORD
from flows.tools import audit

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_job(env: dict[str, str], *args: str) -> subprocess.Popen:
    """The main job, `python -m bytewax.run flows.serving ARGS`, as a subprocess with `env`."""
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.serving", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_flow_to_end_of_topics(bootstrap: str, topics: dict[str, str], *args: str, **settings: str) -> str:
    """Run the main job on `topics` until the end of its input topics; its console output."""
    return finished_output(
        start_flow(bootstrap, topics, *args, **{"SERVING_KAFKA_TAIL": "false", **settings})
    )


def start_flow(bootstrap: str, topics: dict[str, str], *args: str, **settings: str) -> subprocess.Popen:
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
    return start_job(env, *args)


def finished_output(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    return output


def wait_for_model_snapshot(database: Path, timeout: float = 30) -> None:
    """Wait until the model holder's state is in the recovery store, and one more snapshot interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            if db.execute("SELECT count(*) FROM snaps WHERE step_id LIKE '%model_holder'").fetchone()[0]:
                time.sleep(1.5)
                return
        time.sleep(0.2)
    raise AssertionError(f"no model snapshot in {database} after {timeout} s")


def encoded(records):
    return [(str(r.user).encode(), RECORD.encode(r)) for r in records]


def audit_report(bootstrap: str, topics: dict[str, str]) -> dict:
    config = {"bootstrap.servers": bootstrap}
    return audit.audit(config, topics["data"], topics["results"], topics["dead"]).summary()
