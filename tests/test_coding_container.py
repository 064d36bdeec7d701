"""Tests for ddpm_codec.coding.container: the .ddpm byte format (docs/FORMAT.md)."""

from __future__ import annotations

import random
import zlib
from dataclasses import replace
import time

import pytest

from ddpm_codec.coding.container import (
    MAGIC,
    MAX_PIXELS,
    CorruptFileError,
    DdpmFile,
    DdpmFormatError,
    IMPLIED_PROFILE,
    KEYED_VERSION,
    ForeignFileError,
    Header,
    Schedule,
    Segment,
    TruncatedFileError,
    UnsupportedVersionError,
    crc8,
    crc16,
    framing_size,
    pack,
    unpack,
    varint_decode,
    to_compact,
    varint_encode,
)

# ---------------------------------------------------------------------------------------
# Independent reference CRCs (bit by bit, straight from the definitions)
# ---------------------------------------------------------------------------------------


def ref_crc8(data: bytes) -> int:  # CRC-8/SMBUS
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def ref_crc32(data: bytes, value: int = 0) -> int:  # CRC-32 (ISO-HDLC), continued from a finished value
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def ref_crc16(data: bytes) -> int:  # CRC-16/CCITT-FALSE
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc_check_values():
    assert crc8(b"123456789") == ref_crc8(b"123456789") == 0xF4
    assert crc16(b"123456789") == ref_crc16(b"123456789") == 0x29B1
    data = random.Random(0).randbytes(300)
    assert crc8(data) == ref_crc8(data) and crc16(data) == ref_crc16(data)


# ---------------------------------------------------------------------------------------
# Fixed files
# ---------------------------------------------------------------------------------------

TINY = DdpmFile(
    header=Header(
        fingerprint=b"\x01\x02\x03\x04", height=2, width=3, seed=300, profile=1, lossless=True
    ),
    segments=[Segment(1, b"\xaa"), Segment(200, b"\xbb\xcc")],
    x0=b"\x11\x22\x33",
    pixel_crc=0xDEADBEEF,
)
# Derived by hand from docs/FORMAT.md (the worked example there):
TINY_HEADER = bytes.fromhex(
    "8ddd"  # magic
    "11"  # version 1, flags: lossless, profile schedule
    "01020304"  # fingerprint
    "02" "03"  # height 2, width 3
    "01"  # profile 1
    "ac02"  # seed 300 = 0b10_0101100 -> 0x2c|0x80, 0x02
    "02"  # 2 segments
    "0101"  # segment 0: 1 step, 1 byte
    "c80102"  # segment 1: 200 steps (0x48|0x80, 0x01), 2 bytes
    "03"  # x0 length 3
)
TINY_BYTES = bytes.fromhex(
    "8ddd11010203040203" "01ac020201" "01c8010203" "0c"  # header + crc8
    "aa" "bbcc" "112233" "efbeadde"  # payloads, x0, pixel crc (LE)
    "1934"  # crc16 (LE)
)

EXPLICIT = DdpmFile(
    header=Header(
        fingerprint=b"\xca\xfe\xba\xbe",
        height=1,
        width=1,
        seed=0,
        schedule=Schedule(
            kind=1, num_steps=1000, t_end=0, chunk_bits=16, log2_candidates=12, variance_kind=2
        ),
    ),
    segments=[],
)
EXPLICIT_BYTES = bytes.fromhex(
    "8ddd" "12" "cafebabe" "01" "01"  # magic, v1 + explicit schedule, fingerprint, 1x1
    "01" "e807" "00" "10" "0c" "02"  # kind 1, T=1000, t_end 0, 16, 12, 2
    "00" "00" "71"  # seed 0, 0 segments, crc8
    "119a"  # crc16
)


def test_pinned_bytes_tiny_lossless_file():
    # The checksums of the pinned bytes agree with the reference implementations.
    assert TINY_BYTES.startswith(TINY_HEADER)
    assert TINY_BYTES[len(TINY_HEADER)] == ref_crc8(TINY_HEADER)
    assert int.from_bytes(TINY_BYTES[-2:], "little") == ref_crc16(TINY_BYTES[:-2])
    assert pack(TINY) == TINY_BYTES
    parsed = unpack(TINY_BYTES)
    assert parsed.file == TINY
    assert not parsed.truncated and parsed.complete_segments == parsed.declared_segments == 2


CODER = DdpmFile(  # EXPLICIT's header with another schedule, coder fields and one stream
    header=replace(
        EXPLICIT.header,
        schedule=Schedule(kind=0, num_steps=64, t_end=4, chunk_bits=4, log2_candidates=14, variance_kind=1,
                          selection=2, rate_percent=110),
        one_stream=True,
    ),
    segments=[],
)
CODER_BYTES = bytes.fromhex(
    "8ddd" "1e" "cafebabe" "01" "01"  # magic, v1 + explicit schedule + coder fields + one stream
    "00" "40" "04" "04" "0e" "01"  # kind 0, T=64, t_end 4, 4 path bits, 2^14, variance 1
    "02" "6e"  # selection 2 (trellis), rate 110 %
    "00" "00"  # seed 0, 0 segments
)


