"""``import ddpm_codec.pillow``: .ddpm files through Pillow's own API (open, load, save)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import ddpm_codec as dc
import ddpm_codec.pillow  # noqa: F401  (registers the format)


def test_open_a_path_a_file_object_and_bytes(example_file, tmp_path):
    image, data = example_file
    path = tmp_path / "img.ddpm"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert (im.format, im.size, im.mode) == ("DDPM", (32, 32), "RGB")
        assert np.array_equal(np.asarray(im), image) and im.info["lossless"]
    with open(path, "rb") as f, Image.open(f) as im:
        assert np.array_equal(np.asarray(im), image)
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), image)


def test_save_encodes_as_the_api_does(example_file, tmp_path):
    image, data = example_file
    Image.fromarray(image).save(tmp_path / "a.ddpm")   # the format from the extension
    assert (tmp_path / "a.ddpm").read_bytes() == data
    buf = io.BytesIO()
    Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="DDPM", steps=900)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert not im.info["lossless"] and im.size == (32, 32)
        lossy = np.asarray(im)
    assert np.array_equal(lossy, dc.decode(buf.getvalue()).image)
    # effort=2: the smaller of the seed-0 and seed-1 files
    seeds = [dc.encode(image, steps=900, seed=s).data for s in (0, 1)]
    tried = io.BytesIO()
    Image.fromarray(image).save(tried, format="DDPM", steps=900, effort=2)
    assert tried.getvalue() == min(seeds, key=len)


def test_save_refuses_what_it_cannot_code_exactly_and_leaves_no_file(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)   # transparent
    with pytest.raises(dc.Error, match="transparent"):
        Image.fromarray(rgba).save(tmp_path / "t.ddpm")
    assert not (tmp_path / "t.ddpm").exists()
    with pytest.raises(dc.InputError, match="unknown profile"):
        Image.fromarray(rgba[..., :3]).save(io.BytesIO(), format="DDPM", profile="fastest")


def test_other_formats_still_open_as_themselves(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG"
