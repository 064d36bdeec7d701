"""Golden files: a small .ddpm per profile, made once with the shipped model (tests/golden/make_golden.py),
that must keep decoding to the stored pixels. A failure means a change broke files that already exist.

Profiles 1-9 and 11 are float files: they decode where PyTorch's float kernels give the encoder's bits (this
project's AMD EPYC machines, one thread; docs/results/gpu-2026-11-26.md). On a machine whose kernels differ
(this project's Intel Xeon machines, 2026-12-06) they fail with a checksum error, which is what those files
promise, and the test is skipped there;
profiles 10, 12, 13 and 14 (exact arithmetic) must decode everywhere (tests/test_portable.py). Profiles 11-13 code
x_0 with the shipped x_0 context model (models/weights/x0-context/). The files of profiles 13 and 14 are in format
version 3 (the default on 2026-12-07 before version 5), the others in version 2 (the default when they were made);
p13-format5*.ddpm are profile 13 in version 5 (the default since), lossless and --steps 900."""
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
    # files whose x_0 the shipped context model codes name the model with it (one fingerprint for both)
    want = shipped.context_fingerprint if settings.x0_context else shipped.fingerprint
    fp = parsed.file.header.fingerprint.hex()   # 4 bytes; 3 in format version 3 (profile 13's golden file)
    assert fp == want[:6 if parsed.version == 3 else 8]
    if settings.x0_context:   # `decode` without --model finds the shipped model by either fingerprint
        from ddpm_codec.models.registry import find_by_fingerprint

        assert find_by_fingerprint(fp).fingerprint == shipped.fingerprint
    if settings.arithmetic.exact:   # portable: must decode on every machine
        res = codec.decode(data, shipped)
    else:   # float: decodes where the encoder's float kernels run; elsewhere a checksum error, never a wrong image
        try:
            res = codec.decode(data, shipped)
        except codec.DecodeError as exc:
            assert "checksum" in str(exc)
            pytest.skip(f"float profile {pid}: this machine's float kernels differ from the encoder's, and the "
                        "file fails its checksum, as float files do (issue 25: exact is the default)")
    assert res.lossless and not res.truncated
    assert hashlib.sha256(res.image.tobytes()).hexdigest() == TABLE["pixels_sha256"]
    assert np.array_equal(res.image, make_golden.golden_image())


def test_format_3_golden_file_decodes_to_its_pixels(shipped):
    """Format version 3 (compact framing): the default profile's golden file (1757 bytes; p12.ddpm 1763)."""
    data = (GOLDEN / "p12-format3.ddpm").read_bytes()
    assert hashlib.sha256(data).hexdigest() == TABLE["p12-format3"]
    parsed, settings = codec.read_header(data)
    assert parsed.version == 3 and parsed.file.header.profile == 12 and settings == codec.PROFILES[12]
    assert parsed.file.header.fingerprint.hex() == shipped.context_fingerprint[:6]
    res = codec.decode(data, shipped)
    assert res.lossless and np.array_equal(res.image, make_golden.golden_image())


def test_format_5_golden_files_decode_to_their_pixels(shipped):
    """Format version 5 (the default since 2026-12-07): profile 13 lossless (1752 bytes; p13.ddpm in version 3:
    1756) and ``--steps 900`` (a stop at t = 101; 49 bytes), each decoding on any machine (exact arithmetic)."""
    data = (GOLDEN / "p13-format5.ddpm").read_bytes()
    assert hashlib.sha256(data).hexdigest() == TABLE["p13-format5"]
    parsed, settings = codec.read_header(data)
    assert parsed.version == 5 and parsed.file.header.profile == 13 and settings == codec.PROFILES[13]
    assert dict(parsed.fields).get("profile") is None   # profile 13 is implied
    assert parsed.file.header.fingerprint.hex() == shipped.context_fingerprint[:2]
    assert len(data) == len((GOLDEN / "p13.ddpm").read_bytes()) - 4
    res = codec.decode(data, shipped)
    assert res.lossless and np.array_equal(res.image, make_golden.golden_image())
    lossy = (GOLDEN / "p13-format5-900.ddpm").read_bytes()
    assert hashlib.sha256(lossy).hexdigest() == TABLE["p13-format5-900"]
    parsed = codec.read_header(lossy)[0]
    assert parsed.version == 5 and parsed.file.header.stop == 101 and not parsed.file.header.lossless
    res = codec.decode(lossy, shipped)
    assert res.reverse_time == 900 and not res.lossless
    assert hashlib.sha256(res.image.tobytes()).hexdigest() == TABLE["p13-format5-900-pixels"]


ARCHIVES = sorted(k for k in TABLE if k.endswith(".ddpma"))


def test_there_is_a_golden_archive_of_the_current_version():
    from ddpm_codec.codec import archive as ar

    assert f"a{ar.VERSION}.ddpma" in ARCHIVES


@pytest.mark.parametrize("name", ARCHIVES)
def test_golden_archive_extracts_to_its_images(name, shipped):
    """Archives of every format version ever written (make_golden.py archive) keep extracting, exactly."""
    from ddpm_codec.codec import archive as ar

    data = (GOLDEN / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == TABLE[name]
    out = ar.extract(data, shipped)
    want = make_golden.archive_images()
    assert not out.damaged and [n for n, _ in out.images] == [n for n, _ in want]
    for (_, got), (_, img) in zip(out.images, want):
        assert np.array_equal(got, img)