def test_pinned_bytes_coder_fields_and_one_stream():
    data = pack(CODER)
    assert data[: len(CODER_BYTES)] == CODER_BYTES
    assert data[len(CODER_BYTES)] == ref_crc8(CODER_BYTES) and len(data) == len(CODER_BYTES) + 3
    assert unpack(data).file == CODER
    # default coder fields are not written; a profile cannot carry them
    plain = replace(CODER.header, schedule=replace(CODER.header.schedule, selection=0, rate_percent=100))
    assert pack(DdpmFile(plain))[2] == 0x1A
    forged = bytearray(TINY_HEADER)
    forged[2] |= 0x04
    with pytest.raises(CorruptFileError, match="coder fields"):
        unpack(with_crc8(bytes(forged)) + TINY_BYTES[len(TINY_HEADER) + 1 :])


def test_pinned_bytes_explicit_schedule():
    assert EXPLICIT_BYTES[18] == ref_crc8(EXPLICIT_BYTES[:18])
    assert int.from_bytes(EXPLICIT_BYTES[-2:], "little") == ref_crc16(EXPLICIT_BYTES[:-2])
    assert pack(EXPLICIT) == EXPLICIT_BYTES
    assert unpack(EXPLICIT_BYTES).file == EXPLICIT


def test_header_cost_of_a_small_lossy_file():
    f = DdpmFile(Header(bytes(4), 32, 32, seed=0, profile=0), [Segment(30, bytes(50))])
    assert len(pack(f)) - 50 == 15 + 2  # header (incl. 2-byte segment table) + crc16


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------


