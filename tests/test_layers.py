"""The fast unit layer stays fast: the modules that never load a model run without TensorFlow."""

from __future__ import annotations

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
