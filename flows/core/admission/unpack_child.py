"""The unpacking child process: `python -m flows.core.admission.unpack_child` with a JSON job on stdin.

It limits itself first (address space, CPU seconds, file size, open files), then unpacks a model archive into
a target directory and inspects the model there (a SavedModel's graph, an ONNX model: see
`flows.core.admission.onnx_graph`, or a PMML document: `flows.core.admission.pmml_guard`), then tries the
model in a trial run (an ONNX model in ONNX Runtime, `flows.core.admission.onnx_trial`; a PMML model in its
evaluator, `flows.core.admission.pmml_trial`; a SavedModel in TensorFlow,
`flows.core.admission.saved_model_trial`, unless the job says the parent remembers its trial or its files are
those of a shipped model, `flows.core.admission.tree_digest`), and prints one JSON line: `{"ok": true, ...}`
or `{"ok": false, "reason": ...}`. Before each step it writes `stage: WHAT` to stderr, so that the parent, if
a limit kills it, can say what it was doing. Anything the limits stop (a tarfile loop, a quadratic regex, a
header of gigabytes, a compression bomb, a model that allocates gigabytes or runs for minutes) ends this
process, not the flow; the parent kills it on a wall-clock deadline too (see `flows.core.admission.unpack`).

A SavedModel's trial needs TensorFlow, which an address-space limit cannot hold usefully: importing it
takes 2.3 GB of address space (thread stacks and allocator arenas, more with more cores) for ~700 MB
resident. So the address-space limit holds for unpacking and inspection only; from TensorFlow's import on,
a watchdog thread reads this process's resident memory every 10 ms and ends it with `MEMORY_EXIT_STATUS`
past the job's limit (a model that grew by 10 GB was stopped within ~50 MB of the limit). The import and
the trial get CPU seconds of their own, as the parent gives them wall-clock time of their own from the
stage lines `IMPORT_STAGE` and `TRIAL_STAGE` on.

The archive is read as a stream (no seeking back, which also stops CPython's negative-size loop) from a
decompressor whose output is capped, so a bomb is refused after at most the cap, and members are written
by this code, one checked path at a time: only plain files and directories, no links, nothing outside.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import math
import os
import resource
import signal
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TextIO

from flows.core.admission.graph import DEFAULT_MAX_BYTES, inspect_saved_model
from flows.core.admission.tree_digest import tree_digest
from flows.core.errors import ServingError
from flows.core.model_formats import ONNX, PMML, PMML_MODEL_FILE

CHUNK = 1024 * 1024
MAX_MEMBER_NAME = 1024
MAX_REASON = 500
STAGE_PREFIX = "stage: "
# The stages from which the parent runs a clock of its own (`flows.core.admission.unpack`).
IMPORT_STAGE = "importing TensorFlow"
TRIAL_STAGE = "starting the SavedModel's trial"
PMML_IMPORT_STAGE = "importing the PMML evaluator"
PMML_TRIAL_STAGE = "starting the PMML model's trial"
MEMORY_EXIT_STATUS = 86  # the watchdog ended the child: its resident memory went past the job's limit
WATCH_INTERVAL_S = 0.01
BLOCK = 512
# Extended headers (pax 'x'/'g', GNU long names 'L'/'K') are read whole by tarfile and pax ones parsed
# with a regex that is quadratic on CPython 3.11.7: legitimate ones are a few hundred bytes.
MAX_EXTENDED_HEADER = 8 * 1024
EXTENDED_TYPES = frozenset(b"xgLK")
ENTRY_TYPES = frozenset(b"05\x00")  # regular file (also the old NUL flag), directory


class Refused(ServingError):
    """The archive breaks a rule; the message says which."""


class _TarHeaderGuard:
    """Reads the tar headers as the bytes stream past, before tarfile sees them.

    It refuses, at the header, what would make tarfile loop or read a huge header: a negative or
    malformed size, an extended header over MAX_EXTENDED_HEADER, a pax `size` record (which would move
    the next header where this guard does not look), and any entry type but file, directory and the
    extended headers. It follows the headers by their size fields, as tarfile does.
    """

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.entries = 0
        self.position = 0
        self.next_header = 0
        self.header = b""
        self.extended: bytearray | None = None  # the body of a pax header being collected
        self.extended_left = 0

    def observe(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.extended is not None:  # right after a pax header: its body, then the padding
                take = min(len(view), self.extended_left)
                self.extended += view[:take]
                self.extended_left -= take
                view = view[take:]
                self.position += take
                if not self.extended_left:
                    self._check_pax(bytes(self.extended))
                    self.extended = None
                continue
            if self.position < self.next_header:
                skip = min(len(view), self.next_header - self.position)
                view = view[skip:]
                self.position += skip
                continue
            take = min(len(view), BLOCK - len(self.header))
            self.header += view[:take]
            view = view[take:]
            self.position += take
            if len(self.header) == BLOCK:
                self._check_header(self.header)
                self.header = b""

    def _check_header(self, header: bytes) -> None:
        self.next_header = self.position
        if not header.strip(b"\x00"):
            return  # an end-of-archive block
        kind = header[156]
        size = _header_size(header[124:136])
        if kind not in ENTRY_TYPES and kind not in EXTENDED_TYPES:
            raise Refused(
                f"unsafe archive member of type {chr(kind)!r}: only files and directories are allowed"
            )
        if kind in EXTENDED_TYPES and size > MAX_EXTENDED_HEADER:
            raise Refused(
                f"archive has an extended header ({chr(kind)!r}) "
                f"of {size:,} bytes (limit {MAX_EXTENDED_HEADER:,})"
            )
        if kind in ENTRY_TYPES:
            self.entries += 1
            if self.entries > self.max_files:  # counted ahead of tarfile, before it writes them
                raise Refused(f"archive has more than {self.max_files:,} members (SERVING_MODEL_MAX_FILES)")
        self.next_header = self.position + -(-size // BLOCK) * BLOCK
        if kind in b"xg" and size:
            self.extended, self.extended_left = bytearray(), size

    @staticmethod
    def _check_pax(body: bytes) -> None:
        if b" size=" in body or body.startswith(b"size="):
            raise Refused("archive has a pax header that sets a member's size: not accepted")


def _header_size(field: bytes) -> int:
    """A tar header's size field (octal, or GNU base-256), refusing negative or malformed values."""
    if field[0] & 0x80:
        if field[0] == 0xFF:
            raise Refused("archive member declares a negative size")
        value = int.from_bytes(field[1:], "big")
    else:
        text = field.split(b"\x00", 1)[0].strip() or b"0"
        try:
            value = int(text, 8)
        except ValueError:
            raise Refused(f"not a readable tar archive: malformed size field {field[:12]!r}") from None
    return value


