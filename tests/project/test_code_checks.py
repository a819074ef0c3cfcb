"""The code checks, run first (see `tests/conftest.py`), with the versions the test extra pins: ruff's lint
and format, and mypy with the pydantic plugin over `flows/` and `tests/` (configured in `pyproject.toml`).

They are tests so that the one test command of the README, the one CI runs, checks the code too; while
editing, run them directly: `ruff check && ruff format --check && mypy`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.jobs import REPO

CHECKS = {
    "ruff lint": [sys.executable, "-m", "ruff", "check", "flows", "tests"],
    "ruff format": [sys.executable, "-m", "ruff", "format", "--check", "flows", "tests"],
    "mypy": [sys.executable, "-m", "mypy", "flows", "tests"],
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_code_passes(check: str) -> None:
    done = subprocess.run(CHECKS[check], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{check} found:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
