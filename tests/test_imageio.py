"""Every input the encoder is given and every output path it writes (issue 17): each image kind is
coded exactly or refused with one line; sizes are checked before anything is allocated; outputs are
written whole or not at all. Library rules first, then the CLI (one-line errors, exit 1, no file)."""
from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ddpm_codec.cli.main import main
from ddpm_codec.codec.tiles import MAX_CODEC_PIXELS, check_dimensions, check_image
from ddpm_codec.coding import container
from ddpm_codec.imageio import (ImageFormatError, OutputError, check_writable, read_image, write_bytes_atomic,
                                write_image)

RNG = np.random.default_rng(17)
RGB = RNG.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
OPAQUE = np.full((20, 30), 255, np.uint8)


def _save(tmp_path, name, im: Image.Image, **kw) -> Path:
    p = tmp_path / name
    im.save(p, **kw)
    return p


def _refused(path, *words, **kw):
    with pytest.raises(ImageFormatError) as e:
        read_image(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg
    return msg


# ----------------------------------------------------------------------------- accepted: coded exactly
def test_rgb_as_is(tmp_path):
    arr, notes = read_image(_save(tmp_path, "a.png", Image.fromarray(RGB)))
    assert arr.dtype == np.uint8 and np.array_equal(arr, RGB) and notes == []


def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path):
    arr, notes = read_image(_save(tmp_path, "g.png", Image.fromarray(RGB[..., 0])))
    assert np.array_equal(arr, np.repeat(RGB[..., :1], 3, axis=2)) and "grayscale" in notes[0]
    bw = Image.fromarray(RGB[..., 0]).convert("1")
    arr, notes = read_image(_save(tmp_path, "b.png", bw))
    assert np.array_equal(arr[..., 0], np.asarray(bw).astype(np.uint8) * 255) and "bilevel" in notes[0]
    assert np.array_equal(arr[..., 0], arr[..., 2])


def test_palette_is_looked_up_exactly(tmp_path):
    pim = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    p = _save(tmp_path, "p.png", pim)
    with Image.open(p) as im:
        assert im.mode == "P"
        expected = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[np.asarray(im)]
    arr, notes = read_image(p)
    assert np.array_equal(arr, expected) and "palette" in notes[0]


def test_palette_with_an_unused_transparent_colour_is_exact(tmp_path):
    pim = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    unused = 255   # 64 colours: index 255 is in no pixel
    assert unused not in np.asarray(pim)
    p = _save(tmp_path, "pu.png", pim, transparency=unused)
    with Image.open(p) as im:
        assert "transparency" in im.info
        expected = np.asarray(im.convert("RGBA"))[..., :3]
    arr, notes = read_image(p)
    assert np.array_equal(arr, expected) and any("alpha channel dropped" in n for n in notes)


def test_opaque_alpha_is_dropped_with_a_note(tmp_path):
    arr, notes = read_image(_save(tmp_path, "o.png", Image.fromarray(np.dstack([RGB, OPAQUE]))))
    assert np.array_equal(arr, RGB) and notes == ["alpha channel dropped (RGBA: every pixel is opaque)"]
    la = Image.merge("LA", [Image.fromarray(RGB[..., 1]), Image.fromarray(OPAQUE)])
    arr, notes = read_image(_save(tmp_path, "la.png", la))
    assert np.array_equal(arr, np.repeat(RGB[..., 1:2], 3, axis=2)) and len(notes) == 2