class _CappedDecompressedStream(io.RawIOBase):
    """The decompressed bytes of `raw` (gzip, bzip2, xz or none), refusing to produce more than `cap`,
    with every tar header checked by a `_TarHeaderGuard` on its way to tarfile."""

    def __init__(self, raw: BinaryIO, cap: int, max_files: int) -> None:
        self._raw = raw
        self._cap = cap
        self.produced = 0
        head = raw.read(6)
        self._pending = b""
        self._decompressor: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor | None
        if head.startswith(b"\x1f\x8b"):
            self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif head.startswith(b"BZh"):
            self._decompressor = bz2.BZ2Decompressor()
        elif head.startswith(b"\xfd7zXZ\x00"):
            self._decompressor = lzma.LZMADecompressor()
        else:
            self._decompressor = None
        self._input = head
        self._guard = _TarHeaderGuard(max_files)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._next_output(len(buffer))
            if chunk is None:
                return 0
            self._pending = chunk
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _next_output(self, wanted: int) -> bytes | None:
        wanted = max(wanted, 64 * 1024)
        if self._decompressor is None:
            data = self._input or self._raw.read(wanted)
            self._input = b""
        else:
            data = self._decompress(wanted)
        if not data:
            return None
        self.produced += len(data)
        if self.produced > self._cap:
            raise Refused(
                f"archive expands to more than {self._cap:,} bytes (SERVING_MODEL_MAX_UNPACKED_BYTES)"
            )
        self._guard.observe(data)
        return data

    def _decompress(self, wanted: int) -> bytes:
        decompressor = self._decompressor
        assert decompressor is not None  # _next_output reads uncompressed input itself
        while not decompressor.eof:
            if isinstance(decompressor, bz2.BZ2Decompressor | lzma.LZMADecompressor):
                # bz2 and lzma keep unread input inside; zlib keeps it in unconsumed_tail
                source = self._take_input() if decompressor.needs_input else b""
                if decompressor.needs_input and not source:
                    return b""
                data = decompressor.decompress(source, max_length=wanted)
            else:
                source = decompressor.unconsumed_tail or self._take_input()
                if not source:
                    return b""  # truncated: tarfile reports the missing data
                data = decompressor.decompress(source, wanted)
            if data:
                return data
        return b""

    def _take_input(self) -> bytes:
        data = self._input or self._raw.read(CHUNK)
        self._input = b""
        return data


