import io
import math

import numpy as np
import pytest
from PIL import Image

from ddpm_codec.eval import baselines as B
from ddpm_codec.eval.metrics import rmse_per_image


def smooth_images(n=4, size=32, seed=0):
    """Smooth random RGB fields: white noise low-passed in Fourier space, uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, size, size, 3))
    f = np.fft.fftfreq(size)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    lowpass = np.exp(-k2 / (2 * 0.06**2))[None, :, :, None]
    field = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * lowpass, axes=(1, 2)))
    lo = field.min(axis=(1, 2, 3), keepdims=True)
    hi = field.max(axis=(1, 2, 3), keepdims=True)
    return np.round(20 + 215 * (field - lo) / (hi - lo)).astype(np.uint8)


IMAGES = smooth_images()

# File signatures: the sizes are real files, headers included.
MAGIC = {
    "PNG": lambda d: d[:8] == b"\x89PNG\r\n\x1a\n",
    "WebP": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
    "JPEG XL": lambda d: d[:2] == b"\xff\x0a",
    "JPEG 2000": lambda d: d[:4] == b"\xff\x4f\xff\x51",
    "JPEG": lambda d: d[:3] == b"\xff\xd8\xff" and d[-2:] == b"\xff\xd9",
}


@pytest.mark.parametrize("name", B.available_codecs(B.LOSSLESS_CODECS, warn=False))
def test_lossless_round_trip_and_real_file(name):
    codec = B.LOSSLESS_CODECS[name]
    for img in IMAGES[:2]:
        data = codec(img)
        assert MAGIC[name](data)
        back = codec.decode(data)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, img)


def test_lossless_sizes_equal_len_of_encoded_bytes():
    sizes = B.lossless_sizes(IMAGES, progress=False)
    assert set(sizes) == set(B.available_codecs(B.LOSSLESS_CODECS, warn=False))
    assert {"PNG", "WebP"} <= set(sizes)
    for name, s in sizes.items():
        assert s.shape == (len(IMAGES),) and s.dtype == np.int64
        expected = [len(B.LOSSLESS_CODECS[name].encode(img)) for img in IMAGES]
        np.testing.assert_array_equal(s, expected)
    # PNG size checked against an independent Pillow call
    buf = io.BytesIO()
    Image.fromarray(IMAGES[0]).save(buf, format="PNG", optimize=True)
    assert sizes["PNG"][0] == len(buf.getvalue())


def test_lossless_sizes_detects_inexact_codec(monkeypatch):
    broken = B.LosslessCodec("broken", B.encode_png, lambda d: B.decode_pillow(d) ^ np.uint8(1), lambda: True)
    monkeypatch.setitem(B.LOSSLESS_CODECS, "broken", broken)
    with pytest.raises(RuntimeError):
        B.lossless_sizes(IMAGES[:1], codecs=["broken"], progress=False)


def test_unavailable_codec_is_skipped_with_warning(monkeypatch):
    missing = B.LosslessCodec("missing", B.encode_png, B.decode_pillow, lambda: False)
    monkeypatch.setitem(B.LOSSLESS_CODECS, "missing", missing)
    with pytest.warns(RuntimeWarning, match="missing"):
        sizes = B.lossless_sizes(IMAGES[:1], codecs=["PNG", "missing"], progress=False)
    assert list(sizes) == ["PNG"]


def test_jpeg_sweep_psnr_rises_with_quality():
    qs = [5, 20, 40, 60, 80, 95, 100]
    res = B.lossy_sweep(IMAGES, codecs=["JPEG"], qualities=qs, progress=False)["JPEG"]
    assert res.bytes.shape == res.rmse.shape == res.psnr.shape == (len(IMAGES), len(qs))
    np.testing.assert_array_equal(res.quality, qs)
    assert np.all(np.diff(res.mean_psnr) >= 0)
    assert np.all(np.diff(res.mean_bits_per_dim) > 0)
    # records agree with an independent encode/decode through Pillow
    buf = io.BytesIO()
    Image.fromarray(IMAGES[1]).save(buf, format="JPEG", quality=60, optimize=True)
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert res.bytes[1, 3] == len(buf.getvalue())
    assert res.rmse[1, 3] == pytest.approx(rmse_per_image(IMAGES[1:2], dec[None])[0], rel=1e-12)
    assert res.psnr[1, 3] == pytest.approx(20 * math.log10(255 / res.rmse[1, 3]), rel=1e-12)
    np.testing.assert_allclose(res.bits_per_dim, res.bytes * 8 / 3072)


def test_every_lossy_codec_runs_and_gets_better_at_high_quality():
    names = B.available_codecs(B.LOSSY_CODECS, warn=False)
    assert {"JPEG", "WebP"} <= set(names)
    pick = {n: (B.LOSSY_CODECS[n].qualities[1], B.LOSSY_CODECS[n].qualities[-2]) for n in names}
    out = B.lossy_sweep(IMAGES[:2], qualities=pick, progress=False)
    assert list(out) == names
    for name, r in out.items():
        assert r.bytes.shape == (2, 2) and np.all(r.bytes > 0)
        assert np.all(r.psnr > 15), name
        assert r.mean_psnr[1] > r.mean_psnr[0], name
        assert r.mean_bits_per_dim[1] > r.mean_bits_per_dim[0], name


def test_bad_input_rejected():
    with pytest.raises(ValueError):
        B.lossless_sizes(IMAGES.astype(np.float32), progress=False)
    with pytest.raises(KeyError):
        B.lossy_sweep(IMAGES, codecs=["no such codec"], progress=False)


def test_rate_at_psnr_on_straight_curve():
    # PSNR = 10 + 6 * log2(rate): a straight line in log-rate, so log interpolation is exact
    rates = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
    psnrs = 10 + 6 * np.log2(rates)
    assert B.rate_at_psnr(rates, psnrs, 19.0) == pytest.approx(2**1.5, rel=1e-12)
    assert B.rate_at_psnr(rates, psnrs, 16.0) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(B.rate_at_psnr(rates, psnrs, 40.0))
    # a dominated point (more bits, lower PSNR) and the order of points do not matter
    r2 = np.append(rates, 3.0)[::-1]
    p2 = np.append(psnrs, 12.0)[::-1]
    assert B.rate_at_psnr(r2, p2, 19.0) == pytest.approx(2**1.5, rel=1e-12)


def test_pareto_front():
    r, p = B.pareto_front([1, 2, 2, 3, 4, np.nan], [20, 25, 24, 23, 30, 40])
    np.testing.assert_array_equal(r, [1, 2, 4])
    np.testing.assert_array_equal(p, [20, 25, 30])


def test_rate_ratio_at_equal_psnr():
    rates = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
    psnrs = 10 + 6 * np.log2(rates)
    assert B.rate_ratio_at_equal_psnr(rates / 2, psnrs, rates, psnrs) == pytest.approx(0.5, rel=1e-12)
    assert B.rate_ratio_at_equal_psnr(rates, psnrs, rates, psnrs) == pytest.approx(1.0, rel=1e-12)
    # B shifted by +6 dB at every rate = A needs 2x the bits of B at equal PSNR
    assert B.rate_ratio_at_equal_psnr(rates, psnrs, rates, psnrs + 6) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(B.rate_ratio_at_equal_psnr(rates, psnrs, rates, psnrs + 100))
