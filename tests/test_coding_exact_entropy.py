"""Portable x_0 coder (ddpm_codec.coding.exact_entropy): exact integer model, round trips,
rate against Eq. 13, golden bits and independence of the CPU's SIMD features."""

import hashlib
import json
import os
import subprocess
import sys

import constriction
import numpy as np
import pytest

from ddpm_codec.coding import detmath, entropy
from ddpm_codec.coding import exact_entropy as ee

M = ee.TOTAL - ee.NUM_LEVELS


def _params(n, seed, std_lo=0.5, std_hi=20.0, mean_lo=-50.0, mean_hi=300.0):
    rng = np.random.default_rng(seed)
    mean = mean_lo + (mean_hi - mean_lo) * rng.random(n)
    std = std_lo * (std_hi / std_lo) ** rng.random(n)  # ** is libm, fine for test inputs
    return mean, std


def _pixels(mean, std, seed):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(mean + std * rng.normal(size=mean.size)), 0, 255).astype(np.uint8)


def _extreme_params():
    means = np.array([-50.0, 300.0, 0.0, 255.0, 127.5, 127.0, -1e6, 1e6, 3.3, 250.1, 128.0, 0.5])
    stds = np.array([1e-300, 1e-6, 1e300, 1e6, 1e-3, 0.01, 1.0, 5.0, 1e-12, 1e12, 0.2, 1e-300])
    return means, stds


def _encode(pixels, mean, std, before=None):
    enc = constriction.stream.queue.RangeEncoder()
    if before is not None:  # other symbols first: the codec shares one range-coded stream
        enc.encode(before, constriction.stream.model.Uniform(), np.full(before.size, 97, np.int32))
    ee.write_pixels(enc, pixels, mean, std)
    return enc.get_compressed()


def test_frequencies_sum_to_2_pow_24_and_are_positive():
    mean, std = _params(2000, 0, std_lo=1e-4, std_hi=1e4)
    m2, s2 = _extreme_params()
    for m, s in ((mean, std), (m2, s2)):
        f = ee.frequencies(m, s)
        assert f.dtype == np.int64 and f.shape == (m.size, 256)
        assert np.all(f >= 1) and np.all(f.sum(axis=1) == 1 << 24)
        g = ee.cdf_units(m, s)
        assert np.all(g[:, 0] == 0) and np.all(g[:, -1] == M) and np.all(np.diff(g, axis=1) >= 0)


def test_edge_cases_put_the_mass_where_eq13_says():
    f = ee.frequencies(np.array([-50.0, 300.0, 100.0, 127.5]), np.array([1.0, 1.0, 1e-6, 1e-300]))
    assert f[0, 0] == 1 + M and f[1, 255] == 1 + M  # open edge bins take the tails
    assert f[2, 100] == 1 + M
    assert f[3, 127] == f[3, 128] == 1 + M // 2  # the mean on a boundary: exactly half each


def test_round_trip_random_and_extreme():
    mean, std = _params(3072, 1, std_lo=1e-3, std_hi=1e3)
    m2, s2 = _extreme_params()
    mean, std = np.concatenate([mean, m2]), np.concatenate([std, s2])
    rng = np.random.default_rng(2)
    pixels = _pixels(mean, std, 3)
    pixels[:200] = rng.integers(0, 256, 200)  # values the model finds very unlikely
    before = rng.integers(0, 97, 5).astype(np.int32)
    dec = constriction.stream.queue.RangeDecoder(_encode(pixels, mean, std, before))
    assert np.array_equal(dec.decode(constriction.stream.model.Uniform(), np.full(5, 97, np.int32)), before)
    out = ee.read_pixels(dec, mean, std)
    assert out.dtype == np.uint8 and np.array_equal(out, pixels)


def test_read_in_small_batches_like_the_tile_decoder():
    mean, std = _params(300, 4, std_lo=0.5, std_hi=20.0, mean_lo=0.0, mean_hi=255.0)
    pixels = _pixels(mean, std, 5)
    dec = constriction.stream.queue.RangeDecoder(_encode(pixels, mean, std))
    out = np.concatenate([ee.read_pixels(dec, mean[i:i + 3], std[i:i + 3]) for i in range(0, 300, 3)])
    assert np.array_equal(out, pixels)
    assert ee.read_pixels(dec, np.zeros(0), np.zeros(0)).shape == (0,)


