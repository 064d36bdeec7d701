"""Tests for ddpm_codec.coding.entropy: Eq. 13 of Ho et al. (2020) and its real bits."""

from __future__ import annotations

import contextlib
import faulthandler
import math
import time

import numpy as np
import pytest

from ddpm_codec.coding.entropy import (
    coder_params,
    decode_pixels,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_probs,
    encode_pixels,
    ideal_bits,
)


def phi(z: float) -> float:
    """Standard normal CDF, independent of scipy."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


@contextlib.contextmanager
def hang_guard(seconds: float):
    """Turns a hang (even inside native code) into a crash with a traceback."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def sample_from_model(rng, means, scales):
    """Pixels drawn from Eq. 13 itself (inverse CDF on the exact bin probabilities)."""
    probs = discretized_gaussian_probs(means, scales)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(means.shape)[..., None]
    return np.minimum((cdf < u).sum(-1), 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# The density
# ---------------------------------------------------------------------------------------


def test_probs_sum_to_one_for_extreme_parameters():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.uniform(-1, 1, 200), rng.uniform(-1e3, 1e3, 50), [-1e12, 1e12]])
    scales = 10.0 ** rng.uniform(-12, 6, means.size)
    scales[:3] = [1e-300, 1e300, 5e-324]
    probs = discretized_gaussian_probs(means, scales)
    assert probs.shape == (means.size, 256) and probs.dtype == np.float64
    assert np.all(probs >= 0) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-12)


def test_probs_keep_any_shape():
    probs = discretized_gaussian_probs(np.zeros((2, 3, 4)), np.full((2, 3, 4), 0.1))
    assert probs.shape == (2, 3, 4, 256)


def test_probs_by_hand_centre_bins():
    # mu = 0, sigma = 1/255: x_127 = -1/255, bin [-2/255, 0] -> z in [-2, 0];
    # x_128 = +1/255, bin [0, 2/255] -> z in [0, 2]; x_126 -> z in [-4, -2].
    p = discretized_gaussian_probs(np.array([0.0]), np.array([1 / 255]))[0]
    assert p[127] == pytest.approx(phi(0) - phi(-2), rel=1e-13)
    assert p[128] == pytest.approx(phi(2) - phi(0), rel=1e-13)
    assert p[126] == pytest.approx(phi(-2) - phi(-4), rel=1e-12)
    assert p[129] == pytest.approx(phi(4) - phi(2), rel=1e-12)


def test_probs_by_hand_open_edge_bins():
    # mu = -1 (= x_0), sigma = 2/255: v = 0 has limits (-inf, 1/255] -> z <= 0.5.
    p = discretized_gaussian_probs(np.array([-1.0]), np.array([2 / 255]))[0]
    assert p[0] == pytest.approx(phi(0.5), rel=1e-13)
    assert p[1] == pytest.approx(phi(1.5) - phi(0.5), rel=1e-12)
    # mean far above the range: everything in the open top bin.
    p = discretized_gaussian_probs(np.array([5.0]), np.array([0.1]))[0]
    assert p[255] == pytest.approx(1.0, abs=1e-15)
    assert p[255] == pytest.approx(phi((5.0 - (1 - 1 / 255)) / 0.1), rel=1e-15)


def test_far_tail_has_relative_precision():
    # v = 140 with mu = 0, sigma = 1/255: z in [24, 26]; 1 - 1 would give 0.
    p = discretized_gaussian_probs(np.array([0.0]), np.array([1 / 255]))[0]
    expected = 0.5 * (math.erfc(24 / math.sqrt(2)) - math.erfc(26 / math.sqrt(2)))
    assert expected > 0 and p[140] == pytest.approx(expected, rel=1e-10)
    # ... and symmetric in the lower tail.
    assert p[115] == pytest.approx(expected, rel=1e-10)
    logp = discretized_gaussian_log_likelihood(
        np.array([140], np.uint8), np.array([0.0]), np.array([1 / 255])
    )
    assert logp[0] == pytest.approx(math.log(expected), rel=1e-12)


def test_deep_tail_log_likelihood_is_exact_and_probs_are_clamped():
    # mu = -1, sigma = 1/255, v = 255: log Phi(-z) with z = (2 - 1/255) * 255 = 509,
    # far below float64; compare with the asymptotic series of log Phi(-z).
    z = 509.0
    asymptotic = -z * z / 2 - math.log(z * math.sqrt(2 * math.pi))
    asymptotic += math.log1p(-1 / z**2 + 3 / z**4)
    logp = discretized_gaussian_log_likelihood(
        np.array([255], np.uint8), np.array([-1.0]), np.array([1 / 255])
    )
    assert logp[0] == pytest.approx(asymptotic, rel=1e-12)
    p = discretized_gaussian_probs(np.array([-1.0]), np.array([1 / 255]))[0]
    assert p[255] == np.finfo(np.float64).tiny and np.all(np.isfinite(np.log(p)))