def _checked_path(target: Path, member: tarfile.TarInfo) -> Path:
    name = member.name
    if len(name) > MAX_MEMBER_NAME:
        raise Refused(f"archive member name of {len(name):,} characters (limit {MAX_MEMBER_NAME})")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\x00" in name:
        raise Refused(f"unsafe archive member {name[:200]!r}: path leaves the model directory")
    if not (member.isfile() or member.isdir()):
        raise Refused(f"unsafe archive member {name[:200]!r}: only files and directories are allowed")
    parts = [part for part in path.parts if part not in ("", ".")]
    return target.joinpath(*parts) if parts else target


def unpack(payload: BinaryIO, target: Path, max_bytes: int, max_files: int) -> tuple[int, int]:
    """Unpack the archive stream into `target`; the number of members and file bytes written."""
    stream = _CappedDecompressedStream(payload, max_bytes, max_files)
    members = written = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream, CHUNK), mode="r|") as archive:
            for member in archive:
                members += 1
                if members > max_files:
                    raise Refused(f"archive has more than {max_files:,} members (SERVING_MODEL_MAX_FILES)")
                path = _checked_path(target, member)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                if member.size < 0 or written + member.size > max_bytes:
                    raise Refused(
                        f"archive member {member.name[:200]!r} declares {member.size:,} bytes, over what "
                        f"is left of {max_bytes:,} (SERVING_MODEL_MAX_UNPACKED_BYTES)"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file (_checked_path), which extractfile always opens
                with open(path, "xb") as destination:
                    while chunk := source.read(CHUNK):
                        destination.write(chunk)
                written += member.size
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise Refused(f"not a readable tar archive: {type(error).__name__}: {error}") from error
    except OSError as error:
        if "Invalid data stream" in str(error):  # bz2's word for corrupt input
            raise Refused(f"not a readable tar archive: {error}") from error
        raise
    if members == 0:
        raise Refused("not a readable tar archive: no members")
    return members, written


def _limit_self(job: dict) -> None:
    """The limits of unpacking and inspection. For a SavedModel, the hard limits leave room for the trial,
    whose soft limits `_allow` raises when it comes (tarfile and the graph parser run no code that could)."""
    memory, cpu_seconds = job["memory_bytes"], job["cpu_seconds"]
    # A SavedModel's or a PMML model's import and trial get CPU of their own (`_allow`); only TensorFlow's
    # needs the address space lifted (its watchdog holds resident memory instead).
    staged = job.get("saved_model_trial") or job.get("format") == PMML
    memory_hard = resource.getrlimit(resource.RLIMIT_AS)[1] if job.get("saved_model_trial") else memory
    cpu_hard = cpu_seconds + (job["import_seconds"] + job["trial_seconds"] if staged else 0) + 1
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory_hard))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["max_unpacked_bytes"], job["max_unpacked_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    # A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the process without a word.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _allow(cpu_seconds: int) -> None:
    """Lift the address-space limit to its hard one (see the module docstring) and give the next step
    `cpu_seconds` of CPU from now."""
    memory_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (memory_hard, memory_hard))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(
        resource.RLIMIT_CPU, (min(math.ceil(usage.ru_utime + usage.ru_stime) + cpu_seconds, hard), hard)
    )


def _watch_resident_memory(limit_bytes: int) -> None:
    """End this process with `MEMORY_EXIT_STATUS`, after a stage line saying how far it got, once its
    resident memory passes `limit_bytes`. A thread: TensorFlow runs a model's ops without the GIL."""

    def watch() -> None:
        while True:
            resident = _resident_bytes()
            if resident > limit_bytes:
                _stage(f"{_current_stage} (stopped at {resident / 1024**2:,.0f} MiB resident)")
                os._exit(MEMORY_EXIT_STATUS)
            time.sleep(WATCH_INTERVAL_S)

    _resident_bytes()  # fails here, not in the thread, where /proc cannot be read
    threading.Thread(target=watch, name="resident-memory-watchdog", daemon=True).start()


def _resident_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise Refused("/proc/self/status has no VmRSS line: the trial's memory cannot be watched")


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def run(job: dict) -> dict:
    """Carry out one job (see the module docstring); the verdict as a JSON-able dict."""
    target = Path(job["target"])
    try:
        files = written = 0
        if job.get("payload"):
            _stage("unpacking the archive")
            with open(job["payload"], "rb") as payload:
                files, written = unpack(payload, target, job["max_unpacked_bytes"], job["max_files"])
        if job.get("format") == ONNX:
            return _onnx(job, target, files, written)
        if job.get("format") == PMML:
            return _pmml(job, target, files, written)
        _stage("inspecting the SavedModel's graph")
        problems = inspect_saved_model(
            target,
            frozenset(job["allowed_ops"]),
            max_bytes=min(job["max_unpacked_bytes"], DEFAULT_MAX_BYTES),
        )
        if problems:
            return {"ok": False, "reason": _cut("; ".join(problems))}
        if job.get("saved_model_trial"):
            _stage("comparing the SavedModel with the shipped ones")
            shipped = job["shipped_saved_models"].get(tree_digest(target))
            if shipped is not None:
                return {"ok": True, "files": files, "bytes": written, "trial": None, "shipped": shipped}
            return _saved_model(job, target, files, written)
        return {"ok": True, "files": files, "bytes": written}
    except Refused as error:
        return {"ok": False, "reason": _cut(str(error))}
    except MemoryError:
        return {
            "ok": False,
            "reason": f"ran out of its memory limit (SERVING_MODEL_UNPACK_MEMORY) while {_current_stage}",
        }
    except OSError as error:
        return {"ok": False, "reason": _cut(f"unpacking failed: {type(error).__name__}: {error}")}


