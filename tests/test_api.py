"""The top-level API (``ddpm_codec.encode`` / ``decode``), its one exception root, and the shipped sample."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ddpm_codec as dc
from ddpm_codec.codec import DEFAULT_PROFILE, PROFILES, CodecSettings
from ddpm_codec.coding.container import DdpmFile, Header, Segment, pack
from ddpm_codec.data import DatasetError, example_image, load_images_or_sample, load_sample


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def test_decode_finds_the_model_from_the_file(example_file):
    image, data = example_file
    res = dc.decode(data)
    assert res.lossless and np.array_equal(res.image, image)


def test_an_unreachable_psnr_codes_the_image_exactly(example_file):
    image, data = example_file
    assert dc.encode(image, psnr=1000).data == data


def test_psnr_stops_at_the_first_step_that_reaches_it():
    image = example_image(3)
    res = dc.encode(image, psnr=30)
    assert not res.lossless and res.steps[-1].psnr >= 30 > res.steps[-2].psnr
    shown = dc.decode(res.data).image
    assert _psnr(shown, image) >= 30 and np.array_equal(shown, dc.decode(res.data, steps=res.steps[-1].reverse_time).image)


def test_profiles_by_name_or_id_and_bad_ones_refused_before_coding():
    assert dc.settings_for("x0-neighbours") == dc.settings_for(9) == dc.settings_for("9")
    with pytest.raises(dc.InputError, match="unknown profile 'fastest'"):
        dc.encode(example_image(0), profile="fastest")
    with pytest.raises(dc.InputError, match="8-bit"):
        dc.encode(np.zeros((8, 8, 3), np.float32))


def test_decode_names_a_fingerprint_nobody_has():
    data = pack(DdpmFile(header=Header(fingerprint=b"\x12\x34\x56\x78", height=32, width=32, seed=0, profile=9,
                                       lossless=True, one_stream=True, x0_in_stream=True),
                         segments=[Segment(48, b"\x00" * 100)], pixel_crc=1))
    with pytest.raises(dc.ModelNotFoundError, match="12345678"):
        dc.decode(data)


def test_registered_models_are_found_by_fingerprint(monkeypatch):
    from ddpm_codec.models import registry

    monkeypatch.setattr(registry, "_REGISTERED", [])
    model = dc.load_model()
    dc.register_model(model)
    assert registry.find_by_fingerprint(model.fingerprint[:8]) is model
    with pytest.raises(dc.ModelNotFoundError):
        dc.register_model("no/such/model.safetensors")


def test_every_refusal_is_an_error_and_keeps_its_builtin_base():
    from ddpm_codec.codec import DecodeError, profile_id
    from ddpm_codec.coding.container import CorruptFileError, DdpmFormatError
    from ddpm_codec.models.exact import BoundError
    from ddpm_codec.data import DatasetError
    from ddpm_codec.errors import ModelError, NotFoundError, ResultsError
    from ddpm_codec.imageio import ImageFormatError, OutputError
    from ddpm_codec.models.diffusers_import import DiffusersImportError

    for cls, base in [(DecodeError, ValueError), (DatasetError, ValueError), (ImageFormatError, ValueError),
                      (OutputError, OSError), (dc.InputError, ValueError), (ModelError, ValueError),
                      (ResultsError, ValueError), (DiffusersImportError, ValueError),
                      (NotFoundError, FileNotFoundError), (dc.ModelNotFoundError, FileNotFoundError),
                      (DdpmFormatError, ValueError), (CorruptFileError, ValueError), (BoundError, ValueError)]:
        assert issubclass(cls, dc.Error) and issubclass(cls, base), cls
    with pytest.raises(dc.InputError, match="unknown profile"):   # settings and profiles refuse with the root too
        profile_id("no-such-profile")
    with pytest.raises(dc.InputError, match="reuse_bits"):
        CodecSettings(reuse_bits=9)


def test_codec_settings_defaults_are_the_default_profile():
    assert CodecSettings() == PROFILES[DEFAULT_PROFILE] and CodecSettings().arithmetic.exact
    with pytest.raises(TypeError):
        CodecSettings(48)   # keyword-only: a positional field list cannot silently shift


def test_dir_lists_the_lazy_names_and_each_resolves():
    assert set(dc.__all__) <= set(dir(dc))
    for name in dc.__all__:
        assert getattr(dc, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        dc.no_such_name


def test_the_shipped_sample_is_the_cifar10_test_split_prefix(tmp_path):
    images = load_sample()
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(example_image(7), images[7])
    with pytest.raises(DatasetError, match="0-99"):
        example_image(100)
    with pytest.raises(DatasetError, match="test images only"):
        load_sample("train")
    got, note = load_images_or_sample("cifar10", root=tmp_path)   # nothing downloaded there
    assert np.array_equal(got, images) and "--download" in note and "--data" in note
    shared = "../shared/data/cifar10-subset.npz"   # the project's own copy, where it exists
    import os
    if os.path.exists(shared):
        assert np.array_equal(np.load(shared)["test_images"][:100], images)


def test_a_model_sharing_the_fingerprint_byte_is_told_apart_by_the_keyed_checksum(monkeypatch):
    """Format 5 names the model by one byte. A registered model whose coding fingerprint begins with the same
    byte as the shipped default's: ``decode(data)`` without a model must still pick the model that wrote the
    file (its lossy file's CRC-16 is keyed by the whole fingerprint), not the default that matches the byte."""
    import torch
    from dataclasses import replace

    from ddpm_codec import codec, simple
    from ddpm_codec.models import registry
    from ddpm_codec.models.checkpoint import fresh_model, with_stats
    from ddpm_codec.models.presets import get_preset

    shipped = dc.load_model()
    torch.manual_seed(0)
    tiny = with_stats(fresh_model(get_preset("tiny")), np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))
    tiny.fingerprint = shipped.fingerprint[:2] + tiny.fingerprint[2:]   # the default's byte (x_0 without context)
    settings = replace(PROFILES[14], num_steps=6, t_end=2, log2_candidates=8, chunk_bits=2, reuse_bits=0)
    image = example_image(1)
    res = codec.encode(image, tiny, settings=settings, max_reverse_time=900)
    assert res.data[3] == int(shipped.fingerprint[:2], 16) and not res.lossless
    with pytest.raises(dc.Error, match="checksum"):
        dc.decode(res.data, shipped)   # the byte matches; the keyed checksum does not
    monkeypatch.setattr(registry, "_REGISTERED", [])
    dc.register_model(tiny)
    assert simple.model_for(res.data) is tiny
    assert np.array_equal(dc.decode(res.data).image, codec.decode(res.data, tiny).image)