def random_file(rng: random.Random) -> DdpmFile:
    height = rng.choice([1, 2, 32, 127, 128, 16383, 16384, 65535])
    width = rng.randint(1, max(1, min(65535, MAX_PIXELS // height)))
    if rng.random() < 0.5:
        num_steps = rng.choice([1, 127, 128, 1000, 4000, 1 << 20])
        schedule = Schedule(
            kind=rng.randint(0, 255),
            num_steps=num_steps,
            t_end=rng.randint(0, num_steps),
            chunk_bits=rng.randint(0, 255),
            log2_candidates=rng.randint(0, 255),
            variance_kind=rng.randint(0, 255),
        )
        profile = None
    else:
        schedule, profile = None, rng.randint(0, 255)
    if schedule is not None and rng.random() < 0.5:
        schedule.selection, schedule.rate_percent = rng.randint(0, 255), rng.randint(1, 255)
    lossless = rng.random() < 0.5
    segments = [
        Segment(rng.randint(1, 300), rng.randbytes(rng.choice([0, 1, 5, 127, 128, 700])))
        for _ in range(rng.randint(0, 6))
    ]
    header = Header(
        fingerprint=rng.randbytes(4),
        height=height,
        width=width,
        seed=rng.choice([0, 1, 127, 128, rng.getrandbits(32), (1 << 64) - 1]),
        schedule=schedule,
        profile=profile,
        lossless=lossless,
        one_stream=rng.random() < 0.5,
    )
    if lossless and header.one_stream and rng.random() < 0.5:  # version 2: x0 inside the stream
        return DdpmFile(replace(header, x0_in_stream=True), segments, None, rng.getrandbits(32))
    if lossless:
        return DdpmFile(header, segments, rng.randbytes(rng.randint(0, 400)), rng.getrandbits(32))
    return DdpmFile(header, segments)


def test_round_trip_random_files():
    rng = random.Random(1)
    for _ in range(300):
        f = random_file(rng)
        data = pack(f)
        parsed = unpack(data)
        assert parsed.file == f
        assert not parsed.truncated
        assert parsed.complete_segments == parsed.declared_segments == len(f.segments)


# ---------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------


def header_length(f: DdpmFile, data: bytes) -> int:
    body = sum(len(s.payload) for s in f.segments) + 2
    if f.x0 is not None:
        body += len(f.x0) + 4
    return len(data) - body


@pytest.mark.parametrize("seed", range(4))
def test_every_prefix_is_truncated_or_rejected(seed):
    rng = random.Random(100 + seed)
    f = TINY if seed == 0 else random_file(rng)
    data = pack(f)
    head = header_length(f, data)
    ends = []  # byte offset where each segment's payload ends
    pos = head
    for s in f.segments:
        pos += len(s.payload)
        ends.append(pos)
    for n in range(len(data)):
        prefix = data[:n]
        if n < head:
            with pytest.raises(TruncatedFileError):
                unpack(prefix)
            continue
        parsed = unpack(prefix)
        assert parsed.truncated
        k = sum(1 for e in ends if e <= n)
        assert parsed.complete_segments == k and parsed.file.segments == f.segments[:k]
        assert parsed.declared_segments == len(f.segments)
        assert parsed.file.header == f.header
        if parsed.file.x0 is not None:  # x0 and its pixel CRC are complete
            assert (parsed.file.x0, parsed.file.pixel_crc) == (f.x0, f.pixel_crc)
            assert n >= len(data) - 2


def test_truncation_messages():
    with pytest.raises(TruncatedFileError, match="empty"):
        unpack(b"")
    with pytest.raises(TruncatedFileError, match="header"):
        unpack(TINY_BYTES[:9])


# ---------------------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------------------


ANY_KEY = bytes(range(8))


def _passes_keyed(parsed, pixels: bytes, key: bytes) -> bool:
    """Whether a complete version-5 file passes what its decoder checks with ``key``: the CRC-16 of a lossy
    file, the CRC-32 with the decoded pixels of a lossless one."""
    if parsed.file.header.lossless:
        return parsed.pixels_match(pixels, key)
    return parsed.keyed_crc_matches(key)


def test_every_single_byte_change_of_a_tiny_file_is_caught():
    # Exhaustive: every position, every new value. A change inside the payloads or
    # checksums is always caught (CRC-16 catches every burst of <= 16 bits); a change in
    # the header is caught by the CRC-8 unless it also moves the header's end, in which
    # case the CRC-8 is read from another byte and matches with probability 1/256. Such a
    # file can at worst pass as *truncated* (unverified), never as a complete file. A version nibble
    # changed to 5 reads as a version-5 file, whose checksums are keyed by the model's fingerprint and
    # checked by the decoder: they must fail there.
    head = header_length(TINY, TINY_BYTES)
    missed = 0
    for pos in range(len(TINY_BYTES)):
        for x in range(1, 256):
            bad = bytearray(TINY_BYTES)
            bad[pos] ^= x
            try:
                parsed = unpack(bytes(bad))
            except DdpmFormatError:
                continue
            if parsed.version == KEYED_VERSION and not parsed.truncated:
                assert pos < head and not parsed.verified and not _passes_keyed(parsed, PIXELS, ANY_KEY)
                continue
            assert parsed.truncated and pos < head
            missed += 1
    assert missed <= 0.01 * 255 * head


def test_random_corruption_of_a_larger_file_raises():
    rng = random.Random(2)
    f = DdpmFile(
        Header(b"abcd", 64, 64, 99, schedule=Schedule(0, 1000, 0, 16, 12, 1), lossless=True),
        [Segment(50, rng.randbytes(200)) for _ in range(5)],
        rng.randbytes(2000),
        12345,
    )
    data = pack(f)
    head = header_length(f, data)
    for _ in range(1500):
        bad = bytearray(data)
        pos = rng.randrange(head, len(data))  # body and checksums: always detected
        bad[pos] ^= rng.randint(1, 255)
        with pytest.raises(CorruptFileError, match="checksum mismatch"):
            unpack(bytes(bad))


def test_longer_file_is_corrupt():
    with pytest.raises(CorruptFileError):
        unpack(TINY_BYTES + b"\x00")


# ---------------------------------------------------------------------------------------
# Hostile and foreign input
# ---------------------------------------------------------------------------------------


def test_random_garbage_is_rejected_quickly():
    rng = random.Random(3)
    start = time.perf_counter()
    for n in range(0, 400):
        for prefix in (b"", MAGIC, MAGIC + b"\x10", MAGIC + b"\x13"):
            data = prefix + rng.randbytes(n)
            with pytest.raises(DdpmFormatError):
                unpack(data)
    assert time.perf_counter() - start < 2.0


def with_crc8(header: bytes) -> bytes:
    return header + bytes([ref_crc8(header)])


def test_hostile_huge_segment_fails_fast():
    header = MAGIC + b"\x10" + bytes(4) + b"\x20\x20\x00\x00" + b"\x01" + b"\x01"
    hostile = with_crc8(header + varint_encode(1 << 60)) + b"\x00" * 10
    start = time.perf_counter()
    with pytest.raises(CorruptFileError, match="segments\\[0\\].length"):
        unpack(hostile)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    "body, error, match",
    [
        # num_segments = 2**60
        (b"\x20\x20\x00\x00" + varint_encode(1 << 60), CorruptFileError, "num_segments"),
        # 1000 segments declared, 4 bytes follow
        (
            b"\x20\x20\x00\x00" + varint_encode(1000) + b"\x01\x01\x01\x01",
            TruncatedFileError,
            "1000 segments",
        ),
        # height 0, height 70000, 20000 x 20000
        (b"\x00\x20\x00\x00\x00", CorruptFileError, "height"),
        (varint_encode(70000) + b"\x20\x00\x00\x00", CorruptFileError, "height"),
        (varint_encode(20000) * 2 + b"\x00\x00\x00", CorruptFileError, "exceeds"),
        # an 11-byte varint, a non-canonical one, one past 2**64
        (b"\x20\x20\x00" + b"\xff" * 11, CorruptFileError, "longer than 10"),
        (b"\x20\x20\x00\x80\x00\x00", CorruptFileError, "canonical"),
        (b"\x20\x20\x00" + b"\xff" * 9 + b"\x02\x00", CorruptFileError, "64 bits"),
        # 2**64 - 1 steps in one segment
        (b"\x20\x20\x00\x00\x01" + b"\xff" * 9 + b"\x01\x00", CorruptFileError, "num_steps"),
        # zero steps
        (b"\x20\x20\x00\x00\x01\x00\x00", CorruptFileError, "num_steps"),
    ],
)
def test_hostile_headers(body, error, match):
    data = with_crc8(MAGIC + b"\x10" + bytes(4) + body) + b"\x00\x00"
    with pytest.raises(error, match=match):
        unpack(data)


def test_explicit_schedule_values_are_checked():
    base = MAGIC + b"\x12" + bytes(4) + b"\x01\x01" + b"\x00"
    with pytest.raises(CorruptFileError, match="t_end"):  # t_end 2**21 > MAX_STEPS
        unpack(with_crc8(base + b"\x0a\x80\x80\x80\x01\x00\x00\x00" + b"\x00\x00") + b"\x00\x00")
    with pytest.raises(CorruptFileError, match="schedule.num_steps"):
        unpack(with_crc8(base + b"\x00\x00\x00\x00\x00" + b"\x00\x00") + b"\x00\x00")


def test_foreign_and_unsupported():
    with pytest.raises(ForeignFileError, match="not a .ddpm file"):
        unpack(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ForeignFileError):
        unpack(b"x")
    with pytest.raises(UnsupportedVersionError, match="version 6"):
        unpack(MAGIC + b"\x61" + TINY_BYTES[3:])
    with pytest.raises(TypeError):
        unpack("8ddd")
    for cls in (ForeignFileError, UnsupportedVersionError, CorruptFileError, TruncatedFileError):
        assert issubclass(cls, DdpmFormatError) and issubclass(cls, ValueError)


def test_header_checksum_mismatch_message():
    bad = bytearray(TINY_BYTES)
    bad[3] ^= 0x01  # fingerprint byte
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        unpack(bytes(bad))


# ---------------------------------------------------------------------------------------
# Helpers and pack validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001"),
     ((1 << 64) - 1, "ffffffffffffffffff01")],
)
def test_varint_known_encodings(value, encoded):
    assert varint_encode(value).hex() == encoded
    assert varint_decode(bytes.fromhex(encoded) + b"\xee") == (value, len(encoded) // 2)


def test_varint_rejects_out_of_range():
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            varint_encode(bad)
    with pytest.raises(TruncatedFileError):
        varint_decode(b"\x80\x80")


def _good_header(**changes) -> Header:
    fields = dict(fingerprint=bytes(4), height=8, width=8, seed=0, profile=0)
    fields.update(changes)
    return Header(**fields)


@pytest.mark.parametrize(
    "f, match",
    [
        (DdpmFile(_good_header(fingerprint=b"abc")), "fingerprint"),
        (DdpmFile(_good_header(height=0)), "height"),
        (DdpmFile(_good_header(width=65536)), "width"),
        (DdpmFile(_good_header(height=65535, width=65535)), "exceeds"),
        (DdpmFile(_good_header(seed=-1)), "seed"),
        (DdpmFile(_good_header(seed=1.5)), "seed"),
        (DdpmFile(_good_header(profile=None)), "exactly one"),
        (DdpmFile(_good_header(schedule=Schedule(0, 10, 0, 1, 1, 1))), "exactly one"),
        (DdpmFile(_good_header(profile=256)), "profile"),
        (DdpmFile(_good_header(profile=None, schedule=Schedule(0, 10, 2**21, 1, 1, 1))), "t_end"),
        (DdpmFile(_good_header(profile=None, schedule=Schedule(0, 0, 0, 1, 1, 1))), "num_steps"),
        (DdpmFile(_good_header(profile=None, schedule=Schedule(256, 10, 0, 1, 1, 1))), "kind"),
        (DdpmFile(_good_header(), [Segment(0, b"")]), "num_steps"),
        (DdpmFile(_good_header(lossless=True)), "lossless"),
        (DdpmFile(_good_header(), x0=b"", pixel_crc=0), "lossless"),
        (DdpmFile(_good_header(lossless=True), x0=b""), "pixel_crc"),
        (DdpmFile(_good_header(lossless=True), x0=b"", pixel_crc=1 << 32), "pixel_crc"),
    ],
)
def test_pack_rejects_bad_fields(f, match):
    with pytest.raises(ValueError, match=match):
        pack(f)


# Version 2: TINY as a one-stream lossless file with x_0 inside the segment stream (no x0_length,
# no x0 payload; the pixel CRC follows the last segment). Bytes derived by hand from
# docs/FORMAT.md; the checksums come from the reference implementations above.
TINY_V2 = DdpmFile(
    header=replace(TINY.header, one_stream=True, x0_in_stream=True),
    segments=[Segment(1, b"\xaa"), Segment(200, b"\xbb\xcc")],
    pixel_crc=0xDEADBEEF,
)
TINY_V2_HEADER = bytes.fromhex(
    "8ddd"  # magic
    "29"  # version 2, flags: lossless (0x1) + one stream (0x8)
    "01020304" "02" "03" "01" "ac02"  # fingerprint, 2x3, profile 1, seed 300
    "02" "0101" "c80102"  # 2 segments: (1 step, 1 byte), (200 steps, 2 bytes); no x0_length
)


def test_pinned_bytes_version_2():
    body = TINY_V2_HEADER + bytes([ref_crc8(TINY_V2_HEADER)]) + bytes.fromhex("aa" "bbcc" "efbeadde")
    want = body + ref_crc16(body).to_bytes(2, "little")
    assert pack(TINY_V2) == want
    assert len(want) == len(TINY_BYTES) - 4  # x0_length byte and the 3-byte x0 payload gone
    parsed = unpack(want)
    assert parsed.file == TINY_V2 and not parsed.truncated
    # cut inside the pixel CRC: every segment, but no checksum; cut inside segment 1: segment 0
    part = unpack(want[:-3])
    assert part.truncated and part.complete_segments == 2 and part.file.pixel_crc is None
    part = unpack(want[: len(TINY_V2_HEADER) + 3])
    assert part.truncated and part.complete_segments == 1
    # one more byte is corrupt, a changed payload byte fails the CRC-16
    with pytest.raises(CorruptFileError, match="declares"):
        unpack(want + b"\x00")
    bad = bytearray(want)
    bad[len(TINY_V2_HEADER) + 2] ^= 0x40
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        unpack(bytes(bad))


def test_version_2_must_be_lossless_one_stream():
    for flags in (0x1, 0x8, 0x0):  # lossless without one stream, one stream without lossless, neither
        hdr = bytearray(TINY_V2_HEADER)
        hdr[2] = 0x20 | flags
        data = bytes(hdr) + bytes([ref_crc8(bytes(hdr))]) + b"\xaa\xbb\xcc" + b"\x00" * 6
        with pytest.raises(CorruptFileError, match="version-2"):
            unpack(data)
    with pytest.raises(ValueError, match="x0_in_stream"):
        pack(replace(TINY_V2, header=replace(TINY_V2.header, one_stream=False)))
    with pytest.raises(ValueError, match="x0_in_stream"):
        pack(replace(TINY_V2, x0=b"\x11"))
    with pytest.raises(ValueError, match="pixel_crc"):
        pack(replace(TINY_V2, pixel_crc=None))


# ---------------------------------------------------------------------------------------
# Version 3: compact framing (docs/FORMAT.md, issue 28)
# ---------------------------------------------------------------------------------------

PIXELS = bytes(range(18))  # the 2x3 image's raw RGB bytes (any bytes: only their CRC-32 is framed)
TINY_V3 = DdpmFile(
    header=Header(fingerprint=b"\x01\x02\x03", height=2, width=3, seed=300, profile=1, lossless=True,
                  one_stream=True, x0_in_stream=True, compact=True),
    segments=[Segment(1, b"\xaa"), Segment(200, b"\xbb\xcc")],
    pixel_crc=zlib.crc32(PIXELS),
)
TINY_V3_HEADER = bytes.fromhex(
    "8ddd"  # magic
    "39"  # version 3 (0x30) + lossless (0x01) + a seed follows (0x08)
    "010203"  # 3-byte fingerprint
    "02" "03"  # dimensions ((2 - 1) << 1 | not square) = 2, then width 3
    "01"  # profile 1
    "ac02"  # seed 300
    "02" "0101" "c80102"  # 2 segments: (1 step, 1 byte), (200 steps, 2 bytes)
)


def test_pinned_bytes_version_3_lossless():
    body = TINY_V3_HEADER + bytes([ref_crc8(TINY_V3_HEADER)]) + bytes.fromhex("aa" "bbcc")
    want = body + zlib.crc32(PIXELS + body).to_bytes(4, "little")  # ONE CRC-32: pixels, then every byte
    assert pack(TINY_V3) == want
    v2 = pack(replace(TINY_V3, header=replace(TINY_V3.header, fingerprint=b"\x01\x02\x03\x04", compact=False)))
    assert len(want) == len(v2) - 3  # fingerprint byte, and the CRC-16 beside the pixel CRC-32
    parsed = unpack(want)
    assert parsed.version == 3 and not parsed.truncated and not parsed.verified
    assert parsed.file.header == TINY_V3.header and parsed.file.segments == TINY_V3.segments
    assert parsed.pixels_present and parsed.pixels_match(PIXELS) and not parsed.pixels_match(PIXELS[::-1])
    # every single changed byte after the magic and version is caught: by the parser or by the pixel check
    for i in range(3, len(want)):
        bad = bytearray(want)
        bad[i] ^= 0x5A
        try:
            got = unpack(bytes(bad))
        except DdpmFormatError:
            continue
        assert not (got.pixels_present and got.pixels_match(PIXELS)), i
    # a cut inside the CRC: both segments, no pixel check; inside segment 1: segment 0 only
    part = unpack(want[:-1])
    assert part.truncated and part.complete_segments == 2 and not part.pixels_present
    assert unpack(want[: len(TINY_V3_HEADER) + 2]).complete_segments == 1


def test_pinned_bytes_version_3_lossy_one_segment():
    f = DdpmFile(header=Header(fingerprint=b"\xab\xcd\xef", height=32, width=32, seed=0, profile=12,
                               one_stream=True, compact=True), segments=[Segment(40, b"\x55" * 60)])
    head = bytes.fromhex("8ddd" "30" "abcdef" "3f" "0c" "01" "283c")  # 32x32: (31 << 1 | square) = 0x3f
    body = head + b"\x55" * 60  # no seed (0), one segment: no header CRC-8
    want = body + ref_crc16(body).to_bytes(2, "little")
    assert pack(f) == want and len(want) - 60 == 13  # against 17 bytes in versions 1 and 2
    parsed = unpack(want)
    assert parsed.file == f and parsed.verified and parsed.framing_bytes() == 13
    assert [n for n, _ in parsed.fields] == ["magic", "version and flags", "fingerprint", "dimensions", "profile",
                                            "segment count", "segment table", "file crc16"]
    bad = bytearray(want)
    bad[4] ^= 1
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        unpack(bytes(bad))


def test_version_3_round_trips_and_field_sizes():
    rng = random.Random(3)
    for _ in range(200):
        h, w = rng.choice([(32, 32), (1, 1), (7, 300), (512, 768), (65535, 1)])
        lossless = rng.random() < 0.5
        segs = [Segment(rng.randint(1, 300), rng.randbytes(rng.randint(0, 200))) for _ in range(rng.randint(0, 4))]
        f = DdpmFile(header=Header(fingerprint=rng.randbytes(3), height=h, width=w, seed=rng.choice([0, 1, 2**64 - 1]),
                                   profile=rng.randint(0, 255), lossless=lossless, one_stream=True,
                                   x0_in_stream=lossless, compact=True),
                     segments=segs, pixel_crc=rng.getrandbits(32) if lossless else None)
        data = pack(f)
        parsed = unpack(data)
        assert parsed.file.header == f.header and parsed.file.segments == segs
        assert parsed.framing_bytes() + sum(len(s.payload) for s in segs) == len(data)
        assert dict(parsed.fields)["dimensions"] == len(varint_encode((h - 1) << 1 | (h == w))) + (
            0 if h == w else len(varint_encode(w)))


def test_version_3_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="3 bytes"):
        pack(replace(TINY_V3, header=replace(TINY_V3.header, fingerprint=b"\x01\x02\x03\x04")))
    with pytest.raises(ValueError, match="version 3"):
        pack(replace(TINY_V3, header=replace(TINY_V3.header, x0_in_stream=False)))