def test_an_icc_profile_is_noted(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    arr, notes = read_image(_save(tmp_path, "icc.png", Image.fromarray(RGB), icc_profile=icc))
    assert np.array_equal(arr, RGB) and any("ICC" in n for n in notes)


def test_exif_orientation_is_noted(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    arr, notes = read_image(_save(tmp_path, "r.jpg", Image.fromarray(RGB), exif=exif, quality=95))
    assert arr.shape == (20, 30, 3) and notes == ["EXIF orientation 6 not applied: the pixels are coded as stored"]


# ----------------------------------------------------------------------------- refused, naming why
def test_transparency_is_refused(tmp_path):
    rgba = np.dstack([RGB, OPAQUE])
    rgba[3, 4, 3] = 0
    _refused(_save(tmp_path, "t.png", Image.fromarray(rgba)), "transparent", "1 of 600", "RGBA")
    alpha = OPAQUE.copy()
    alpha[0, 0] = 254
    la = Image.merge("LA", [Image.fromarray(RGB[..., 0]), Image.fromarray(alpha)])
    _refused(_save(tmp_path, "la.png", la), "transparent", "LA")
    pim = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    used = int(np.asarray(pim)[0, 0])
    _refused(_save(tmp_path, "pt.png", pim, transparency=used), "transparent", "P with a transparent colour")


def test_16_bit_images_are_refused_never_truncated(tmp_path):
    import imagecodecs

    deep = RGB.astype(np.uint16) * 257 + 1           # low bytes that truncation would lose
    cases = {
        "gray16.png": (Image.fromarray(deep[..., 0]), "I;16"),
        "rgb16.png": (imagecodecs.png_encode(deep), "RGB;16B"),
        "rgba16.png": (imagecodecs.png_encode(np.dstack([deep, np.full((20, 30), 65535, np.uint16)])), "RGBA;16B"),
        "la16.png": (imagecodecs.png_encode(np.dstack([deep[..., 0], np.full((20, 30), 65535, np.uint16)])), "16"),
        "rgb16.tif": (imagecodecs.tiff_encode(deep), "RGB;16"),
        "rgb16.ppm": (b"P6\n30 20\n65535\n" + deep.astype(">u2").tobytes(), "maxval 65535"),
        "gray16.pgm": (b"P5\n30 20\n65535\n" + deep[..., 0].astype(">u2").tobytes(), "16"),
    }
    for name, (src, word) in cases.items():
        p = tmp_path / name
        if isinstance(src, bytes):
            p.write_bytes(src)
        else:
            src.save(p)
        _refused(p, "bits", word)
    # Pillow itself opens the 16-bit RGB PNG as 8-bit 'RGB' (truncating): the rule must not trust the mode
    with Image.open(tmp_path / "rgb16.png") as im:
        assert im.mode == "RGB"


def test_32_bit_integer_and_float_images_are_refused(tmp_path):
    _refused(_save(tmp_path, "i.tif", Image.fromarray(RGB[..., 0].astype(np.int32) * 1000)), "32-bit integer")
    _refused(_save(tmp_path, "f.tif", Image.fromarray(RGB[..., 0].astype(np.float32) / 255)), "float", "(F)")


def test_cmyk_is_refused(tmp_path):
    _refused(_save(tmp_path, "c.jpg", Image.fromarray(RGB).convert("CMYK")), "CMYK", "no exact conversion")


@pytest.mark.parametrize("fmt,kw", [("gif", {}), ("png", {}), ("webp", {"lossless": True}), ("tif", {})])
def test_animated_and_multi_frame_files_are_refused(tmp_path, fmt, kw):
    from PIL import features

    if fmt == "webp" and not features.check("webp"):
        pytest.skip("no WebP support in this Pillow")
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB), Image.fromarray(RGB[::-1].copy())]
    p = tmp_path / f"anim.{fmt}"
    frames[0].save(p, save_all=True, append_images=frames[1:], **kw)
    _refused(p, "3 frames")


