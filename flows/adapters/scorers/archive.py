"""Packing a model (a SavedModel directory, or an ONNX file with any external data) into the archive a model
descriptor carries inline.

Unpacking is admission's job, in a child process with resource limits: see `flows.core.admission.unpack`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path


def pack_directory(directory: Path) -> bytes:
    """A gzip tar archive of `directory`'s contents (paths relative to it), reproducible byte for byte."""
    return _pack((path, str(path.relative_to(directory))) for path in sorted(directory.rglob("*")))


def pack_file(path: Path, name: str) -> bytes:
    """A gzip tar archive holding the one file `path`, called `name` (an ONNX model without external data
    becomes `model.onnx`), reproducible byte for byte."""
    return _pack([(path, name)])


def _pack(members: Iterable[tuple[Path, str]]) -> bytes:
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path, name in members:
            archive.add(path, arcname=name, recursive=False, filter=normalise)
    return buffer.getvalue()