def test_to_compact_rewrites_a_version_2_file():
    v2 = replace(TINY_V3, header=replace(TINY_V3.header, fingerprint=b"\x01\x02\x03\x04", compact=False))
    assert to_compact(pack(v2)) == pack(TINY_V3)
    with pytest.raises(CorruptFileError, match="version 3"):
        to_compact(TINY_BYTES)   # version 1 with an x0 payload of its own


# ---------------------------------------------------------------------------------------
# Version 4: lossy files in the compact framing, with an optional exact stop (docs/FORMAT.md, issue 28)
# ---------------------------------------------------------------------------------------


def test_pinned_bytes_version_4_lossy():
    """Version 3's lossy framing; flag bit 0 says a ``stop`` uv follows the seed; one segment: no length."""
    f = DdpmFile(header=Header(fingerprint=b"\xab\xcd\xef", height=32, width=32, seed=0, profile=13,
                               one_stream=True, compact=True, lossy_compact=True), segments=[Segment(27, b"\x55" * 60)])
    head = bytes.fromhex("8ddd" "40" "abcdef" "3f" "0d" "01" "1b")  # version 4, no flags; 1 segment of 27 steps
    body = head + b"\x55" * 60
    want = body + ref_crc16(body).to_bytes(2, "little")
    assert pack(f) == want and len(want) - 60 == 12   # version 3: 13 (the segment's length)
    parsed = unpack(want)
    assert parsed.version == 4 and parsed.file == f and parsed.verified and parsed.framing_bytes() == 12
    assert [n for n, _ in parsed.fields] == ["magic", "version and flags", "fingerprint", "dimensions", "profile",
                                            "segment count", "segment table", "file crc16"]
    # with a stop (t = 101, one byte) and a seed: flag bits 0 and 3
    g = replace(f, header=replace(f.header, seed=5, stop=101))
    head = bytes.fromhex("8ddd" "49" "abcdef" "3f" "0d" "05" "65" "01" "1b")
    body = head + b"\x55" * 60
    assert pack(g) == body + ref_crc16(body).to_bytes(2, "little")
    parsed = unpack(pack(g))
    assert parsed.file.header == g.header and dict(parsed.fields)["stop"] == 1
    assert dict(unpack(pack(replace(g, header=replace(g.header, stop=800)))).fields)["stop"] == 2
    # two segments: both lengths and the header CRC-8, as in version 3 (a cut in segment 1 decodes segment 0)
    two = replace(f, segments=[Segment(20, b"\x11" * 70), Segment(7, b"\x22" * 30)])
    data = pack(two)
    assert unpack(data).file == two
    part = unpack(data[:-5])
    assert part.truncated and part.complete_segments == 1
    # one segment: a cut or a damaged byte is a checksum error (the segment's size is not declared)
    for bad in (want[:-1], want[:20] + bytes([want[20] ^ 1]) + want[21:]):
        with pytest.raises(CorruptFileError, match="checksum mismatch"):
            unpack(bad)
    with pytest.raises(TruncatedFileError):
        unpack(want[:10])
    # only lossy compact files; a stop only in version 4
    with pytest.raises(ValueError, match="version 4"):
        pack(replace(f, header=replace(f.header, lossless=True, x0_in_stream=True)))
    with pytest.raises(ValueError, match="stop"):
        pack(replace(f, header=replace(f.header, lossy_compact=False, stop=101)))
    with pytest.raises(ValueError, match="stop"):
        pack(replace(f, header=replace(f.header, stop=0)))
    zero = head[:9] + b"\x00" + head[10:]
    body0 = zero + b"\x55" * 60
    with pytest.raises(CorruptFileError, match="stop"):
        unpack(body0 + ref_crc16(body0).to_bytes(2, "little"))


