"""Packing a SavedModel directory into the archive a model descriptor carries inline.

Unpacking is admission's job, in a child process with resource limits: see `flows.core.admission.unpack`.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def pack_directory(directory: Path) -> bytes:
    """A gzip tar archive of `directory`'s contents (paths relative to it), reproducible byte for byte."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=normalise)
    return buffer.getvalue()
