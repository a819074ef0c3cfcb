"""Unpacking model archives (tar, optionally gzip-compressed) without trusting their contents.

Model bytes come from a topic anyone with producer rights can write to, so an archive whose members
escape the target directory (absolute paths, `..`, links pointing outside, devices) is refused rather
than unpacked, as is one that would expand past a size limit.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

MAX_UNPACKED_BYTES = 2 * 1024**3


class UnsafeArchiveError(ValueError):
    """The archive is not a readable tar file, or unpacking it would be unsafe."""


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


def _refuse_unsafe(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: path leaves the model directory")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"unsafe archive member {member.name!r}: only files and directories are allowed"
        )


def unpack_archive(payload: bytes, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack the tar archive `payload` into `target`, refusing anything that would land outside it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as archive:
            members = archive.getmembers()
            for member in members:
                _refuse_unsafe(member)
            total = sum(member.size for member in members)
            if total > max_bytes:
                raise UnsafeArchiveError(f"archive expands to {total} bytes, over the limit of {max_bytes}")
            # Defence in depth: the "data" filter (PEP 706) also rejects what escapes the target.
            archive.extractall(target, members=members, filter="data")
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(f"unsafe archive member: {error}") from error
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        if isinstance(error, UnsafeArchiveError):
            raise
        detail = " ".join(str(error).split())  # tarfile's messages span several lines
        raise UnsafeArchiveError(f"not a readable tar archive: {type(error).__name__}: {detail}") from error