def test_rows_do_not_depend_on_batching():
    mean, std = _params(700, 6, std_lo=0.3, std_hi=300.0)
    full = ee.frequencies(mean, std)
    single = np.concatenate([ee.frequencies(mean[i:i + 1], std[i:i + 1]) for i in range(0, 700, 7)])
    assert np.array_equal(single, full[::7])
    perm = np.random.default_rng(7).permutation(700)
    assert np.array_equal(ee.frequencies(mean[perm], std[perm]), full[perm])


def test_constriction_codes_exactly_our_integers():
    """Evidence that the Categorical(perfect=False) family uses (G_v + v, f_v) bit-exactly:
    (1) on an ANS stack holding one symbol a, pushing b gives the state computed by hand from
    our table; (2) a decoder whose quantile we set decodes v exactly on [C_v, C_{v+1})."""
    family = constriction.stream.model.Categorical(perfect=False)
    mean = np.array([100.3, 7.9, 250.2])
    std = np.array([2.7, 40.0, 0.8])
    w = ee._weights(mean, std)
    f = ee.frequencies(mean, std)
    for row in range(3):
        c = np.concatenate([[0], np.cumsum(f[row])])  # left cumulatives C_v = G_v + v
        assert c[-1] == 1 << 24
        a = int(np.argmax(c[:-1]))  # 255: the largest left cumulative
        for b in range(256):
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(np.array([a], np.int32), family, w[row:row + 1])
            coder.encode_reverse(np.array([b], np.int32), family, w[row:row + 1])
            words = [int(x) for x in coder.get_compressed()]
            state = words[0] | (words[1] << 32) if len(words) == 2 else words[0]
            ca, fb = int(c[a]), int(f[row, b])
            assert state == ((ca // fb) << 24) + ca % fb + int(c[b])
        for v in range(256):
            for q in (int(c[v]), int(c[v + 1]) - 1):  # bulk's low 24 bits are the quantile
                coder = constriction.stream.stack.AnsCoder(np.array([q, 1], np.uint32))
                assert int(coder.decode(family, w[row:row + 1])[0]) == v


def test_code_length_matches_eq13():
    for lo, hi, seed in ((0.5, 20.0, 8), (1.275, 6.375, 9), (5.0, 20.0, 10)):
        mean, std = _params(3072, seed, std_lo=lo, std_hi=hi, mean_lo=0.0, mean_hi=255.0)
        pixels = _pixels(mean, std, seed + 100)
        bits = 32 * _encode(pixels, mean, std).size
        ideal_int = ee.ideal_bits(pixels, mean, std)
        eq13 = entropy.ideal_bits(pixels, mean / entropy.PIXEL_SCALE - 1.0, std / entropy.PIXEL_SCALE)
        assert abs(ideal_int - eq13) <= 1e-3 * eq13 + 8
        assert ideal_int <= bits <= ideal_int + 64
        assert bits <= 1.001 * eq13 + 64


def test_the_cut_and_the_table_change_nothing():
    """|z| >= Z_CUT would round to 0 anyway, and the Taylor table agrees with detmath's Q."""
    assert detmath.normal_tail(ee.Z_CUT) * M + 0.5 < 1.0
    a = np.linspace(0.0, ee.Z_CUT, 200_001)[:-1]
    assert np.max(np.abs(ee._q_window(a) / detmath.normal_tail(a) - 1.0)) <= 5e-14
    mean, std = _params(3000, 11, std_lo=0.05, std_hi=200.0)
    g_table = ee.cdf_units(mean, std)
    g_full = ee.cdf_units(mean, std, z_cut=40.0)  # detmath.normal_tail on every boundary
    diff = np.abs(g_table - g_full)
    assert diff.max() <= 1 and np.mean(diff != 0) < 1e-4


def test_input_validation():
    with pytest.raises(ValueError):
        ee.frequencies(np.array([1.0], np.float32), np.array([1.0], np.float32))
    with pytest.raises(ValueError):
        ee.frequencies(np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError):
        ee.frequencies(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError):
        ee.frequencies(np.array([1.0, 2.0]), np.array([1.0]))
    enc = constriction.stream.queue.RangeEncoder()
    with pytest.raises(ValueError):
        ee.write_pixels(enc, np.array([1, 2], np.int32), np.ones(2), np.ones(2))
    with pytest.raises(ValueError):
        ee.write_pixels(enc, np.array([1], np.uint8), np.ones(2), np.ones(2))


# ---------------------------------------------------------------------------------------
# Golden bits. These literals pin the portable arithmetic (detmath, the Q table, the integer
# CDF) and constriction's use of the integers: any change of them changes the file format.
# ---------------------------------------------------------------------------------------

_GOLD_MEAN = np.array([12.25, 127.5, 200.8125, -3.5, 255.75, 64.0, 90.3, 180.0])
_GOLD_STD = np.array([0.75, 2.5, 6.0, 1.25, 0.5, 20.0, 0.3, 3.0])
_GOLD_PIXELS = np.array([12, 130, 195, 0, 255, 70, 90, 181], np.uint8)
# Frequencies of pixel 0 (std 0.75) and pixel 6 (std 0.3) that are not 1 (the rest are 1).
_GOLD_ROW0 = {8: 6, 9: 2057, 10: 162611, 11: 2497083, 12: 7917105, 13: 5396327, 14: 779131,
              15: 22525, 16: 124}
_GOLD_ROW6 = {89: 64263, 90: 12476642, 91: 4235527, 92: 532}
_GOLD_FREQ_SHA = "d81edce97599cbaa4c5778518c19e00b8a1328bab3f84182ede4395cc4077fc7"
_GOLD_BYTES_SHA = "6a7e0b2f3b757a16acd11ca9555cf28cd4d09c93d4d33c3a497eb645189ce49c"  # [2312558284]


def test_golden_frequencies_and_bytes():
    f = ee.frequencies(_GOLD_MEAN, _GOLD_STD)
    for row, gold in ((0, _GOLD_ROW0), (6, _GOLD_ROW6)):
        expect = np.ones(256, np.int64)
        for k, v in gold.items():
            expect[k] = v
        assert np.array_equal(f[row], expect)
    assert hashlib.sha256(f.astype("<i8").tobytes()).hexdigest() == _GOLD_FREQ_SHA
    words = _encode(_GOLD_PIXELS, _GOLD_MEAN, _GOLD_STD)
    assert hashlib.sha256(np.asarray(words, "<u4").tobytes()).hexdigest() == _GOLD_BYTES_SHA


# ---------------------------------------------------------------------------------------
# Portability: the same bits with numpy's SIMD dispatch turned off and one thread.
# ---------------------------------------------------------------------------------------

_CHILD = r"""
import hashlib, json, sys
import numpy as np
try:
    from numpy._core._multiarray_umath import __cpu_features__ as feats
except ImportError:  # numpy 1.x
    from numpy.core._multiarray_umath import __cpu_features__ as feats
from ddpm_codec.coding import detmath, exact_entropy as ee
rng = np.random.default_rng(12)
n = 5000
mean = -50.0 + 350.0 * rng.random(n)
std = 0.05 + 60.0 * rng.random(n)
x = -40.0 + 80.0 * rng.random(20000)
out = {
    "freq": hashlib.sha256(ee.frequencies(mean, std).astype("<i8").tobytes()).hexdigest(),
    "math": hashlib.sha256(b"".join(np.asarray(a, "<f8").tobytes() for a in (
        detmath.exp(x * 17.0), detmath.log(np.abs(x) * 1e5), detmath.ndtr(x),
        detmath.sigmoid(x)))).hexdigest(),
    "on": sorted(k for k, v in feats.items() if v),
}
json.dump(out, sys.stdout)
"""


def _child(env_extra):
    env = dict(os.environ, **env_extra)
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=False,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_same_bits_without_simd_dispatch_and_with_one_thread():
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    # Only dispatched features this CPU has can be disabled (numpy rejects the others).
    disable = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    ref = _child({})
    env = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "NPY_DISABLE_CPU_FEATURES": " ".join(disable)}
    plain = _child(env)
    assert not set(disable) & set(plain["on"])  # the features really were off in the child
    assert plain["freq"] == ref["freq"] and plain["math"] == ref["math"]
