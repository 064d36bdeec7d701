"""Shared randomness: format stability, distribution, and bulk == pointwise generation."""

import math

import numpy as np
import pytest
import torch

from ddpm_codec.coding import prng


def test_pinned_first_values():
    # Format stability: changing these breaks every existing file. Change only on purpose.
    got = prng.normals_at(1, np.arange(4))
    want_bits = np.array([0x3D67BF0D, 0xBF9B10D7, 0xBF170945, 0x3EF47394], dtype=np.uint32)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want_bits)  # ≈ [0.0565787, -1.21145, -0.589985, 0.477444]
    assert np.allclose(got, [0.0565787, -1.2114514, -0.5899852, 0.4774443], atol=1e-6)


def test_pinned_hash_and_key():
    assert prng.derive_key(3, 5, 7, "perm") == 2506276893072814768
    assert int(prng.hash64(1, np.array([0], np.uint64))[0]) == 8841707400507832957
    assert prng.POOL_KEY == 0xF00AAE82D37E87F3


def test_moments_of_a_million_normals():
    n = 1_000_000
    x = prng.normals_at(prng.derive_key("moments"), np.arange(n)).astype(np.float64)
    mean, var = x.mean(), x.var()
    assert abs(mean) < 5 / math.sqrt(n)
    assert abs(var - 1) < 5 * math.sqrt(2 / n)
    kurt = ((x - mean) ** 4).mean() / var**2
    assert abs(kurt - 3) < 5 * math.sqrt(24 / n)
    skew = ((x - mean) ** 3).mean() / var**1.5
    assert abs(skew) < 5 * math.sqrt(6 / n)
    # tails: P(|x| > 3) = 0.0026998
    p3 = np.mean(np.abs(x) > 3)
    assert abs(p3 - 0.0026998) < 5 * math.sqrt(0.0027 / n)


def test_matches_libm_box_muller():
    """Own log/sin/cos polynomials agree with libm Box–Muller to float32 rounding."""
    c = np.arange(200_000, dtype=np.uint64)
    x = prng.normals_at(11, c).astype(np.float64)
    h = prng.hash64(11, c >> np.uint64(1))
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    th = ((h >> np.uint64(3)) & np.uint64(2**29 - 1)).astype(np.float64) * (math.pi / 4) / 2**29
    r = np.sqrt(-2 * np.log(u1))
    cos_, sin_ = r * np.cos(th), r * np.sin(th)
    swap = (h & np.uint64(1)) == 1
    first, second = np.where(swap, sin_, cos_), np.where(swap, cos_, sin_)
    first = np.where((h >> np.uint64(1)) & np.uint64(1), -first, first)
    second = np.where((h >> np.uint64(2)) & np.uint64(1), -second, second)
    ref = np.where((c & np.uint64(1)) == 0, first, second)
    assert np.max(np.abs(x - ref) / np.maximum(1.0, np.abs(ref))) < 2.5e-7


def test_uniforms():
    u = prng.uniforms_at(5, np.arange(100_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / 1e5)


def test_streams_are_uncorrelated():
    a = prng.normals_at(prng.derive_key(1, 2, 3), np.arange(100_000)).astype(np.float64)
    b = prng.normals_at(prng.derive_key(1, 2, 4), np.arange(100_000)).astype(np.float64)
    c = prng.normals_at(prng.derive_key(1, 2, 3), np.arange(1, 100_001)).astype(np.float64)
    for other in (b, c):
        assert abs(np.corrcoef(a, other)[0, 1]) < 5 / math.sqrt(1e5)


def test_depends_only_on_key_and_counter():
    cnt = np.array([5, 0, 123456789012, 5, 2**40 + 1])
    x = prng.normals_at(9, cnt)
    assert x[0] == x[3]
    for i, c in enumerate(cnt):
        assert prng.normals_at(9, np.array([c]))[0] == x[i]
    assert prng.normals_at(9, cnt.reshape(5, 1)).shape == (5, 1)


@pytest.mark.parametrize("rows,cols", [(37, 6), (16, 7), (5, 1), (64, 3072)])
def test_blocks_equal_pointwise(rows, cols):
    ref = prng.normals_at(prng.POOL_KEY, np.arange(rows * cols)).reshape(rows, cols)
    assert np.array_equal(prng.normal_block(prng.POOL_KEY, rows, cols), ref)
    assert np.array_equal(prng.normal_block(prng.POOL_KEY, rows, cols, transposed=True), ref.T)
    assert np.array_equal(prng.normal_block(prng.POOL_KEY, rows, cols, 3, rows - 1), ref[3 : rows - 1])
    assert np.array_equal(prng.normal_block(prng.POOL_KEY, rows, cols, threads=2),
                          prng.normal_block(prng.POOL_KEY, rows, cols, threads=1))


def test_candidate_pool_slab_equals_normals_at():
    rows, cols = 1 << 10, 3072
    pool = prng.candidate_pool(rows, cols)
    assert pool.shape == (rows, cols) and pool.dtype == torch.float32
    rng = np.random.default_rng(0)
    r = rng.integers(0, rows, 50)
    c = rng.integers(0, cols, 50)
    direct = prng.normals_at(prng.POOL_KEY, r.astype(np.uint64) * np.uint64(cols) + c.astype(np.uint64))
    assert np.array_equal(pool[r, c].numpy(), direct)
    slab = pool[100:103].numpy()
    assert np.array_equal(slab.ravel(), prng.normals_at(prng.POOL_KEY, np.arange(100 * cols, 103 * cols)))
    assert prng.candidate_pool(rows, cols) is not None and prng.candidate_pool_t(cols, rows).is_contiguous()


def test_derive_key_is_unambiguous():
    assert prng.derive_key(1, 23) != prng.derive_key(12, 3)
    assert prng.derive_key("1") != prng.derive_key(1)
    assert prng.derive_key("a", "b") != prng.derive_key("ab")
    assert 0 <= prng.derive_key(-5) < 2**64
    with pytest.raises(TypeError):
        prng.derive_key(1.5)
    with pytest.raises(TypeError):
        prng.derive_key(True)


def test_rejects_negative_counters():
    with pytest.raises(ValueError):
        prng.normals_at(1, np.array([-1, 2]))
