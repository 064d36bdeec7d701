import math

import numpy as np
import pytest

from ddpm_codec.eval.metrics import (
    bits_per_dim,
    mse,
    mse_per_image,
    psnr,
    psnr_from_mse,
    psnr_per_image,
    rmse,
    rmse_per_image,
)


def _pair_differing_by(d, shape=(32, 32, 3), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(d, 256, size=shape, dtype=np.uint8)
    return a, (a - np.uint8(d)).astype(np.uint8)


def test_constant_difference_of_three():
    a, b = _pair_differing_by(3)
    assert mse(a, b) == 9.0
    assert rmse(a, b) == 3.0
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 3), abs=1e-12)
    # order must not matter: uint8 subtraction would wrap around to 253
    assert mse(b, a) == 9.0
    assert rmse(b, a) == 3.0


def test_identical_images_have_infinite_psnr():
    a, _ = _pair_differing_by(0)
    assert mse(a, a) == 0.0
    assert psnr(a, a) == math.inf
    assert np.all(np.isposinf(psnr_per_image(a[None], a[None])))


def test_per_image_hand_values():
    rng = np.random.default_rng(1)
    a = rng.integers(10, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    for i in range(1, 4):
        b[i] -= np.uint8(i)  # image 0 identical, image i off by i everywhere
    np.testing.assert_array_equal(mse_per_image(a, b), [0, 1, 4, 9])
    np.testing.assert_array_equal(rmse_per_image(a, b), [0, 1, 2, 3])
    p = psnr_per_image(a, b)
    assert p.shape == (4,)
    assert p[0] == math.inf
    np.testing.assert_allclose(p[1:], [20 * math.log10(255 / k) for k in (1, 2, 3)], rtol=0, atol=1e-12)
    # pooled metric is over all pixels: MSE = (0 + 1 + 4 + 9) / 4
    assert mse(a, b) == 3.5
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 3.5), abs=1e-12)


def test_float_inputs_and_peak():
    a = np.full((2, 4, 4, 3), 0.5)
    b = np.full((2, 4, 4, 3), 0.25)
    assert rmse(a, b) == 0.25
    assert psnr(a, b, peak=1.0) == pytest.approx(20 * math.log10(1 / 0.25), abs=1e-12)
    assert psnr_from_mse(0.0) == math.inf
    np.testing.assert_allclose(psnr_from_mse(np.array([255.0**2, 1.0])), [0.0, 20 * math.log10(255)])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        mse(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)))


def test_bits_per_dim():
    assert bits_per_dim(384, (32, 32, 3)) == 1.0  # 3072 bits over 3072 dims
    assert bits_per_dim(3072, (32, 32, 3), unit="bits") == 1.0
    assert bits_per_dim(3072 * 10, (10, 32, 32, 3)) == 8.0
    np.testing.assert_allclose(bits_per_dim(np.array([[384, 768]]), (32, 32, 3)), [[1.0, 2.0]])
    with pytest.raises(ValueError):
        bits_per_dim(1, (32, 32, 3), unit="nats")
