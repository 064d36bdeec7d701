"""The ``.ddpm`` file format: a few bytes of header around the entropy-coded payloads.

Full specification with a worked byte-by-byte example: ``docs/FORMAT.md``. Summary
(all integers little-endian; "uv" = unsigned LEB128 varint, canonical, at most 10 bytes):

    magic          2 bytes   8D DD
    ver_flags      u8        high nibble: version (1, or 2: lossless with x0 at the end of the
                             one segment stream); bit0: lossless, bit1: explicit schedule
                             (else profile id), bit2: coder fields, bit3: one stream
    fingerprint    4 bytes   model fingerprint (first 4 bytes of a hash)
    height, width  uv, uv    1..65535 each, height * width <= 2**28
    schedule       explicit: kind u8, num_steps uv, t_end uv, chunk_bits u8,
                             log2_candidates u8, variance_kind u8
                   else:     profile u8
    seed           uv
    num_segments   uv
    segment table  num_segments x (num_steps uv >= 1, length uv)
    x0_length      uv        only if lossless, version 1
    header_crc8    u8        CRC-8 (poly 0x07) of all header bytes before it
    payloads       the segment payloads, back to back
    x0 payload     x0_length bytes (only if lossless, version 1)
    pixel_crc32    u32       only if lossless
    file_crc16     u16       CRC-16/CCITT-FALSE of every byte before it

Version 3 (compact framing, issue 28) codes the same content in fewer bytes: a 3-byte fingerprint,
the seed only when not 0 (flag bit 3), one varint for a square image's size, the header CRC-8 only
when there are two or more segments (with one, a truncated file has nothing to decode), and in a
lossless file ONE CRC-32 over the pixels and every byte before it instead of the pixel CRC-32 and
the file CRC-16 (checked once the pixels are decoded: :meth:`ParsedFile.pixels_match`).
Version 4 (the default for lossy files since 2026-12-07) is version 3 for lossy files with two changes:
flag bit 0 (lossless in the other versions) says that a ``stop`` uv follows the seed: the diffusion time
the chain's last step goes to, between two of its schedule's times (``encode --steps N``); and a file of
one segment leaves that segment's length out (it is what the file holds before its CRC-16).
Version 5 (the default for every file since 2026-12-07, issue 28) is version 3/4 with a one-byte
fingerprint and checksums keyed by the full one: the CRC-32 (lossless) or CRC-16 (lossy) covers the
first 8 bytes of the coding fingerprint before the file's bytes, so a decoder holding another model
fails it even where the one fingerprint byte matches (1 in 256); both are checked by the decoder, which
knows the key (:meth:`ParsedFile.pixels_match`, :meth:`ParsedFile.keyed_crc_matches`). Flags: bit 0
lossless, bit 1 a settings byte follows the dimensions (a profile id 1-255, or 0 and an explicit schedule
with its coder fields; without it the file uses profile ``IMPLIED_PROFILE``), bit 2 a seed, bit 3 a stop
(lossy files only, as in version 4). In a lossless file and a file with a stop the last segment's
``num_steps`` is left out (the rest of the chain: to the end, or to the stop; :class:`Segment` reads 0), and
a file of one segment leaves its length out too, lossless or not.

The lengths sit in the header, under their own checksum, so that a reader knows the exact
size of the complete file before it reads any payload: a file shorter than that was
truncated (a progressive prefix: the complete segments are returned, ``truncated=True``),
a file of exactly that size must pass the file checksum, and a longer one is corrupt.
With the lengths interleaved with the payloads instead, a damaged length field would read
as a truncation and go undetected.
"""

from __future__ import annotations

import binascii
import operator
import zlib
from dataclasses import dataclass, field

from ..errors import Error

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "MAX_DIM",
    "MAX_PIXELS",
    "MAX_STEPS",
    "MAX_SEGMENTS",
    "MAX_PAYLOAD",
    "DdpmFormatError",
    "ForeignFileError",
    "UnsupportedVersionError",
    "CorruptFileError",
    "TruncatedFileError",
    "Schedule",
    "Header",
    "Segment",
    "DdpmFile",
    "ParsedFile",
    "pack",
    "unpack",
    "varint_encode",
    "varint_decode",
    "crc8",
    "crc16",
    "COMPACT_VERSION",
    "LOSSY_VERSION",
    "pack_fields",
    "to_compact",
    "framing_size",
    "KEYED_VERSION",
    "IMPLIED_PROFILE",
]