def _onnx(job: dict, target: Path, files: int, written: int) -> dict:
    """Inspect the ONNX model in `target`, then try it (imports onnx and ONNX Runtime: only when needed)."""
    from flows.core.admission.onnx_graph import OnnxRefused, inspect_onnx
    from flows.core.admission.onnx_trial import trial
    from flows.core.admission.trial import TrialRefused

    _stage("inspecting the ONNX graph")
    problems = inspect_onnx(target, job["max_unpacked_bytes"])
    if problems:
        return {"ok": False, "reason": _cut("; ".join(problems))}
    try:
        figures = trial(
            target, job["max_batch_pairs"], tuple(job["output_range"]), job["max_call_seconds"], _stage
        )
    except (OnnxRefused, TrialRefused) as error:
        return {"ok": False, "reason": _cut(str(error))}
    return {"ok": True, "files": files, "bytes": written, "trial": figures.to_json()}


def _pmml(job: dict, target: Path, files: int, written: int) -> dict:
    """Vet the PMML document in `target` (`flows.core.admission.pmml_guard`), then import the evaluator and
    try the model, each with CPU seconds of its own, all within the address-space limit."""
    from flows.core.admission.pmml_guard import PmmlRefused
    from flows.core.admission.pmml_trial import EvaluatorMissing, regressor_class, trial, vet
    from flows.core.admission.trial import TrialRefused

    path = target / PMML_MODEL_FILE
    if not path.is_file():
        return {"ok": False, "reason": f"no {PMML_MODEL_FILE} in the model's archive or directory"}
    try:
        _stage("checking the PMML document")
        summary = vet(path, job["max_unpacked_bytes"])
        _stage(PMML_IMPORT_STAGE)
        _allow(job["import_seconds"])
        regressor_class(summary)
        _stage(PMML_TRIAL_STAGE)
        _allow(job["trial_seconds"])
        figures = trial(
            path, summary, job["max_batch_pairs"], tuple(job["output_range"]), job["max_call_seconds"], _stage
        )
    except (PmmlRefused, EvaluatorMissing, TrialRefused) as error:
        return {"ok": False, "reason": _cut(str(error))}
    return {
        "ok": True,
        "files": files,
        "bytes": written,
        "trial": figures.to_json(),
        "pmml": summary.to_json(),
    }


def _saved_model(job: dict, target: Path, files: int, written: int) -> dict:
    """Try the SavedModel in `target`, which passed inspection: import TensorFlow, then its trial, each
    with CPU seconds of its own, and resident memory watched from the import on."""
    from flows.core.admission.saved_model_trial import trial
    from flows.core.admission.tensorflow_import import import_quietly
    from flows.core.admission.trial import TrialRefused

    _stage(IMPORT_STAGE)
    _allow(job["import_seconds"])
    _watch_resident_memory(job["trial_memory_bytes"])
    tf = import_quietly()
    _stage(TRIAL_STAGE)
    _allow(job["trial_seconds"])
    try:
        figures = trial(
            tf, target, job["max_batch_pairs"], tuple(job["output_range"]), job["max_call_seconds"], _stage
        )
    except TrialRefused as error:
        return {"ok": False, "reason": _cut(str(error))}
    return {"ok": True, "files": files, "bytes": written, "trial": figures.to_json()}


_current_stage = "starting"
# Where stage lines go: the parent's stderr file, through a descriptor of its own, so that they still reach
# it while TensorFlow's import has descriptor 2 muted (the watchdog may stop the child then).
_stages: TextIO = sys.stderr


def _stage(what: str) -> None:
    global _current_stage
    _current_stage = what
    print(f"{STAGE_PREFIX}{what}", file=_stages, flush=True)


def main() -> None:
    global _stages
    job = json.loads(sys.stdin.read(1024 * 1024))
    _stages = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    _limit_self(job)
    print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()
