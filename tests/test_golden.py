"""Golden files: a small .ddpm per profile, made once with the shipped model (tests/golden/make_golden.py),
that must keep decoding to the stored pixels. A failure means a change broke files that already exist.

Profiles 1-9 are float files: they decode where PyTorch's float kernels give the encoder's bits (this
project's x86 AVX2 CPUs, one thread; an AVX-512 CPU did too, docs/results/gpu-2026-11-26.md). On a
machine whose kernels differ they fail with a checksum error, which is what those files promise;
profile 10 (exact arithmetic) must decode everywhere (tests/test_portable.py)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_codec import codec

GOLDEN = Path(__file__).resolve().parent / "golden"
TABLE = json.loads((GOLDEN / "golden.json").read_text())
_spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)
PROFILE_IDS = sorted(int(k[1:]) for k in TABLE if k.startswith("p") and k[1:].isdigit())


@pytest.fixture(scope="module")
def shipped():
    from ddpm_codec.models.registry import resolve_model

    return resolve_model()


def test_every_profile_has_a_golden_file():
    assert PROFILE_IDS == sorted(codec.PROFILES)
    # the stored pixel hash is that of the synthetic card, regenerated here from integer arithmetic
    assert hashlib.sha256(make_golden.golden_image().tobytes()).hexdigest() == TABLE["pixels_sha256"]


@pytest.mark.parametrize("pid", PROFILE_IDS)
def test_golden_file_decodes_to_its_pixels(pid, shipped):
    data = (GOLDEN / f"p{pid}.ddpm").read_bytes()
    assert hashlib.sha256(data).hexdigest() == TABLE[f"p{pid}"]      # the stored file itself is intact
    parsed, settings = codec.read_header(data)
    assert parsed.file.header.profile == pid and settings == codec.PROFILES[pid]
    assert shipped.fingerprint.startswith(TABLE["model"])
    res = codec.decode(data, shipped)
    assert res.lossless and not res.truncated
    assert hashlib.sha256(res.image.tobytes()).hexdigest() == TABLE["pixels_sha256"]
    assert np.array_equal(res.image, make_golden.golden_image())
