"""Where the shipped models lie: package data `flows.models` (the repository's top-level `models/`).

TensorFlow loads a SavedModel from a directory, so this is a real path: pip installs packages unzipped.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import cast

# A Traversable in general, a real directory here (see above): os.fspath refuses anything else.
SHIPPED_MODELS_DIR = Path(
    os.fspath(cast("os.PathLike[str]", resources.files("flows.models") / "recommender"))
)


@functools.cache
def shipped_saved_models() -> dict[str, str]:
    """The tree digests (`flows.core.admission.tree_digest`) of the shipped SavedModels, each with the name
    of its directory: the models the admission child trusts without a trial."""
    from flows.core.admission.tree_digest import tree_digest

    return {
        tree_digest(directory): directory.name
        for directory in sorted(SHIPPED_MODELS_DIR.iterdir())
        if (directory / "saved_model.pb").is_file()
    }