MAGIC = b"\x8d\xdd"
"""0x8D is not printable in Latin-1/cp1252 and cannot start a UTF-8 character; "DD" for DDPM."""
FORMAT_VERSION = 5
"""The version the codec writes by default (5 since 2026-12-07, issue 28; 3 for lossless and 4 for lossy files
on 2026-12-07 before it; 2 before). Version 2 differs from 1 only in
lossless files: x_0 is coded at the end of the one segment stream (no ``x0_length``, no x0 payload of its
own); version 3 is version 2's content in compact framing. All are read."""
COMPACT_VERSION = 3
"""Compact framing (issue 28): the same content as version 2 (lossless) or a one-stream version 1 file
(lossy) in 4-5 bytes less; see the module docstring and docs/FORMAT.md."""
LOSSY_VERSION = 4
"""Compact framing for lossy files: version 3, plus an optional exact ``stop`` (flag bit 0) and no length
for a single segment; see the module docstring and docs/FORMAT.md."""
FLAG_STOP = 0x1  # version 4 (always lossy): a `stop` follows the seed
KEYED_VERSION = 5
"""Version 5 (the default since 2026-12-07): versions 3/4's framing with a one-byte fingerprint, checksums
keyed by the full fingerprint and the profile byte left out for profile ``IMPLIED_PROFILE``; see the module
docstring and docs/FORMAT.md."""
IMPLIED_PROFILE = 13
"""The profile of a version-5 file without a settings byte (the default profile when version 5 was made;
fixed by the format, not by the codec's later defaults)."""
KEYED_FINGERPRINT_BYTES = 1
CRC_KEY_BYTES = 8   # version 5: the checksums cover this many bytes of the coding fingerprint first
FLAG5_SETTINGS = 0x2  # version 5: a settings byte follows the dimensions (else IMPLIED_PROFILE)
FLAG5_SEED = 0x4  # version 5: a seed follows (else 0)
FLAG5_STOP = 0x8  # version 5, lossy only: a stop follows the seed
_VERSIONS = (1, 2, 3, 4, 5)

FLAG_LOSSLESS = 0x1
FLAG_EXPLICIT_SCHEDULE = 0x2
FLAG_CODER_FIELDS = 0x4  # an explicit schedule carries `selection` and `rate_percent`
FLAG_ONE_STREAM = 0x8  # the segment payloads are consecutive pieces of one coded stream
FLAG_SEED = 0x8  # version 3 (always one stream): a seed follows the schedule (else the seed is 0)
COMPACT_FINGERPRINT_BYTES = 3
_RESERVED_FLAGS = 0x0  # (all four flag bits of version 1 are assigned)

MAX_DIM = 65535
MAX_PIXELS = 1 << 28
MAX_STEPS = 1 << 20
"""Bound on a schedule's num_steps and on the total steps of all segments."""
MAX_SEGMENTS = MAX_STEPS
MAX_PAYLOAD = 1 << 40
"""Bound on any one payload length (1 TiB)."""
MAX_SEED = (1 << 64) - 1
_MAX_VARINT_BYTES = 10
_TRAILER_BYTES = 2  # file_crc16
_PIXEL_CRC_BYTES = 4
_MERGED_CRC_BYTES = 4  # version 3, lossless: CRC-32 of the pixels and every byte before it


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class DdpmFormatError(Error, ValueError):
    """Base class: the bytes are not a readable .ddpm file."""


class ForeignFileError(DdpmFormatError):
    """Wrong magic: not a .ddpm file."""


class UnsupportedVersionError(DdpmFormatError):
    """A .ddpm file of a format version (or with flags) this reader does not know."""


class CorruptFileError(DdpmFormatError):
    """Checksum mismatch or an impossible value: the file is corrupted."""


class TruncatedFileError(CorruptFileError):
    """The file ends inside its header, so nothing in it can be decoded."""


# ---------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------


