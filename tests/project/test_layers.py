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
    modules = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if path.stem in WITHOUT_TENSORFLOW
    )
    assert len(modules) == len(WITHOUT_TENSORFLOW), modules
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest_probe", *modules],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "NO TENSORFLOW" in done.stdout, done.stdout[-3000:]


# The layers, lowest first: a module imports from its own layer and those below, never from one above, and
# never the tools, benchmarks and test helpers beside the product.
LAYERS = ("flows.core", "flows.wire", "flows.adapters", "flows.runtime")
BESIDE_THE_PRODUCT = ("flows.tools", "flows.bench", "flows.testing")


def _layer(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def _flow_imports(path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flows"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("flows")}
    return imported


def test_no_layer_imports_a_layer_above_it_or_the_tools():
    upward = {}
    for path in (REPO / "flows").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        rank = _layer(module)
        if rank is None:
            continue
        wrong = {
            name
            for name in _flow_imports(path)
            if name.startswith(BESIDE_THE_PRODUCT) or (_layer(name) is not None and _layer(name) > rank)
        }
        if wrong:
            upward[module] = sorted(wrong)
    assert not upward, upward


def test_every_module_of_the_product_is_in_a_layer():
    """Besides the layers, only the entry point (`python -m bytewax.run flows.serving`) and the finder of
    old module paths sit at the top of the package."""
    top = {path.name for path in (REPO / "flows").glob("*.py")}
    assert top == {"__init__.py", "serving.py", "moved.py"}
