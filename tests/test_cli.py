"""The CLI passes its options on to the library (the logic itself is tested where it lives)."""
from __future__ import annotations

import torch
from click.testing import CliRunner

from ddpm_codec.cli.main import main
from ddpm_codec.coding.container import DdpmFile, Header, Segment, pack
from ddpm_codec.codec.describe import describe_file
from ddpm_codec.errors import ModelNotFoundError


def _file(tmp_path):
    data = pack(DdpmFile(header=Header(fingerprint=b"\x12\x34\x56\x78", height=32, width=32, seed=0, profile=9,
                                       lossless=True, one_stream=True, x0_in_stream=True),
                         segments=[Segment(48, b"\x00" * 100)], pixel_crc=1))
    path = tmp_path / "f.ddpm"
    path.write_bytes(data)
    return path, data


def test_decode_without_model_looks_the_model_up_on_the_chosen_device(tmp_path, monkeypatch):
    from ddpm_codec.models import registry

    path, _ = _file(tmp_path)
    seen = {}

    def fake(prefix_hex, *, device="cpu"):
        seen.update(prefix=prefix_hex, device=device)
        raise ModelNotFoundError("looked up")

    monkeypatch.setattr(registry, "find_by_fingerprint", fake)
    r = CliRunner().invoke(main, ["decode", str(path), "--device", "cuda:3"])
    assert r.exit_code == 1 and "looked up" in r.output
    assert seen == {"prefix": "12345678", "device": torch.device("cuda", 3)}


def test_info_prints_the_library_description(tmp_path):
    path, data = _file(tmp_path)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == describe_file(data, str(path))


def test_decode_reconstruct_accepts_only_the_library_modes(tmp_path):
    path, _ = _file(tmp_path)
    r = CliRunner().invoke(main, ["decode", str(path), "--reconstruct", "sharpen"])
    assert r.exit_code == 2 and "'sharpen'" in r.output
    assert all(m in r.output for m in ("denoise", "ancestral", "flow"))