def test_files_that_are_not_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _refused(tmp_path / "empty.png", "empty (0 bytes)")
    (tmp_path / "notes.png").write_text("not an image\n")
    _refused(tmp_path / "notes.png", "not an image")
    good = _save(tmp_path, "whole.png", Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    _refused(tmp_path / "cut.png", "cannot be decoded")
    (tmp_path / "folder.png").mkdir()
    _refused(tmp_path / "folder.png", "is a folder")
    with pytest.raises(FileNotFoundError, match="no image at"):
        read_image(tmp_path / "missing.png")


def test_size_is_checked_before_the_pixels_are_read(tmp_path):
    # a PPM header declaring 5000 x 4000 pixels and holding none: refused on the declared size alone
    p = tmp_path / "big.ppm"
    p.write_bytes(b"P6\n5000 4000\n255\n")
    msg = _refused(p, "5000x4000", f"{MAX_CODEC_PIXELS:,}")
    assert "--max-pixels" in msg
    _refused(p, "cannot be decoded", max_pixels=5000 * 4000)   # past the limit: the (missing) pixels
    small = _save(tmp_path, "s.png", Image.fromarray(RGB))
    _refused(small, "30x20", max_pixels=599)
    assert read_image(small, max_pixels=600)[0].shape == (20, 30, 3)
    # a PNG whose header claims 30000 x 30000: refused fast, without allocating its pixels
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ImageFormatError) as e:
        read_image(tmp_path / "bomb.png")
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(e.value) and elapsed < 1.0 and peak < 50e6


def test_check_dimensions_and_check_image():
    check_dimensions(1024, 1024)
    with pytest.raises(ValueError, match="1025x1024 \\(1,049,600 pixels\\) exceeds the limit of 1,048,576 pixels"):
        check_dimensions(1024, 1025)
    with pytest.raises(ValueError, match="outside 1..65535"):
        check_dimensions(0, 5, limit=10 ** 12)
    with pytest.raises(ValueError, match="exceeds the limit of 100 pixels"):
        check_image(RGB, max_pixels=100)
    # refused on the shape before a gray/16-bit array is converted (broadcast: no memory behind it)
    huge = np.broadcast_to(np.uint8(0), (20000, 20000))
    with pytest.raises(ValueError, match="20000x20000"):
        check_image(huge)


# ----------------------------------------------------------------------------- writing: whole or nothing
def _leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".part"))


def test_write_image_round_trip_and_errors(tmp_path):
    p = write_image(tmp_path / "o.png", RGB)
    assert np.array_equal(np.asarray(Image.open(p)), RGB) and _leftovers(tmp_path) == []
    assert (p.stat().st_mode & 0o777) == (0o666 & ~_umask())
    with pytest.raises(OutputError, match="does not exist"):
        write_image(tmp_path / "no" / "o.png", RGB)
    assert not (tmp_path / "no").exists()
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_image(tmp_path / "d.png", RGB)
    with pytest.raises(ImageFormatError, match=r"\.xyz"):
        write_image(tmp_path / "o.xyz", RGB)
    assert not (tmp_path / "o.xyz").exists() and _leftovers(tmp_path) == []


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.ddpm"
    target.write_bytes(b"old")
    import ddpm_codec.imageio as imageio

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "fsync", no_space)
    with pytest.raises(OutputError, match="No space left on device") as e:
        write_bytes_atomic(target, b"new" * 1000)
    assert "\n" not in str(e.value)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(OutputError):
        write_bytes_atomic(tmp_path / "fresh.ddpm", b"data")
    assert not (tmp_path / "fresh.ddpm").exists() and _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            check_writable(ro / "x.ddpm")
        with pytest.raises(OutputError):
            write_bytes_atomic(ro / "x.ddpm", b"x")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- the CLI
NO_MODEL = ["--model", "/nonexistent/model.safetensors"]   # a refusal must come before the model is loaded


def _cli_error(args, *words, before_model=True):
    """Runs the CLI expecting one error line (after any ``note:`` lines) and exit status 1."""
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, args)
    lines = [ln for ln in r.output.strip().splitlines() if not ln.startswith("note: ")]
    assert r.exit_code == 1, r.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output, r.output
    assert not before_model or "nonexistent" not in r.output, r.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0], time.perf_counter() - t0


@pytest.mark.parametrize("kind", ["transparent", "rgb16", "gray16", "cmyk", "float", "animated", "empty", "text",
                                  "folder", "missing", "too-big"])