def test_version_4_round_trips_and_framing_size():
    rng = random.Random(4)
    for _ in range(200):
        h, w = rng.choice([(32, 32), (1, 1), (7, 300), (512, 768)])
        segs = [Segment(rng.randint(1, 300), rng.randbytes(rng.randint(0, 200))) for _ in range(rng.randint(0, 4))]
        stop = rng.choice([None, 1, 101, 999, 2**20])
        f = DdpmFile(header=Header(fingerprint=rng.randbytes(3), height=h, width=w, seed=rng.choice([0, 7, 2**64 - 1]),
                                   profile=rng.randint(0, 255), one_stream=True, compact=True, lossy_compact=True,
                                   stop=stop), segments=segs)
        data = pack(f)
        parsed = unpack(data)
        assert parsed.file.header == f.header and parsed.file.segments == segs and parsed.version == 4
        assert parsed.framing_bytes() + sum(len(s.payload) for s in segs) == len(data)
        assert framing_size(f.header, [(s.num_steps, len(s.payload)) for s in segs]) == parsed.framing_bytes()


# ---------------------------------------------------------------------------------------
# Version 5: one fingerprint byte, checksums keyed by the whole fingerprint, profile 13 implied
# (docs/FORMAT.md, issue 28)
# ---------------------------------------------------------------------------------------

