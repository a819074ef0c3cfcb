"""The README stays true: every setting is documented, and .ci/run runs the Quickstart's test command."""

from __future__ import annotations

import subprocess

from support.jobs import REPO

from flows.settings import Settings


def test_every_setting_is_in_the_readme_table():
    readme = (REPO / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`SERVING_{name.upper()}`" in readme, f"SERVING_{name.upper()} is not documented"


def test_ci_runs_the_quickstart_test_command():
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    ci_command = subprocess.run(
        ["bash", ".ci/run", "--print-command"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ci_command == "pip install -e '.[test]' && python -m pytest"
    assert f"```bash\n{ci_command}\n```" in quickstart
    assert "```bash\npip install -e . && python -m bytewax.run flows.serving\n```" in quickstart
