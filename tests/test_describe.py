"""describe_file (what `ddpm-codec info` prints) on small files built byte by byte with container.pack."""
from __future__ import annotations

import pytest

from ddpm_codec import codec
from ddpm_codec.coding.container import DdpmFile, DdpmFormatError, Header, Schedule, Segment, pack
from ddpm_codec.codec.describe import describe_file

FP = b"\xde\xad\xbe\xef"


def v2_file() -> DdpmFile:
    """Lossless, one stream with x_0 at its end (format version 2), the default profile, 40x24 pixels."""
    return DdpmFile(header=Header(fingerprint=FP, height=24, width=40, seed=7, profile=codec.DEFAULT_PROFILE,
                                  lossless=True, one_stream=True, x0_in_stream=True),
                    segments=[Segment(3, b"\x01" * 64), Segment(10, b"\x02" * 170), Segment(35, b"\x03" * 900)],
                    pixel_crc=0x0BADF00D)


def test_sizes_dimensions_and_segments_of_a_version_2_file():
    data = pack(v2_file())
    lines = describe_file(data, "x.ddpm")
    dims = 24 * 40 * 3
    assert lines[0] == f"x.ddpm: {len(data)} bytes, {8 * len(data) / dims:.4f} bits/dim, 40x24 RGB"
    assert lines[1] == "model fingerprint deadbeef, seed 7, lossless"
    assert f"schedule (profile {codec.DEFAULT_PROFILE}): 48 Gaussian steps" in lines[2]
    assert "x0 by the model's learned context model" in lines[2]   # profile 11
    # everything that is not a segment payload is header and framing
    assert f"header and framing: {len(data) - (64 + 170 + 900)} bytes" in lines
    i = lines.index("segments (cut from one coded stream):")
    assert lines[i + 1:i + 4] == ["  segment 0: steps 1-3, 64 bytes",
                                  "  segment 1: steps 4-13, 170 bytes",
                                  "  segment 2: steps 14-48, 900 bytes (ending with x0)"]
    assert lines[i + 4] == ("  x0 (lossless): coded at the end of the last segment (format version 2), "
                            "pixel crc32 0badf00d")


def test_a_version_3_file():
    """The compact framing: 3-byte fingerprint, no seed field, one CRC-32 over the pixels and the file."""
    import zlib
    from dataclasses import replace

    f = v2_file()
    f = replace(f, header=replace(f.header, fingerprint=FP[:3], compact=True), pixel_crc=zlib.crc32(b"px"))
    data = pack(f)
    lines = describe_file(data, "c.ddpm")
    assert lines[1] == "model fingerprint deadbe, seed 7, lossless"
    assert f"header and framing: {len(data) - (64 + 170 + 900)} bytes" in lines
    want = zlib.crc32(data[:-4], zlib.crc32(b"px"))
    assert lines[-1] == (f"  x0 (lossless): coded at the end of the last segment (format version 3), one crc32 "
                         f"{want:08x} over the pixels and the file: checked when decoded")


def test_version_1_file_with_its_own_x0_payload_and_an_explicit_schedule():
    f = DdpmFile(header=Header(fingerprint=FP, height=2, width=3, seed=0, lossless=True,
                               schedule=Schedule(kind=1, num_steps=64, t_end=4, chunk_bits=10, log2_candidates=14,
                                                 variance_kind=2)),
                 segments=[Segment(64, b"\xaa" * 5)], x0=b"\x11\x22\x33", pixel_crc=0xDEADBEEF)
    data = pack(f)
    lines = describe_file(data, "y")
    assert lines[0].startswith(f"y: {len(data)} bytes, ") and lines[0].endswith("3x2 RGB")
    assert lines[2].startswith("schedule (explicit schedule): 64 Gaussian steps")
    assert "pfr coder: 10-bit chunks, 2^14 candidates" in lines[2]
    assert f"header and framing: {len(data) - 5 - 3} bytes" in lines
    assert "segments (one coded stream each):" in lines and "  segment 0: steps 1-64, 5 bytes" in lines
    assert lines[-1] == "  x0 (lossless): 3 bytes, pixel crc32 deadbeef"


def test_a_truncated_file_lists_only_its_complete_segments():
    data = pack(v2_file())
    cut = data[:len(data) - 2 - 4 - 900 + 10]   # inside the last segment's payload
    lines = describe_file(cut, "cut.ddpm")
    assert lines[1].endswith("lossless, TRUNCATED")
    assert "  segment 1: steps 4-13, 170 bytes" in lines
    assert not any(line.startswith(("  segment 2", "  x0")) for line in lines)
    assert lines[-1] == "  (truncated: 2 of 3 segments complete)"


def test_a_foreign_file_raises_the_format_error():
    with pytest.raises(DdpmFormatError):
        describe_file(b"\x89PNG\r\n\x1a\n" + bytes(40), "z.png")


def test_info_and_profiles_do_not_import_torch():
    """`ddpm-codec info` / `profiles` read only the header and the profile table: no torch, numba or scipy
    import (that made `info` take ~3.5 s; now ~0.3 s)."""
    import subprocess
    import sys
    from pathlib import Path

    golden = Path(__file__).resolve().parent / "golden" / "p10.ddpm"
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ddpm_codec.cli.main import main\n"
            f"r = CliRunner().invoke(main, ['info', {str(golden)!r}])\nassert r.exit_code == 0, r.output\n"
            "assert 'exact arithmetic' in r.output\n"
            "r = CliRunner().invoke(main, ['profiles'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in ('torch', 'numba', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