KEY = bytes.fromhex("05120844aabbccdd")   # the first 8 bytes of a coding fingerprint


def test_pinned_bytes_version_5_lossy():
    """Version 4's lossy file in 4 bytes less: fingerprint 1 byte, no profile byte for profile 13 (flag bit 1
    clear), with a stop (flag bit 3) no step count for the last segment (the rest of the chain, to the stop),
    bit 2 seed; the CRC-16 covers the key before the file's bytes."""
    assert KEYED_VERSION == 5 and IMPLIED_PROFILE == 13
    f = DdpmFile(header=Header(fingerprint=b"\x05", height=32, width=32, seed=0, profile=13, one_stream=True,
                               compact=True, keyed=True, stop=101, crc_key=KEY), segments=[Segment(27, b"\x55" * 60)])
    head = bytes.fromhex("8ddd" "58" "05" "3f" "65" "01")  # version 5, a stop at t = 101; 1 segment
    body = head + b"\x55" * 60
    want = body + ref_crc16(KEY + body).to_bytes(2, "little")
    assert pack(f) == want and len(want) - 60 == 9   # version 4: 13 with its stop
    parsed = unpack(want)
    assert parsed.version == 5 and parsed.file.header == f.header and not parsed.verified
    assert parsed.file.segments == [Segment(0, b"\x55" * 60)] and parsed.framing_bytes() == 9   # 0: the rest
    assert [n for n, _ in parsed.fields] == ["magic", "version and flags", "fingerprint", "dimensions", "stop",
                                            "segment count", "segment table", "file crc16"]
    # the checksum is the decoder's to check, with its model's key: any other key fails it
    assert parsed.keyed_crc_matches(KEY)
    assert not parsed.keyed_crc_matches(KEY[:7] + b"\xde") and not parsed.keyed_crc_matches(b"")
    # another profile: flag bit 1 and its byte; a seed: flag bit 2 and a varint after the settings
    g = replace(f, header=replace(f.header, profile=14, seed=5))
    head = bytes.fromhex("8ddd" "5e" "05" "3f" "0e" "05" "65" "01")
    body = head + b"\x55" * 60
    assert pack(g) == body + ref_crc16(KEY + body).to_bytes(2, "little")
    assert unpack(pack(g)).file.header == g.header
    # a damaged byte or a cut: the keyed checksum fails (the one segment's size is not declared)
    for bad in (want[:-1], want[:20] + bytes([want[20] ^ 1]) + want[21:]):
        try:
            assert not unpack(bad).keyed_crc_matches(KEY)
        except CorruptFileError:
            pass
    with pytest.raises(ValueError, match="version 5"):
        pack(replace(f, header=replace(f.header, compact=False)))
    with pytest.raises(ValueError, match="profile"):
        pack(replace(f, header=replace(f.header, profile=0)))   # byte 0 says an explicit schedule follows
    # without a stop (a cut at one of the schedule's times) the last segment gives its step count
    nostop = replace(f, header=replace(f.header, stop=None))
    body = bytes.fromhex("8ddd" "50" "05" "3f" "01" "1b") + b"\x55" * 60
    assert pack(nostop) == body + ref_crc16(KEY + body).to_bytes(2, "little")
    assert unpack(pack(nostop)).file.segments == nostop.segments
    # two segments: the first with its steps and length, the last with its length only (and the CRC-8)
    two = replace(f, segments=[Segment(20, b"\x11" * 70), Segment(0, b"\x22" * 30)])
    data = pack(two)
    head2 = bytes.fromhex("8ddd" "58" "05" "3f" "65" "02" "14" "46" "1e")   # 2 segments: 20 steps, 70 bytes; 30 bytes
    assert data[:11] == head2 + bytes([ref_crc8(head2)])
    assert unpack(data).file.segments == two.segments
    part = unpack(data[:-5])
    assert part.truncated and part.file.segments == [Segment(20, b"\x11" * 70)]


