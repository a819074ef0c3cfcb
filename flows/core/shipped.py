"""Where the shipped models lie: package data `flows.models` (the repository's top-level `models/`).

TensorFlow loads a SavedModel from a directory, so this is a real path: pip installs packages unzipped.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SHIPPED_MODELS_DIR = Path(os.fspath(resources.files("flows.models") / "recommender"))
