"""The fast unit layer stays fast: the modules that never load a model run without TensorFlow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from conftest import WITHOUT_TENSORFLOW
from support.jobs import REPO


def test_the_modules_without_a_model_run_without_importing_tensorflow(tmp_path):
    probe = tmp_path / "conftest_probe.py"
    probe.write_text(
        "import sys\n"
        "def pytest_sessionfinish(session):\n"
        "    print('TENSORFLOW IMPORTED' if 'tensorflow' in sys.modules else 'NO TENSORFLOW')\n"
    )
    modules = [f"tests/{name}.py" for name in sorted(WITHOUT_TENSORFLOW)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest_probe", *modules],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "NO TENSORFLOW" in done.stdout, done.stdout[-3000:]


# The composition: it reads the settings and wires the flow. What it wires never imports it back, nor the
# tools, benchmarks and test helpers beside the product.
COMPOSITION = {"flows.app", "flows.serving", "flows.settings", "flows.observability_setup"}
BESIDE_THE_PRODUCT = ("flows.tools", "flows.bench", "flows.testing")


def _flow_imports(path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flows"):
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("flows")}
    return imported


def test_nothing_the_composition_wires_imports_it_or_the_tools():
    upward = {}
    for path in (REPO / "flows").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module in COMPOSITION or module.startswith(BESIDE_THE_PRODUCT):
            continue
        wrong = {
            name for name in _flow_imports(path) if name in COMPOSITION or name.startswith(BESIDE_THE_PRODUCT)
        }
        if wrong:
            upward[module] = sorted(wrong)
    assert not upward, upward