def test_pinned_bytes_version_5_lossless():
    """Three segments (lengths and the header CRC-8 as in version 3), and ONE CRC-32 of the pixels, then
    the key, then every byte before it."""
    segs = [Segment(28, b"\x11" * 69), Segment(10, b"\x22" * 196), Segment(10, b"\x33" * 1059)]
    f = DdpmFile(header=Header(fingerprint=b"\x05", height=32, width=32, seed=0, profile=13, lossless=True,
                               one_stream=True, x0_in_stream=True, compact=True, keyed=True, crc_key=KEY),
                 segments=segs, pixel_crc=zlib.crc32(PIXELS))
    head = bytes.fromhex("8ddd" "51" "05" "3f" "03" "1c45" "0ac401" "a308")   # the last: its length only
    head += bytes([ref_crc8(head)])
    body = head + b"".join(s.payload for s in segs)
    crc = ref_crc32(body, ref_crc32(KEY, ref_crc32(PIXELS)))
    want = body + crc.to_bytes(4, "little")
    assert pack(f) == want and len(want) - 69 - 196 - 1059 == 18   # version 3: 22
    parsed = unpack(want)
    assert parsed.version == 5 and parsed.file.header == f.header
    assert parsed.file.segments == segs[:2] + [Segment(0, segs[2].payload)]   # 0: the rest of the chain
    assert parsed.pixels_present and parsed.pixels_match(PIXELS, KEY)
    assert not parsed.pixels_match(PIXELS, KEY[::-1]) and not parsed.pixels_match(PIXELS[::-1], KEY)
    # a cut inside the last segment: the first two segments, truncated (a progressive prefix)
    part = unpack(want[:-100])
    assert part.truncated and part.complete_segments == 2
    # one segment: its length is implied, lossless too
    one = replace(f, segments=[Segment(48, b"\x44" * 300)])
    data = pack(one)
    assert data[5:7] == b"\x01\x44" and unpack(data).file.segments == [Segment(0, b"\x44" * 300)]
    assert unpack(data).pixels_match(PIXELS, KEY)
    # a stop is for lossy files only
    with pytest.raises(ValueError, match="stop"):
        pack(replace(f, header=replace(f.header, stop=101)))
    bad = bytearray(want)
    bad[2] |= 0x8
    with pytest.raises(CorruptFileError, match="stop"):
        unpack(bytes(bad))