def test_bin_straddling_the_mean_with_huge_scale():
    # Bin mass ~ 2/255 / sigma * pdf(0); naive 0.5-0.5 differences lose all digits.
    sigma = 1e8
    p = discretized_gaussian_probs(np.array([1 / 255]), np.array([sigma]))[0]
    width = 2 / 255 / sigma
    assert p[128] == pytest.approx(width / math.sqrt(2 * math.pi), rel=1e-9)


def test_ideal_bits_matches_probs():
    rng = np.random.default_rng(1)
    means = rng.uniform(-1.2, 1.2, 500)
    scales = rng.uniform(0.1, 0.3, 500)  # |z| <= 25: no mass underflows float64
    pixels = rng.integers(0, 256, 500).astype(np.uint8)
    probs = discretized_gaussian_probs(means, scales)
    expected = -np.sum(np.log2(probs[np.arange(500), pixels]))
    assert ideal_bits(pixels, means, scales) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Real bits
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (4, 5, 3), (32, 32, 3)])
def test_round_trip_random_pixels_and_params(shape):
    rng = np.random.default_rng(sum(shape) + 3)
    pixels = rng.integers(0, 256, shape).astype(np.uint8)  # adversarial to the model
    means = rng.uniform(-1.5, 1.5, shape)
    scales = 10.0 ** rng.uniform(-4, 1, shape)
    data = encode_pixels(pixels, means, scales)
    decoded = decode_pixels(data, means, scales)
    assert decoded.dtype == np.uint8 and decoded.shape == (pixels.size,)
    np.testing.assert_array_equal(decoded, pixels.reshape(-1))
    assert not data.endswith(b"\x00")


def test_round_trip_extreme_params():
    rng = np.random.default_rng(2)
    n = 300
    pixels = rng.integers(0, 256, n).astype(np.uint8)
    means = rng.choice([-1e6, -1.0, 0.0, 1.0, 1e6], n)
    scales = rng.choice([1e-300, 1e-9, 1e-2, 1e3, 1e300], n)
    data = encode_pixels(pixels, means, scales)
    np.testing.assert_array_equal(decode_pixels(data, means, scales), pixels)


def test_float32_params_give_the_same_bits_as_their_float64_values():
    rng = np.random.default_rng(3)
    means = rng.uniform(-1, 1, 100).astype(np.float32)
    scales = rng.uniform(0.01, 0.05, 100).astype(np.float32)
    pixels = sample_from_model(rng, means.astype(np.float64), scales.astype(np.float64))
    data = encode_pixels(pixels, means, scales)
    assert data == encode_pixels(pixels, means.astype(np.float64), scales.astype(np.float64))
    np.testing.assert_array_equal(decode_pixels(data, means, scales), pixels)
    m32, s32 = coder_params(means, scales)
    assert m32.dtype == s32.dtype == np.float64


def test_pinned_bytes():
    # Bytes written by constriction 0.5's AnsCoder for this fixed case. If this changes,
    # files written before the change cannot be decoded: bump the format version.
    pixels = np.array([0, 17, 128, 255, 254, 3], np.uint8)
    means = np.array([-1.0, -0.85, 0.004, 0.97, 1.3, -2.0])
    scales = np.array([0.02, 0.05, 0.01, 0.03, 0.2, 1.0])
    data = encode_pixels(pixels, means, scales)
    assert data == bytes.fromhex("7fe918425701")
    np.testing.assert_array_equal(decode_pixels(data, means, scales), pixels)


def test_point_mass_costs_about_nothing():
    pixels = np.arange(3072).astype(np.uint8)
    means = pixels / 127.5 - 1.0  # exactly at the bin centres
    scales = np.full(3072, 1e-6)
    assert ideal_bits(pixels, means, scales) < 1e-9
    data = encode_pixels(pixels, means, scales)
    assert len(data) <= 4  # leak of 2**-24 per symbol: ~0.07 bits in total
    np.testing.assert_array_equal(decode_pixels(data, means, scales), pixels)