def varint_encode(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, 0x80 = more."""
    value = operator.index(value)
    if value < 0 or value > (1 << 64) - 1:
        raise ValueError(f"varint value must be in [0, 2**64), got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_decode(data: bytes, pos: int = 0, *, name: str = "varint") -> tuple[int, int]:
    """Reads one canonical unsigned LEB128 varint at ``data[pos]``.

    Returns ``(value, next_pos)``. Raises :class:`TruncatedFileError` if the data ends
    inside it, :class:`CorruptFileError` if it is longer than 10 bytes, not canonical
    (a redundant final zero group), or not below 2**64.
    """
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise TruncatedFileError(
                f"the file ends inside its header (while reading {name} at byte {pos}): "
                "it is truncated or corrupted"
            )
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise CorruptFileError(f"{name} at byte {pos} is not a canonical varint: corrupted")
            if value > (1 << 64) - 1:
                raise CorruptFileError(f"{name} at byte {pos} does not fit in 64 bits: corrupted")
            return value, pos + i + 1
    raise CorruptFileError(f"{name} at byte {pos} is a varint longer than 10 bytes: corrupted")


def _make_crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _make_crc8_table()


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS: poly 0x07, init 0, not reflected, no final xor (check 0xF4).

    Detects every error burst of up to 8 bits, so every single-byte change.
    """
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected (check 0x29B1).

    ``binascii.crc_hqx`` is this CRC with a caller-given initial value. Detects every
    error burst of up to 16 bits.
    """
    return binascii.crc_hqx(bytes(data), 0xFFFF)


# ---------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """An explicit schedule. The codec gives the u8 fields their meaning (enums)."""

    kind: int  # u8
    num_steps: int  # T, 1..MAX_STEPS
    t_end: int  # tau, the last diffusion time of the chain, 0..MAX_STEPS
    chunk_bits: int  # u8
    log2_candidates: int  # u8
    variance_kind: int  # u8
    selection: int = 0  # u8 (written only when not the defaults 0 / 100)
    rate_percent: int = 100  # u8, 1..255

    @property
    def has_coder_fields(self) -> bool:
        return (self.selection, self.rate_percent) != (0, 100)


@dataclass
class Header:
    fingerprint: bytes  # 4 bytes (version 3: 3 bytes)
    height: int
    width: int
    seed: int  # 0..2**64-1
    schedule: Schedule | None = None  # exactly one of schedule / profile
    profile: int | None = None  # u8, an id the codec maps to a Schedule
    lossless: bool = False  # an x0 segment follows the steps
    one_stream: bool = False  # segments split one stream (else each is a stream of its own)
    x0_in_stream: bool = False  # version 2: x0 is coded at the end of the one stream (lossless only)
    compact: bool = False  # version 3: compact framing (one stream; x0 in the stream if lossless)
    lossy_compact: bool = False  # version 4: a lossy file in the compact framing (optional stop, implied length)
    stop: int | None = None  # versions 4 and 5 (lossy): the diffusion time the chain's last step goes to
    keyed: bool = False  # version 5: 1-byte fingerprint, checksums keyed by crc_key (compact=True as well)
    crc_key: bytes = field(default=b"", compare=False)  # version 5, writing: the key its checksums cover
                                                        # (CRC_KEY_BYTES of the coding fingerprint; not stored)

    @property
    def version(self) -> int:
        if self.keyed:
            return KEYED_VERSION
        if self.lossy_compact:
            return LOSSY_VERSION
        return COMPACT_VERSION if self.compact else 2 if self.x0_in_stream else 1


@dataclass
class Segment:
    num_steps: int  # >= 1 reverse steps coded in this payload; 0 in the last segment of a version-5 file that is
                    # lossless or has a stop: the rest of the chain (to its end, or to the stop)
    payload: bytes


@dataclass
class DdpmFile:
    header: Header
    segments: list[Segment] = field(default_factory=list)
    x0: bytes | None = None  # lossless x0 payload (version 1); iff lossless and not x0_in_stream
    pixel_crc: int | None = None  # CRC-32 (zlib) of the raw HWC uint8 pixels, iff lossless


@dataclass
class ParsedFile:
    file: DdpmFile  # only the complete segments; x0 only if complete
    truncated: bool  # the file ended before its declared end (no checksum verified)
    complete_segments: int  # == len(file.segments)
    declared_segments: int  # what the header announces
    version: int = 2
    fields: list[tuple[str, int]] = field(default_factory=list)  # framing: (field, bytes) in file order
    verified: bool = False  # a checksum over the whole file was verified (never for a truncated file, nor
                            # for a version-3 or 5 lossless file before its pixels are decoded, nor for a
                            # version-5 lossy one: its keyed CRC-16 is the decoder's, keyed_crc_matches)
    merged_crc: tuple[bytes, int] | None = None  # versions 3 and 5, lossless, complete: (the bytes it covers, its value)
    keyed_crc16: tuple[bytes, int] | None = None  # version 5, lossy, complete: (the bytes it covers, its value)

    @property
    def pixels_present(self) -> bool:
        """A complete lossless file (its x_0 and its pixel check are all there)."""
        return self.file.pixel_crc is not None or self.merged_crc is not None

    def pixels_match(self, pixels: bytes, key: bytes = b"") -> bool:
        """Whether decoded raw RGB pixels (uint8, row-major HWC) pass the file's pixel check: the
        pixel CRC-32, or in versions 3 and 5 the CRC-32 of the pixels, then (version 5) the ``key``, then
        every byte before it."""
        if self.merged_crc is not None:
            covered, value = self.merged_crc
            key = key if self.version == KEYED_VERSION else b""
            return zlib.crc32(covered, zlib.crc32(key, zlib.crc32(pixels))) == value
        return self.file.pixel_crc is not None and zlib.crc32(pixels) == self.file.pixel_crc

    def keyed_crc_matches(self, key: bytes) -> bool:
        """A complete lossy version-5 file: whether its CRC-16 of ``key`` and every byte before it holds
        (True for every other file: their checksums are checked by :func:`unpack` or by the pixels)."""
        if self.keyed_crc16 is None:
            return True
        covered, value = self.keyed_crc16
        return crc16(bytes(key) + covered) == value

    def framing_bytes(self) -> int:
        return sum(n for _, n in self.fields)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def pack(f: DdpmFile) -> bytes:
    """Serializes a :class:`DdpmFile`; raises ``ValueError`` on any field out of range."""
    return b"".join(piece for _, piece in pack_fields(f))


def pack_fields(f: DdpmFile) -> list[tuple[str, bytes]]:
    """:func:`pack`'s bytes as ``(field, bytes)`` pieces in file order (the payloads named
    ``"segment payloads"`` and ``"x0 payload"``): what each framing field costs."""
    h = f.header
    if h.lossy_compact and (not h.compact or h.lossless):
        raise ValueError("version 4 holds lossy files in the compact framing (compact=True, lossless=False)")
    if h.keyed and (not h.compact or h.lossy_compact):
        raise ValueError("version 5 is a compact framing of its own (compact=True, lossy_compact=False)")
    if h.stop is not None:
        _int("stop", h.stop, 1, MAX_STEPS)
        if not (h.lossy_compact or (h.keyed and not h.lossless)):
            raise ValueError("a stop needs a lossy file in format version 4 or 5")
    fingerprint = bytes(h.fingerprint)
    fp_len = KEYED_FINGERPRINT_BYTES if h.keyed else COMPACT_FINGERPRINT_BYTES if h.compact else 4
    if len(fingerprint) != fp_len:
        raise ValueError(f"fingerprint must be {fp_len} bytes, got {len(fingerprint)}")
    height = _int("height", h.height, 1, MAX_DIM)
    width = _int("width", h.width, 1, MAX_DIM)
    if height * width > MAX_PIXELS:
        raise ValueError(f"height * width = {height * width} exceeds {MAX_PIXELS}")
    seed = _int("seed", h.seed, 0, MAX_SEED)
    if (h.schedule is None) == (h.profile is None):
        raise ValueError("exactly one of header.schedule and header.profile must be given")
    if h.compact:
        if not h.one_stream or h.x0_in_stream != bool(h.lossless) or f.x0 is not None:
            raise ValueError("version 3 files are one stream, with x0 in the stream exactly when lossless")
    elif h.x0_in_stream:
        if not (h.lossless and h.one_stream):
            raise ValueError("x0_in_stream needs a lossless one-stream file")
        if f.x0 is not None:
            raise ValueError("x0_in_stream: x0 is coded in the segment stream, not given as a payload")
    elif bool(h.lossless) != (f.x0 is not None):
        raise ValueError("header.lossless must be True exactly when x0 is given")
    if bool(h.lossless) != (f.pixel_crc is not None):
        raise ValueError("pixel_crc must be given exactly when the file is lossless")
    if len(f.segments) > MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS} segments, got {len(f.segments)}")

    flags = (FLAG_LOSSLESS if h.lossless else 0) | (
        FLAG_EXPLICIT_SCHEDULE if h.schedule is not None else 0
    ) | (FLAG_CODER_FIELDS if h.schedule is not None and h.schedule.has_coder_fields else 0)
    if h.lossy_compact:
        flags = (flags & ~FLAG_LOSSLESS) | (FLAG_STOP if h.stop is not None else 0)
    if h.keyed:
        implied = h.schedule is None and h.profile == IMPLIED_PROFILE
        flags = (FLAG_LOSSLESS if h.lossless else 0) | (0 if implied else FLAG5_SETTINGS) \
            | (FLAG5_SEED if seed else 0) | (FLAG5_STOP if h.stop is not None else 0)
    elif h.compact:
        flags |= FLAG_SEED if seed else 0
    else:
        flags |= FLAG_ONE_STREAM if h.one_stream else 0
    out: list[tuple[str, bytes]] = [("magic", MAGIC), ("version and flags", bytes([(h.version << 4) | flags])),
                                    ("fingerprint", fingerprint)]
    if h.compact:
        square = height == width
        out.append(("dimensions", varint_encode(((height - 1) << 1) | square)
                    + (b"" if square else varint_encode(width))))
    else:
        out.append(("dimensions", varint_encode(height) + varint_encode(width)))
    if h.schedule is not None:
        s = h.schedule
        num_steps = _int("schedule.num_steps", s.num_steps, 1, MAX_STEPS)
        sched = bytearray([_int("schedule.kind", s.kind, 0, 255)])
        sched += varint_encode(num_steps)
        sched += varint_encode(_int("schedule.t_end", s.t_end, 0, MAX_STEPS))
        sched.append(_int("schedule.chunk_bits", s.chunk_bits, 0, 255))
        sched.append(_int("schedule.log2_candidates", s.log2_candidates, 0, 255))
        sched.append(_int("schedule.variance_kind", s.variance_kind, 0, 255))
        if s.has_coder_fields or h.keyed:   # version 5: always (its settings byte 0 says: a schedule follows)
            sched.append(_int("schedule.selection", s.selection, 0, 255))
            sched.append(_int("schedule.rate_percent", s.rate_percent, 1, 255))
        out.append(("schedule", (b"\x00" if h.keyed else b"") + bytes(sched)))
    elif h.keyed:
        if h.profile != IMPLIED_PROFILE:
            out.append(("profile", bytes([_int("profile", h.profile, 1, 255)])))
    else:
        out.append(("profile", bytes([_int("profile", h.profile, 0, 255)])))
    if seed or not h.compact:
        out.append(("seed", varint_encode(seed)))
    if h.stop is not None:
        out.append(("stop", varint_encode(h.stop)))
    out.append(("segment count", varint_encode(len(f.segments))))
    table = bytearray()
    total_steps = 0
    implied_steps = h.keyed and (h.lossless or h.stop is not None)   # version 5: to the chain's end, or its stop
    for i, seg in enumerate(f.segments):
        implied = implied_steps and i == len(f.segments) - 1   # the last segment holds the rest of the chain
        steps = _int(f"segments[{i}].num_steps", seg.num_steps, 0 if implied else 1, MAX_STEPS)
        total_steps += steps
        if total_steps > MAX_STEPS:
            raise ValueError(f"segments hold more than {MAX_STEPS} steps in total")
        _int(f"len(segments[{i}].payload)", len(seg.payload), 0, MAX_PAYLOAD)
        if not implied:
            table += varint_encode(steps)
        if not ((h.lossy_compact or h.keyed) and len(f.segments) == 1):   # versions 4, 5: one segment's length is implied
            table += varint_encode(len(seg.payload))
    out.append(("segment table", bytes(table)))
    if f.x0 is not None:
        out.append(("x0 length", varint_encode(_int("len(x0)", len(f.x0), 0, MAX_PAYLOAD))))
    if h.lossless:
        pixel_crc = _int("pixel_crc", f.pixel_crc, 0, 0xFFFFFFFF)
    if not h.compact or len(f.segments) >= 2:
        out.append(("header crc8", bytes([crc8(b"".join(p for _, p in out))])))
    out.append(("segment payloads", b"".join(seg.payload for seg in f.segments)))
    if f.x0 is not None:
        out.append(("x0 payload", bytes(f.x0)))
    key = bytes(h.crc_key) if h.keyed else b""
    if h.compact and h.lossless:
        body = b"".join(p for _, p in out)
        out.append(("pixel and file crc32", zlib.crc32(body, zlib.crc32(key, pixel_crc)).to_bytes(4, "little")))
        return out
    if h.lossless:
        out.append(("pixel crc32", pixel_crc.to_bytes(4, "little")))
    out.append(("file crc16", crc16(key + b"".join(p for _, p in out)).to_bytes(2, "little")))
    return out


def framing_size(header: Header, table: list[tuple[int, int]]) -> int:
    """Bytes of everything but the payloads in a file with this header (``x0_in_stream`` if lossless)
    and segment table of ``(num_steps, payload length)`` entries."""
    f = DdpmFile(header=header, segments=[Segment(steps, b"") for steps, _ in table],
                 pixel_crc=0 if header.lossless else None)
    n = sum(len(p) for name, p in pack_fields(f) if name not in ("segment payloads", "x0 payload"))
    if (header.lossy_compact or header.keyed) and len(table) == 1:   # versions 4, 5, one segment: no length field
        return n
    return n - len(table) + sum(len(varint_encode(length)) for _, length in table)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


class _HeaderReader:
    def __init__(self, data: bytes, pos: int):
        self.data = data
        self.pos = pos
        self.fields: list[tuple[str, int]] = [("magic", pos)]

    def field(self, name: str, start: int) -> None:
        """Counts the bytes from ``start`` to here as framing field ``name`` (merged with the last
        one of the same name)."""
        if self.fields and self.fields[-1][0] == name:
            self.fields[-1] = (name, self.fields[-1][1] + self.pos - start)
        else:
            self.fields.append((name, self.pos - start))

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, name: str) -> bytes:
        if self.remaining() < n:
            raise TruncatedFileError(
                f"the file ends inside its header (while reading {name} at byte {self.pos}): "
                "it is truncated or corrupted"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def uv(self, name: str, lo: int, hi: int) -> int:
        start = self.pos
        value, self.pos = varint_decode(self.data, self.pos, name=name)
        if not lo <= value <= hi:
            raise CorruptFileError(
                f"{name} = {value} at byte {start} is outside [{lo}, {hi}]: the file is corrupted"
            )
        return value


def unpack(data: bytes) -> ParsedFile:
    """Parses a .ddpm file, or the prefix of one.

    A file cut anywhere after its header returns the segments whose payloads are
    complete, ``truncated=True`` (no checksum can be verified then; the x0 payload is
    returned if it and its pixel CRC are complete). A complete file must pass its CRC-16
    (version 3, lossless: its one CRC-32 covers the pixels too and is checked by
    :meth:`ParsedFile.pixels_match` once they are decoded).

    Raises:
        ForeignFileError: wrong magic.
        UnsupportedVersionError: unknown version or reserved flag bits set.
        TruncatedFileError: the file ends inside its header.
        CorruptFileError: a checksum fails, a value is out of range, or the file is
            longer than its header declares.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            raise TruncatedFileError(
                "the file is empty" if not data else "the file ends inside its magic number"
            )
        raise ForeignFileError("not a .ddpm file (wrong magic number)")
    if data[: len(MAGIC)] != MAGIC:
        raise ForeignFileError("not a .ddpm file (wrong magic number)")

    r = _HeaderReader(data, len(MAGIC))
    at = r.pos
    ver_flags = r.u8("version")
    r.field("version and flags", at)
    version, flags = ver_flags >> 4, ver_flags & 0x0F
    if version not in _VERSIONS:
        raise UnsupportedVersionError(
            f".ddpm format version {version} is not supported (this reader knows versions "
            f"{', '.join(map(str, _VERSIONS))})"
        )
    if flags & _RESERVED_FLAGS:
        raise UnsupportedVersionError(
            f"reserved flag bits set (0x{flags:x}): written by a newer format revision"
        )
    lossy_compact = version == LOSSY_VERSION
    keyed = version == KEYED_VERSION
    compact = version in (COMPACT_VERSION, LOSSY_VERSION, KEYED_VERSION)
    lossless = bool(flags & FLAG_LOSSLESS) and not lossy_compact
    if keyed and lossless and flags & FLAG5_STOP:
        raise CorruptFileError("a lossless file with a stop: the file is corrupted")
    one_stream = compact or bool(flags & FLAG_ONE_STREAM)
    x0_in_stream = version == 2 or (compact and lossless)
    if version == 2 and not (lossless and flags & FLAG_ONE_STREAM):
        raise CorruptFileError("a version-2 file must be lossless and one-stream: the file is corrupted")
    at = r.pos
    fingerprint = r.take(KEYED_FINGERPRINT_BYTES if keyed else COMPACT_FINGERPRINT_BYTES if compact else 4, "fingerprint")
    r.field("fingerprint", at)
    at = r.pos
    if compact:
        dims = r.uv("dimensions", 0, (MAX_DIM - 1) << 1 | 1)
        height = (dims >> 1) + 1
        width = height if dims & 1 else r.uv("width", 1, MAX_DIM)
    else:
        height = r.uv("height", 1, MAX_DIM)
        width = r.uv("width", 1, MAX_DIM)
    r.field("dimensions", at)
    if height * width > MAX_PIXELS:
        raise CorruptFileError(
            f"image size {height}x{width} exceeds {MAX_PIXELS} pixels: the file is corrupted"
        )
    schedule = profile = None
    at = r.pos
    explicit = bool(flags & FLAG_EXPLICIT_SCHEDULE)
    if keyed:   # a settings byte: a profile id, or 0 and an explicit schedule; none: IMPLIED_PROFILE
        settings_byte = r.u8("profile") if flags & FLAG5_SETTINGS else IMPLIED_PROFILE
        explicit = settings_byte == 0
        if not explicit:
            profile = settings_byte
            if flags & FLAG5_SETTINGS:
                r.field("profile", at)
    if explicit:
        kind = r.u8("schedule.kind")
        num_steps = r.uv("schedule.num_steps", 1, MAX_STEPS)
        t_end = r.uv("schedule.t_end", 0, MAX_STEPS)
        schedule = Schedule(
            kind=kind,
            num_steps=num_steps,
            t_end=t_end,
            chunk_bits=r.u8("schedule.chunk_bits"),
            log2_candidates=r.u8("schedule.log2_candidates"),
            variance_kind=r.u8("schedule.variance_kind"),
        )
        if keyed or flags & FLAG_CODER_FIELDS:
            schedule.selection = r.u8("schedule.selection")
            schedule.rate_percent = r.u8("schedule.rate_percent")
            if schedule.rate_percent == 0:
                raise CorruptFileError("schedule.rate_percent is 0: the file is corrupted")
        r.field("schedule", at)
    elif not keyed:
        if flags & FLAG_CODER_FIELDS:
            raise CorruptFileError("coder fields flagged without an explicit schedule: the file is corrupted")
        profile = r.u8("profile")
        r.field("profile", at)
    seed = 0
    if not compact or flags & (FLAG5_SEED if keyed else FLAG_SEED):
        at = r.pos
        seed = r.uv("seed", 0, MAX_SEED)
        r.field("seed", at)
    stop = None
    if (lossy_compact and flags & FLAG_STOP) or (keyed and flags & FLAG5_STOP):
        at = r.pos
        stop = r.uv("stop", 1, MAX_STEPS)
        r.field("stop", at)
    at = r.pos
    num_segments = r.uv("num_segments", 0, MAX_SEGMENTS)
    r.field("segment count", at)
    # Each table entry takes >= 2 bytes: refuse an impossible count before looping.
    if 2 * num_segments > r.remaining():
        raise TruncatedFileError(
            f"the file ends inside its header (it declares {num_segments} segments, "
            f"only {r.remaining()} bytes follow): it is truncated or corrupted"
        )
    table = []
    total_steps = 0
    at = r.pos
    implied_steps = keyed and (lossless or stop is not None)
    for i in range(num_segments):
        # version 5: the last segment's steps are implied (the rest of the chain, to the end or to the stop): 0
        steps = 0 if implied_steps and i == num_segments - 1 else r.uv(f"segments[{i}].num_steps", 1, MAX_STEPS)
        total_steps += steps
        if total_steps > MAX_STEPS:
            raise CorruptFileError(
                f"segments declare more than {MAX_STEPS} steps in total: the file is corrupted"
            )
        if (lossy_compact or keyed) and num_segments == 1:   # versions 4, 5: one segment, what precedes the CRC
            length = len(data) - r.pos - (_MERGED_CRC_BYTES if lossless else _TRAILER_BYTES)
            if length < 0:
                raise TruncatedFileError("the file ends inside its header: it is truncated or corrupted")
            table.append((steps, length))
            break
        table.append((steps, r.uv(f"segments[{i}].length", 0, MAX_PAYLOAD)))
    r.field("segment table", at)
    x0_length = None
    if lossless and not x0_in_stream:
        at = r.pos
        x0_length = r.uv("x0_length", 0, MAX_PAYLOAD)
        r.field("x0 length", at)
    header_end = r.pos
    if not compact or num_segments >= 2:
        if r.u8("header checksum") != crc8(data[:header_end]):
            raise CorruptFileError("header checksum mismatch: the file is corrupted")
        r.field("header crc8", header_end)

    body = r.pos
    merged = compact and lossless
    trailer = [("pixel and file crc32", _MERGED_CRC_BYTES)] if merged else \
        [("pixel crc32", _PIXEL_CRC_BYTES)] * lossless + [("file crc16", _TRAILER_BYTES)]
    expected = body + sum(length for _, length in table) + (x0_length or 0) + sum(n for _, n in trailer)
    if len(data) > expected:
        raise CorruptFileError(
            f"the file is {len(data)} bytes, its header declares {expected}: it is corrupted"
        )
    truncated = len(data) < expected
    merged_crc = keyed_crc16 = None
    if not truncated and merged:
        merged_crc = (data[:-_MERGED_CRC_BYTES], int.from_bytes(data[-_MERGED_CRC_BYTES:], "little"))
    elif not truncated and keyed:   # its key is the model's: checked by the decoder (keyed_crc_matches)
        keyed_crc16 = (data[:-_TRAILER_BYTES], int.from_bytes(data[-_TRAILER_BYTES:], "little"))
    elif not truncated:
        stored = int.from_bytes(data[-_TRAILER_BYTES:], "little")
        if stored != crc16(data[:-_TRAILER_BYTES]):
            implied = lossy_compact and num_segments == 1   # its size is not declared: a cut reads as damage
            raise CorruptFileError("checksum mismatch: the file is corrupted" + (" or truncated" if implied else ""))

    segments = []
    pos = body
    for steps, length in table:
        if pos + length > len(data):
            break
        segments.append(Segment(num_steps=steps, payload=data[pos : pos + length]))
        pos += length
    x0 = pixel_crc = None
    if lossless and not merged and len(segments) == num_segments:
        n = x0_length or 0
        end = pos + n + _PIXEL_CRC_BYTES
        if end <= len(data):
            x0 = None if x0_in_stream else data[pos : pos + n]
            pixel_crc = int.from_bytes(data[pos + n : end], "little")

    header = Header(
        fingerprint=fingerprint,
        height=height,
        width=width,
        seed=seed,
        schedule=schedule,
        profile=profile,
        lossless=lossless,
        one_stream=one_stream,
        x0_in_stream=x0_in_stream,
        compact=compact,
        lossy_compact=lossy_compact,
        stop=stop,
        keyed=keyed,
    )
    return ParsedFile(
        file=DdpmFile(header=header, segments=segments, x0=x0, pixel_crc=pixel_crc),
        truncated=truncated,
        complete_segments=len(segments),
        declared_segments=num_segments,
        version=version,
        fields=r.fields + trailer,
        verified=not truncated and not merged and not keyed,
        merged_crc=merged_crc,
        keyed_crc16=keyed_crc16,
    )


def to_compact(data: bytes) -> bytes:
    """A complete one-stream file (version 2, or a lossy one-stream version 1) rewritten in version 3:
    the same payloads, the compact framing. Raises :class:`DdpmFormatError` on anything else."""
    parsed = unpack(data)
    f, h = parsed.file, parsed.file.header
    if parsed.truncated or not h.one_stream or f.x0 is not None:
        raise CorruptFileError("only a complete one-stream file with x0 in the stream can be rewritten in version 3")
    header = Header(fingerprint=h.fingerprint[:COMPACT_FINGERPRINT_BYTES], height=h.height, width=h.width,
                    seed=h.seed, schedule=h.schedule, profile=h.profile, lossless=h.lossless, one_stream=True,
                    x0_in_stream=h.lossless, compact=True)
    if h.compact:
        return bytes(data)
    return pack(DdpmFile(header=header, segments=f.segments, pixel_crc=f.pixel_crc))