def test_cli_encode_refuses_before_loading_the_model(tmp_path, kind):
    import imagecodecs

    p = tmp_path / f"in-{kind}.png"
    word = {"transparent": "transparent", "rgb16": "16-bit", "gray16": "16-bit", "cmyk": "CMYK", "float": "float",
            "animated": "2 frames", "empty": "empty", "text": "not an image", "folder": "folder",
            "missing": "no image", "too-big": "exceeds the limit"}[kind]
    if kind == "transparent":
        Image.fromarray(np.dstack([RGB, np.zeros_like(OPAQUE)])).save(p)
    elif kind == "rgb16":
        p.write_bytes(imagecodecs.png_encode(RGB.astype(np.uint16) * 257))
    elif kind == "gray16":
        Image.fromarray(RGB[..., 0].astype(np.uint16) * 257).save(p)
    elif kind == "cmyk":
        p = p.with_suffix(".jpg")
        Image.fromarray(RGB).convert("CMYK").save(p)
    elif kind == "float":
        p = p.with_suffix(".tif")
        Image.fromarray(RGB[..., 0].astype(np.float32)).save(p)
    elif kind == "animated":
        p = p.with_suffix(".gif")
        Image.fromarray(RGB).save(p, save_all=True, append_images=[Image.fromarray(255 - RGB)])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello")
    elif kind == "folder":
        p.mkdir()
    elif kind == "too-big":
        Image.fromarray(RGB).save(p)
    extra = ["--max-pixels", "100"] if kind == "too-big" else []
    out = tmp_path / "out.ddpm"
    _, seconds = _cli_error(["encode", str(p), "-o", str(out), *NO_MODEL, *extra], word)
    assert not out.exists() and not p.with_suffix(".ddpm").exists() and _leftovers(tmp_path) == []
    assert seconds < 5