def test_open_edge_bins_in_the_coder():
    # sigma_pix = 1 with the mean on the edge pixel: Eq. 13 gives Phi(0.5) to the edge
    # bin (-log2 = 0.532 bits); a clipped-and-renormalized model would give 0.853 bits.
    n = 4000
    pixels = np.tile(np.array([0, 255], np.uint8), n // 2)
    means = np.where(pixels == 0, -1.0, 1.0)
    scales = np.full(n, 1 / 127.5)
    bits = 8 * len(encode_pixels(pixels, means, scales))
    expected = -n * math.log2(phi(0.5))
    assert expected == pytest.approx(ideal_bits(pixels, means, scales), rel=1e-12)
    assert abs(bits - expected) < 40


def test_actual_bits_close_to_ideal_on_a_32x32_image():
    rng = np.random.default_rng(4)
    shape = (32, 32, 3)
    means = rng.uniform(-1.05, 1.05, shape)
    scales = rng.uniform(0.01, 0.05, shape)
    pixels = sample_from_model(rng, means, scales)
    ideal = ideal_bits(pixels, means, scales)
    actual = 8 * len(encode_pixels(pixels, means, scales))
    # Measured: ~20 bits above ideal (24-bit fixed-point probabilities, ANS state).
    assert ideal - 32 < actual < ideal + 64, (actual, ideal)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


GOOD_M = np.zeros(6)
GOOD_S = np.full(6, 0.1)
GOOD_P = np.zeros(6, np.uint8)


@pytest.mark.parametrize(
    "pixels, means, scales, match",
    [
        (GOOD_P, np.zeros(5), GOOD_S, "same shape"),
        (GOOD_P, GOOD_M.reshape(2, 3), GOOD_S, "same shape"),
        (GOOD_P.reshape(2, 3), GOOD_M, GOOD_S, "same shape"),
        (GOOD_P, GOOD_M, np.zeros(6), "> 0"),
        (GOOD_P, GOOD_M, -GOOD_S, "> 0"),
        (GOOD_P, GOOD_M, np.full(6, np.nan), "finite"),
        (GOOD_P, np.full(6, np.inf), GOOD_S, "finite"),
        (GOOD_P, np.full(6, 1e308), GOOD_S, "too large"),
        (GOOD_P.astype(np.int64), GOOD_M, GOOD_S, "uint8"),
        (GOOD_P.astype(np.float32), GOOD_M, GOOD_S, "uint8"),
        (GOOD_P, np.zeros(6, np.int64), GOOD_S, "floating"),
    ],
)
def test_encode_rejects_bad_input(pixels, means, scales, match):
    with pytest.raises(ValueError, match=match):
        encode_pixels(pixels, means, scales)


def test_decode_rejects_bad_params_and_types():
    data = encode_pixels(GOOD_P, GOOD_M, GOOD_S)
    with pytest.raises(ValueError, match="> 0"):
        decode_pixels(data, GOOD_M, np.zeros(6))
    with pytest.raises(ValueError, match="same shape"):
        decode_pixels(data, GOOD_M, np.full(5, 0.1))
    with pytest.raises(TypeError):
        decode_pixels("not bytes", GOOD_M, GOOD_S)
    with pytest.raises(ValueError):
        ideal_bits(GOOD_P.astype(np.int32), GOOD_M, GOOD_S)


def test_decode_rejects_trailing_data_and_zero_end():
    rng = np.random.default_rng(6)
    means = rng.uniform(-1, 1, 3072)
    scales = rng.uniform(0.01, 0.05, 3072)
    pixels = sample_from_model(rng, means, scales)
    data = encode_pixels(pixels, means, scales)
    with pytest.raises(ValueError, match="zero byte"):
        decode_pixels(data + b"\x00", means, scales)
    with pytest.raises(ValueError, match="left over"):
        decode_pixels(data + b"\x01\x02\x03\x04\x05", means, scales)


def test_decode_of_garbage_raises_or_returns_never_hangs():
    rng = np.random.default_rng(7)
    means = rng.uniform(-1, 1, 3072)
    scales = rng.uniform(0.01, 0.05, 3072)
    pixels = sample_from_model(rng, means, scales)
    valid = encode_pixels(pixels, means, scales)
    cases = [b"", b"\xff", b"\xff" * 4000, b"\x00" * 8]
    cases += [rng.bytes(int(n)) for n in rng.integers(0, 5000, 150)]
    cases += [valid[:n] for n in range(0, len(valid), 37)]
    flipped = bytearray(valid)
    flipped[len(valid) // 2] ^= 0x10
    cases.append(bytes(flipped))
    start = time.perf_counter()
    with hang_guard(60):
        for data in cases:
            try:
                out = decode_pixels(data, means, scales)
            except ValueError:
                continue
            assert out.dtype == np.uint8 and out.shape == (3072,)
    assert time.perf_counter() - start < 10
