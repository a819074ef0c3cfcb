"""The README stays true and short, .ci/run runs the Quickstart's test command, and every setting is
documented in docs/configuration.md."""

from __future__ import annotations

import subprocess

from support.jobs import REPO

from flows.runtime.settings import variables


def test_every_setting_is_in_both_tables_of_the_configuration_reference():
    reference = (REPO / "docs" / "configuration.md").read_text()
    for name in variables():
        assert reference.count(f"`{name}`") >= 2, f"{name} is not in both tables of docs/configuration.md"
    assert "(docs/configuration.md)" in (REPO / "README.md").read_text()


def test_ci_runs_the_quickstart_test_command():
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    ci_command = subprocess.run(
        ["bash", ".ci/run", "--print-command"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ci_command == "pip install -e '.[test]' && python -m pytest"
    assert f"```bash\n{ci_command}\n```" in quickstart
    assert "```bash\npip install -e . && python -m bytewax.run flows.serving\n```" in quickstart


def test_the_readme_is_short_with_the_commands_and_the_picture_on_its_first_screen():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 8 * 1024, "the README grew past 8 KB: move the detail to docs/"
    first_screen = "\n".join(readme.splitlines()[:50])
    assert "pip install -e . && python -m bytewax.run flows.serving" in first_screen
    assert "pip install -e '.[test]' && python -m pytest" in first_screen
    assert "dataflow.serve" in first_screen  # the picture


def test_the_configuration_reference_is_generated_from_the_settings():
    """docs/configuration.md's tables are what the settings say
    (python -m flows.tools.settings_table --write)."""
    from flows.tools import settings_table

    assert settings_table.main(["--check"]) == 0
    assert settings_table.table().count("\n| `SERVING_") == len(variables())
