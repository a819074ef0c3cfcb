"""A digest of a model directory's files, to recognise the models shipped with the package.

The shipped models are part of the installed package, trusted as its code is; a SavedModel whose files are
byte for byte those of a shipped one is that model, whatever descriptor carried it, and skips the trial run
that costs a TensorFlow import in the admission child (`flows.core.admission.unpack`). The digest covers
every file's relative path, size and bytes, so a model that differs in any byte, adds a file or renames one
is another model and gets its trial.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1024 * 1024


def tree_digest(directory: Path) -> str:
    """SHA-256 over the plain files under `directory`, in path order; a link or special file counts by its
    kind and name, not its target (no shipped model has one, so such a tree never matches)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*"), key=lambda found: found.relative_to(directory).as_posix()):
        name = path.relative_to(directory).as_posix().encode()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            digest.update(b"other\0" + name + b"\0")
        elif path.is_file():
            digest.update(b"file\0" + name + b"\0" + str(path.stat().st_size).encode() + b"\0")
            with open(path, "rb") as content:
                while chunk := content.read(CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()
