"""The CLI passes its options on to the library (the logic itself is tested where it lives)."""
from __future__ import annotations

import numpy as np
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

    def fake(prefix_hex, *, device="cpu", accept=None):
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


def _sample_pngs(folder, indices=(1, 2)):
    from ddpm_codec.data import example_image
    from ddpm_codec.imageio import write_image

    folder.mkdir()
    for i in indices:
        write_image(folder / f"t{i}.png", example_image(i))
    return folder


def test_encode_many_images_into_a_folder_with_one_summary(tmp_path):
    import ddpm_codec as dc
    from ddpm_codec.data import example_image

    pics = _sample_pngs(tmp_path / "pics")
    r = CliRunner().invoke(main, ["encode", str(pics), "-o", str(tmp_path / "out"), "--steps", "500"])
    assert r.exit_code == 0, r.output
    assert r.output.count("| lossy, to ") == 2 and "wrote 2 files" in r.output
    for i in (1, 2):
        res = dc.decode((tmp_path / "out" / f"t{i}.ddpm").read_bytes())
        assert res.image.shape == example_image(i).shape and res.reverse_time <= 500


def test_encode_many_refuses_before_writing_anything(tmp_path):
    pics = _sample_pngs(tmp_path / "pics")
    (pics / "broken.png").write_bytes(b"not a png")
    r = CliRunner().invoke(main, ["encode", str(pics), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "broken.png" in r.output and not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["encode", str(pics / "t1.png"), str(pics / "t2.png"), "-o", str(tmp_path / "x.ddpm")])
    assert r.exit_code == 1 and "names a folder" in r.output and not (tmp_path / "x.ddpm").exists()
    r = CliRunner().invoke(main, ["encode"])
    assert r.exit_code == 2


def test_example_writes_a_shipped_test_image(tmp_path):
    from PIL import Image

    from ddpm_codec.data import example_image

    r = CliRunner().invoke(main, ["example", "-o", str(tmp_path / "e.png"), "--index", "42"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.png")), example_image(42))
    r = CliRunner().invoke(main, ["example", "-o", str(tmp_path / "f.png"), "--index", "100"])
    assert r.exit_code == 1 and "0-99" in r.output and not (tmp_path / "f.png").exists()


def test_info_bits_prints_the_library_accounting(tmp_path, monkeypatch):
    """``info --bits`` decodes with the model it is given and prints describe.bit_lines of the result."""
    from ddpm_codec import codec
    from ddpm_codec.codec.api import BitAccounting, DecodeResult, StepBits
    from ddpm_codec.codec.describe import bit_lines
    from ddpm_codec.models import registry

    path, data = _file(tmp_path)
    acc = BitAccounting(framing=[("magic", 2), ("rest", 25)], steps=[StepBits(1000, 1, 7, 0.32, 28.0)],
                        x0_bits=700.0, payload_bytes=100, num_dims=3072)
    seen = {}

    def fake_decode(d, model, **kw):
        seen.update(data=d, model=model, **kw)
        return DecodeResult(image=np.zeros((32, 32, 3), np.uint8), lossless=True, reverse_time=1000,
                            truncated=False, steps_decoded=48, accounting=acc)

    monkeypatch.setattr(codec, "decode", fake_decode)
    monkeypatch.setattr(registry, "find_by_fingerprint", lambda prefix, device="cpu", accept=None: f"model {prefix}")
    r = CliRunner().invoke(main, ["info", str(path), "--bits", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == describe_file(data, str(path)) + bit_lines(acc)
    assert seen == {"data": data, "model": "model 12345678", "threads": 2, "account": True}
    # 27 framing bytes + 100 payload bytes; 800 - 0.32 - 28 - 700 bits of the payload are padding
    assert "1016 bits in all" in r.output and "71.7 bits" in r.output.splitlines()[-1]
