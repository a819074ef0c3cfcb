"""The package stands on its own: a wheel built from the project's files, installed (not editable) and run
from another directory, finds its schemas and shipped models and runs the main job, the tools and the
benchmark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from support.jobs import REPO

# Every command pyproject.toml declares (tests/jobs/test_tools.py holds each to a module of flows.tools).
TOOLS = tuple(
    script.removeprefix("serving-")
    for script in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel, installed into a directory of its own; the environment that runs it from elsewhere."""
    scratch = tmp_path_factory.mktemp("package")
    source = scratch / "source"  # what the image's build stage copies: no tests, no work tree around it
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    for folder in ("flows", "models", "schemas"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels, site = scratch / "wheels", scratch / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # No build isolation: the build backend (setuptools) is installed already; nothing is downloaded.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True)
    [wheel] = wheels.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "SERVING_STATE_PORT": "0"}
    return site, env


def run_elsewhere(env: dict[str, str], cwd: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_the_wheel_carries_the_schemas_and_the_shipped_models(installed):
    site, _ = installed
    assert sorted(path.name for path in (site / "flows" / "schemas").glob("*.avsc")) == sorted(
        path.name for path in (REPO / "schemas").glob("*.avsc")
    )
    assert (site / "flows" / "schemas" / "history" / "ModelDescriptor-1.avsc").is_file()
    for version in ("1", "2"):
        model = site / "flows" / "models" / "recommender" / version
        assert (model / "saved_model.pb").is_file() and (model / "variables" / "variables.index").is_file()
        twin = site / "flows" / "models" / "recommender" / f"{version}-onnx" / "model.onnx"
        assert (
            twin.read_bytes()
            == (REPO / "models" / "recommender" / f"{version}-onnx" / "model.onnx").read_bytes()
        )


def test_the_installed_main_job_runs_from_another_directory(installed, tmp_path):
    site, env = installed
    where = run_elsewhere(env, tmp_path, sys.executable, "-c", "import flows; print(flows.__file__)")
    assert where.stdout.strip() == str(site / "flows" / "__init__.py"), where.stderr
    env = {**env, "SERVING_RECORDS": "500", "SERVING_RECORD_RATE": "0", "SERVING_CONSOLE_EVERY": "100"}
    done = run_elsewhere(env, tmp_path, sys.executable, "-m", "bytewax.run", "flows.serving")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model 'recommender-v1' accepted" in done.stdout
    assert str(site) in done.stdout  # the shipped model came from the installed package's data
    # Every 100th of 500 results; a sampled explanation's lines ("explained user ...") may come besides.
    assert sum(line.startswith("user ") for line in done.stdout.splitlines()) == 5


def test_the_installed_tools_and_their_scripts_answer(installed, tmp_path):
    site, env = installed
    for tool in TOOLS:
        script = site / "bin" / f"serving-{tool}"
        done = run_elsewhere(env, tmp_path, str(script), "--help")
        assert done.returncode == 0 and f"usage: serving-{tool}" in done.stdout, done.stderr


def test_the_installed_benchmark_runs_from_another_directory(installed, tmp_path):
    _, env = installed
    done = run_elsewhere(
        env, tmp_path, sys.executable, "-m", "flows.bench", "--scenario", "embedded", "--records", "2000"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["records"] == 2000 and result["errors"] == 0 and result["records_per_s"] > 0


def test_the_wheel_holds_the_package_only(installed):
    site, _ = installed
    [record] = site.glob("bytewax_model_serving-*.dist-info/RECORD")
    installed = [line.split(",")[0] for line in record.read_text().splitlines()]
    scripts = [path for path in installed if path.startswith("../")]  # bin/serving-*, beside the target
    top_levels = {path.split("/")[0] for path in installed if path not in scripts}
    assert top_levels == {"flows", record.parent.name}, top_levels
    assert sorted(Path(path).name for path in scripts) == sorted(f"serving-{tool}" for tool in TOOLS)


def test_every_package_of_the_source_tree_is_in_the_wheel_list():
    """pyproject.toml lists the packages (models/ and schemas/ are mapped into flows): a new subpackage of
    flows/ that is not listed would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "flows").rglob("__init__.py")}
    assert found | {"flows.models", "flows.schemas"} == listed
