"""Deterministic float64 math (ddpm_codec.coding.detmath): accuracy and bit-determinism."""

import math

import numpy as np
import pytest
import scipy.special as sc

from ddpm_codec.coding import detmath as dm


def _ulps(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    return np.abs(got - ref) / np.spacing(np.abs(ref))


def test_exp_dense_grid_within_2_ulp_of_math():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-708.0, 709.7, 100_001), rng.uniform(-1, 1, 20_000),
                        rng.uniform(-1e-6, 1e-6, 2000)])
    ref = np.array([math.exp(v) for v in x])
    assert _ulps(dm.exp(x), ref).max() <= 2.0


def test_log_dense_grid_within_2_ulp_of_math():
    rng = np.random.default_rng(2)
    x = np.concatenate([10.0 ** np.linspace(-300, 300, 100_001), rng.uniform(0.5, 2.0, 20_000),
                        1.0 + rng.uniform(-1e-6, 1e-6, 2000), [5e-324, 2.2e-308, 1.7e308]])
    ref = np.array([math.log(v) for v in x])
    assert _ulps(dm.log(x), ref).max() <= 2.0


def test_ndtr_body_and_upper_side():
    z = np.linspace(-8.0, 8.0, 160_001)
    got, ref = dm.ndtr(z), sc.ndtr(z)
    lower = z < 0
    # both ours and scipy's lose ~z^2 ulp (rounding of z^2/2): the bound holds for the sum
    rel = np.abs(got[lower] / ref[lower] - 1.0)
    assert np.all(rel <= 4e-16 * z[lower] ** 2 + 2e-15)
    assert np.max(np.abs(got[~lower] - ref[~lower])) <= 5e-16


def test_ndtr_lower_tail_relative_error():
    z = np.linspace(-37.5, -8.0, 50_001)
    # |log(ours) - log(true)| ~ relative error, plus the rounding of two logs ~ z^2/2 each
    rel = np.abs(np.log(dm.ndtr(z)) - sc.log_ndtr(z))
    assert np.all(rel <= 5e-16 * z * z + 1e-15)
    assert np.all(dm.ndtr(np.array([-38.0, -38.4])) > 0)  # subnormal, not flushed
    assert dm.ndtr(-39.0) == 0.0 and dm.ndtr(-1e300) == 0.0


def test_normal_tail_matches_mpmath_on_a_sample():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    a = np.concatenate([np.linspace(0.0, 8.0, 401), [12.5, 20.0, 30.0, 37.0]])
    got = dm.normal_tail(a)
    rel = [abs(float((mp.mpf(g) - mp.ncdf(-mp.mpf(v))) / mp.ncdf(-mp.mpf(v)))) for g, v in zip(got, a)]
    assert max(rel) <= 2e-16 * max(1.0, float(a.max()) ** 2)
    assert max(rel[:401]) <= 8e-15


def test_sigmoid_accuracy():
    x = np.linspace(-40.0, 40.0, 80_001)
    ref = sc.expit(x)
    assert np.max(np.abs(dm.sigmoid(x) / ref - 1.0)) <= 5e-16


def test_exact_points_and_special_values():
    assert dm.exp(0.0) == 1.0 and dm.log(1.0) == 0.0
    assert dm.ndtr(0.0) == 0.5 and dm.sigmoid(0.0) == 0.5 and dm.normal_tail(0.0) == 0.5
    assert dm.ndtr(-np.inf) == 0.0 and dm.ndtr(np.inf) == 1.0
    assert dm.exp(-np.inf) == 0.0 and dm.exp(np.inf) == np.inf and dm.exp(710.0) == np.inf
    assert dm.exp(-746.0) == 0.0 and 0.0 < dm.exp(-740.0) < 1e-300
    assert dm.log(0.0) == -np.inf and dm.log(np.inf) == np.inf
    assert np.isnan(dm.log(-1.0)) and np.isnan(dm.exp(np.nan)) and np.isnan(dm.ndtr(np.nan))
    assert np.isnan(dm.sigmoid(np.nan)) and dm.sigmoid(np.inf) == 1.0 and dm.sigmoid(-np.inf) == 0.0
    assert dm.LN2 == 0.6931471805599453
    # k ln 2 for integer k: the Cody-Waite split reproduces it exactly up to rounding of the sum
    assert abs(dm.log(2.0 ** 100) - 100 * dm.LN2) <= 2e-14


def test_scalars_and_shapes():
    assert isinstance(dm.exp(1.0), np.floating) and np.shape(dm.ndtr([[0.5, 1.0]])) == (1, 2)
    assert dm.ndtr(0.3) == dm.ndtr(np.array([0.3]))[0]


@pytest.mark.parametrize("name", ["exp", "log", "ndtr", "normal_tail", "sigmoid"])
def test_elementwise_independence(name):
    """The same bits for a shuffled, chunked, strided or reshaped input: no reductions."""
    fn = getattr(dm, name)
    rng = np.random.default_rng(3)
    x = rng.uniform(-30.0, 30.0, 10_007)
    if name == "log":
        x = np.abs(x) * 1e3
    if name == "normal_tail":
        x = np.abs(x)
    full = fn(x)
    perm = rng.permutation(x.size)
    assert np.array_equal(fn(x[perm]), full[perm])
    pieces = np.concatenate([fn(x[i:i + 37]) for i in range(0, x.size, 37)])
    assert np.array_equal(pieces, full)
    assert np.array_equal(fn(x[:10_000].reshape(100, 100)).reshape(-1), full[:10_000])
    wide = np.repeat(x, 2)
    assert np.array_equal(fn(wide[::2]), full)
    assert np.array_equal(np.array([fn(v) for v in x[:50]]), full[:50])