def test_version_5_explicit_schedule_has_its_coder_fields():
    s = Schedule(kind=2, num_steps=48, t_end=1, chunk_bits=4, log2_candidates=14, variance_kind=0x19)  # 0 / 100
    f = DdpmFile(header=Header(fingerprint=b"\x05", height=32, width=32, seed=0, schedule=s, one_stream=True,
                               compact=True, keyed=True, stop=5, crc_key=KEY), segments=[Segment(3, b"\x01\x02")])
    data = pack(f)
    assert data[:15] == bytes.fromhex("8ddd" "5a" "05" "3f" "00" "02" "30" "01" "04" "0e" "19" "00" "64" "05")
    assert unpack(data).file.header.schedule == s


def test_version_5_round_trips_and_framing_size():
    rng = random.Random(5)
    for _ in range(300):
        h, w = rng.choice([(32, 32), (1, 1), (7, 300), (512, 768)])
        lossless = rng.random() < 0.5
        segs = [Segment(rng.randint(1, 300), rng.randbytes(rng.randint(0, 200))) for _ in range(rng.randint(0, 4))]
        sched = None if rng.random() < 0.8 else Schedule(
            kind=rng.randint(0, 2), num_steps=rng.randint(1, 1000), t_end=rng.randint(0, 5), chunk_bits=4,
            log2_candidates=14, variance_kind=rng.randint(0, 255), selection=rng.randint(0, 255),
            rate_percent=rng.randint(1, 255))
        key = rng.randbytes(8)
        f = DdpmFile(header=Header(fingerprint=rng.randbytes(1), height=h, width=w, seed=rng.choice([0, 7, 2**64 - 1]),
                                   schedule=sched, profile=None if sched else rng.choice([13, 12, 1, 255]),
                                   lossless=lossless, one_stream=True, x0_in_stream=lossless, compact=True,
                                   keyed=True, stop=None if lossless else rng.choice([None, 1, 101, 2**20]),
                                   crc_key=key), segments=segs, pixel_crc=zlib.crc32(PIXELS) if lossless else None)
        data = pack(f)
        parsed = unpack(data)
        want = segs[:-1] + [Segment(0, segs[-1].payload)] if segs else []   # the last one's steps: the rest
        if not lossless and f.header.stop is None:
            want = segs   # a lossy file without a stop gives every segment's steps
        assert parsed.file.header == f.header and parsed.file.segments == want and parsed.version == 5
        assert parsed.framing_bytes() + sum(len(s.payload) for s in segs) == len(data)
        assert framing_size(f.header, [(s.num_steps, len(s.payload)) for s in segs]) == parsed.framing_bytes()
        assert _passes_keyed(parsed, PIXELS, key) and not _passes_keyed(parsed, PIXELS, bytes(8) if key != bytes(8) else b"x")
