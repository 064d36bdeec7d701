"""One arithmetic, two precisions (ddpm_codec.arithmetic): the same checks on both variants, against
independent references (libm, fsum, scipy's normal CDF, per-sample network calls)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm_codec import codec
from ddpm_codec.arithmetic import EXACT, FLOAT, Arithmetic, arithmetic

BOTH = pytest.mark.parametrize("arith", [FLOAT, EXACT], ids=["float", "exact"])


def test_the_two_values_and_their_names():
    assert arithmetic(True) is EXACT and arithmetic(1) is EXACT and arithmetic("exact") is EXACT
    assert arithmetic(False) is FLOAT and arithmetic(0) is FLOAT and arithmetic("float") is FLOAT
    assert arithmetic(EXACT) is EXACT and EXACT.portable and not FLOAT.portable
    with pytest.raises(ValueError, match="unknown arithmetic 'fixed'"):
        arithmetic("fixed")
    with pytest.raises(ValueError, match="unknown arithmetic"):
        Arithmetic("double")


def test_every_profile_names_its_arithmetic_by_its_exact_bit():
    for pid, s in codec.PROFILES.items():
        assert s.arithmetic is (EXACT if s.exact else FLOAT), pid
        assert s.rcc_config().arithmetic is s.arithmetic
    assert codec.PROFILES[codec.DEFAULT_PROFILE].arithmetic is EXACT     # portable by default
    assert codec.PROFILES[codec.PLAIN_DEFAULT_PROFILE].arithmetic is EXACT


@BOTH
def test_log_and_ln2_against_libm(arith):
    x = np.exp(np.random.default_rng(0).uniform(-30, 30, 500))
    for v in x:
        got, ref = float(arith.log(float(v))), math.log(float(v))
        assert abs(got - ref) <= 2 * math.ulp(ref), v          # detmath: < 1 ulp measured
    assert arith.ln2 == math.log(2.0) == float(EXACT.log(2.0))


def test_exact_sums_are_correctly_rounded_and_float_sums_are_numpys():
    v = [1e16, 1.0, -1e16, 1e-3] * 5
    assert EXACT.sum(v) == math.fsum(v) == pytest.approx(5.005)
    assert FLOAT.sum(v) == float(np.sum(v))
    rng = np.random.default_rng(1)
    w = rng.standard_normal(1000) * 10.0 ** rng.integers(-8, 8, 1000)
    assert EXACT.sum(w) == math.fsum(w) and EXACT.sum(w[::-1]) == math.fsum(w)   # order-free


@BOTH
def test_pixel_model_round_trip_and_code_length(arith):
    """Both pixel models code and decode the same pixels, at a code length within 1 % (plus a few
    bits) of -log2 of the discretized Gaussian's bin masses computed independently with scipy."""
    import constriction

    rng = np.random.default_rng(2)
    n = 4000
    mean_pix = rng.uniform(20, 235, n)
    std_pix = rng.uniform(0.6, 12.0, n)
    pix = np.clip(np.rint(mean_pix + std_pix * rng.standard_normal(n)), 0, 255).astype(np.uint8)
    enc = constriction.stream.queue.RangeEncoder()
    arith.write_pixels(enc, pix, mean_pix, std_pix)
    words = enc.get_compressed()
    dec = constriction.stream.queue.RangeDecoder(words)
    assert np.array_equal(arith.read_pixels(dec, mean_pix, std_pix), pix)
    lo = np.where(pix == 0, -np.inf, pix - 0.5)
    hi = np.where(pix == 255, np.inf, pix + 0.5)
    ideal = -np.log2(norm.cdf((hi - mean_pix) / std_pix) - norm.cdf((lo - mean_pix) / std_pix)).sum()
    assert 32 * len(words) == pytest.approx(ideal, rel=0.01, abs=64)


def test_run_parallel_keeps_order_and_steals_jobs_the_pool_has_not_started():
    """Results in the jobs' order; with every pool thread blocked, the caller runs the other jobs
    itself instead of waiting (what keeps a busy machine from stalling the exact network)."""
    import threading

    from ddpm_codec.models import exact

    assert exact.run_parallel([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]
    pool = exact._pool(2)
    gate = threading.Event()
    blockers = [pool.submit(gate.wait) for _ in range(pool._max_workers)]
    try:
        ran_on = exact.run_parallel([threading.get_ident, threading.get_ident, threading.get_ident])
        assert ran_on == [threading.get_ident()] * 3     # all three on the caller: none waited on the pool
    finally:
        gate.set()
        for b in blockers:
            b.result()


def test_map_samples_splits_give_the_per_sample_bits():
    """The exact network on 5 samples in 1, 2 and 3 threads equals 5 one-sample calls, bit for bit;
    so does one sample on 2 and 3 threads."""
    from ddpm_codec.models.exact import ExactUNet
    from ddpm_codec.models.presets import get_preset
    from ddpm_codec.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(get_preset("tiny", image_size=8)).eval()
    ex = ExactUNet(net)
    x = torch.randn(5, 3, 8, 8)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = torch.cat([ex(x[i:i + 1], 17) for i in range(5)])
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(ex(x, 17), ref), threads
            assert torch.get_num_threads() == threads           # restored after the parallel section
        for threads in (2, 3, 2, 3):   # one sample: torch's own threads or one, as the chooser picks
            assert torch.equal(ex(x[:1], 17, threads=threads), ref[:1]), threads
    finally:
        torch.set_num_threads(old)


def test_thread_chooser_keeps_the_faster_count_and_probes_the_other_less_and_less():
    from ddpm_codec.models.exact import ThreadChooser

    c = ThreadChooser()
    assert c.pick(1) == 1                       # one thread allowed: nothing to choose
    assert c.pick(4) == 4
    c.record(4, 0.050)                          # all threads measured first, then one
    assert c.pick(4) == 1
    c.record(1, 0.020)                          # one thread is faster (a busy machine)
    assert c.pick(4, batch=True) == 4           # a batch's split keeps its own record: measured first
    c.record(4, 0.001, batch=True)
    assert c.pick(4, batch=True) == 1
    c.record(1, 0.002, batch=True)
    batch_picks = []
    for _ in range(10):
        batch_picks.append(c.pick(4, batch=True))
        c.record(batch_picks[-1], 0.001 if batch_picks[-1] == 4 else 0.002, batch=True)
    assert batch_picks.count(4) >= 8            # the split is faster for batches; one thread is faster alone
    picks = []
    for _ in range(60):
        k = c.pick(4)
        picks.append(k)
        c.record(k, 0.050 if k == 4 else 0.020)
    probes = [i for i, k in enumerate(picks) if k == 4]
    assert probes and all(b - a > 4 for a, b in zip(probes, probes[1:]))        # rarer and rarer
    assert [b - a for a, b in zip(probes, probes[1:])] == sorted(b - a for a, b in zip(probes, probes[1:]))
    for _ in range(200):                        # the machine goes idle: all threads win again
        k = c.pick(4)
        c.record(k, 0.010 if k == 4 else 0.020)
    assert sum(c.pick(4) == 4 for _ in range(20)) >= 15