def test_cli_encode_refuses_unwritable_outputs_before_loading_the_model(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(RGB).save(src)
    _cli_error(["encode", str(src), "-o", str(tmp_path / "no" / "x.ddpm"), *NO_MODEL], "does not exist")
    (tmp_path / "d.ddpm").mkdir()
    _cli_error(["encode", str(src), "-o", str(tmp_path / "d.ddpm"), *NO_MODEL], "is a folder")
    assert not (tmp_path / "no").exists() and _leftovers(tmp_path) == []


def _forged_header_file(tmp_path, height=16384, width=16384) -> Path:
    data = container.pack(container.DdpmFile(
        header=container.Header(fingerprint=b"\x12\x34\x56\x78", height=height, width=width, seed=0, profile=9,
                                lossless=False, one_stream=True),
        segments=[container.Segment(1, b"\x00" * 8)]))
    p = tmp_path / "forged.ddpm"
    p.write_bytes(data)
    return p


def test_decode_refuses_a_forged_huge_header_before_allocating(tmp_path, monkeypatch):
    import torch

    from ddpm_codec import codec
    from ddpm_codec.codec import api
    from ddpm_codec.models.checkpoint import fresh_model
    from ddpm_codec.models.presets import get_preset

    p = _forged_header_file(tmp_path)
    out = tmp_path / "forged.png"
    # the CLI: one line, exit 1, no output, and before the model is loaded
    line, seconds = _cli_error(["decode", str(p), "-o", str(out), *NO_MODEL], "16384x16384", "268,435,456",
                               f"{MAX_CODEC_PIXELS:,}")
    assert seconds < 1.0 and not out.exists() and _leftovers(tmp_path) == []
    _cli_error(["decode", str(p), "-o", str(out), *NO_MODEL, "--max-pixels", str(1 << 27)], "134,217,728")
    # the library: DecodeError before the chain (and its tiles) exist, with no large allocation
    torch.manual_seed(0)
    model = fresh_model(get_preset("tiny"))

    def no_chain(*a, **k):
        raise AssertionError("the chain was built for a refused file")

    monkeypatch.setattr(api, "Chain", no_chain)
    data = p.read_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(codec.DecodeError, match="exceeds the limit") as e:
        codec.decode(data, model)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(e.value) and elapsed < 1.0 and peak < 50e6
    with pytest.raises(codec.DecodeError, match="100 pixels"):
        codec.decode(container.pack(container.DdpmFile(
            header=container.Header(fingerprint=b"\0" * 4, height=32, width=32, seed=0, profile=9, one_stream=True),
            segments=[container.Segment(1, b"\0" * 8)])), model, max_pixels=100)


def test_cli_decode_bad_inputs_and_outputs(tmp_path):
    out = tmp_path / "o.png"
    _cli_error(["decode", str(tmp_path / "missing.ddpm"), "-o", str(out), *NO_MODEL], "no file at")
    (tmp_path / "dir.ddpm").mkdir()
    _cli_error(["decode", str(tmp_path / "dir.ddpm"), "-o", str(out), *NO_MODEL], "is a folder")
    (tmp_path / "empty.ddpm").write_bytes(b"")
    _cli_error(["decode", str(tmp_path / "empty.ddpm"), "-o", str(out), *NO_MODEL], "empty")
    (tmp_path / "text.ddpm").write_text("hello there")
    _cli_error(["decode", str(tmp_path / "text.ddpm"), "-o", str(out), *NO_MODEL], "not a .ddpm file")
    small = _forged_header_file(tmp_path, 32, 32)
    _cli_error(["decode", str(small), "-o", str(tmp_path / "no" / "o.png"), *NO_MODEL], "does not exist")
    _cli_error(["decode", str(small), "-o", str(tmp_path / "o.xyz"), *NO_MODEL], ".xyz")
    (tmp_path / "frames").write_text("a file")
    _cli_error(["decode", str(small), "-o", str(out), "--progressive", str(tmp_path / "frames"), *NO_MODEL],
               "not a folder")
    # the progressive folder is created for the frames, and removed again when nothing was decoded
    _cli_error(["decode", str(small), "-o", str(out), "--progressive", str(tmp_path / "new"), *NO_MODEL],
               "nonexistent", before_model=False)
    assert not (tmp_path / "new").exists()
    assert not out.exists() and not (tmp_path / "o.xyz").exists() and _leftovers(tmp_path) == []


def test_cli_round_trip_of_a_grayscale_image_and_a_failed_write(tmp_path, monkeypatch):
    import torch

    from ddpm_codec.models.checkpoint import fresh_model, save_model, with_stats
    from ddpm_codec.models.presets import get_preset

    torch.manual_seed(0)
    m = with_stats(fresh_model(get_preset("tiny")), np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))
    mpath = save_model(tmp_path / "m.safetensors", m.net, m.config)
    gray = RGB[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    cheap = ["--model", str(mpath), "--coding-steps", "6", "--t-end", "2", "--chunk-bits", "2", "--candidates", "8",
             "--reuse-bits", "0", "-q"]
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "g.png"), "-o", str(tmp_path / "g.ddpm"), *cheap])
    assert r.exit_code == 0, r.output
    assert "note: grayscale image coded as RGB (3 equal channels)" in r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "g.ddpm"), "-o", str(tmp_path / "back.png"),
                                  "--model", str(mpath), "--progressive", str(tmp_path / "frames")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), np.repeat(gray[:, :, None], 3, axis=2))
    assert len(os.listdir(tmp_path / "frames")) == 6 and _leftovers(tmp_path) == []   # one per coding step
    # the output cannot be written at the end (disk full): one line, exit 1, the old file kept
    import ddpm_codec.imageio as imageio

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "fsync", no_space)
    (tmp_path / "keep.ddpm").write_bytes(b"old")
    _cli_error(["encode", str(tmp_path / "g.png"), "-o", str(tmp_path / "keep.ddpm"), *cheap],
               "No space left on device")
    assert (tmp_path / "keep.ddpm").read_bytes() == b"old" and _leftovers(tmp_path) == []
    _cli_error(["decode", str(tmp_path / "g.ddpm"), "-o", str(tmp_path / "new.png"), "--model", str(mpath)],
               "No space left on device")
    assert not (tmp_path / "new.png").exists() and _leftovers(tmp_path) == []
