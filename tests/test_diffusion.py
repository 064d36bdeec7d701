"""Closed-form checks of ``ddpm_codec.diffusion`` and ``ddpm_codec.likelihood``.

Every expected value here is derived independently of the code under test: schedules from a
plain Python product, posteriors from the Gaussian product rule or Eq. 7 written out, KLs by
Monte Carlo, decoder bins with ``math.erf``, and the bound of a one-image data set from its
exact optimal epsilon predictor.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_codec.diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    make_betas,
    normal_kl,
    respaced_timesteps,
)
from ddpm_codec.likelihood import fit_x0_mse, fit_x0_stats, nll_bound



T = 1000
BETA_1, BETA_T = 1e-4, 0.02


def hand_schedule(num_timesteps: int = T, b1: float = BETA_1, bT: float = BETA_T):
    """(betas, alpha_bars) as Python float lists indexed by the paper's t = 0..T (beta_0 unused)."""
    betas = [0.0] + [b1 + (bT - b1) * i / (num_timesteps - 1) for i in range(num_timesteps)]
    abar = [1.0]
    for t in range(1, num_timesteps + 1):
        abar.append(abar[-1] * (1.0 - betas[t]))
    return betas, abar


BETAS, ABAR = hand_schedule()


@pytest.fixture(scope="module")
def diff() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", T))


# ---------------------------------------------------------------------------------- schedules
def test_linear_schedule_facts(diff):
    b = make_betas("linear", T)
    assert b.dtype == np.float64 and b.shape == (T,)
    assert b[0] == pytest.approx(BETA_1, rel=1e-12) and b[-1] == pytest.approx(BETA_T, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (BETA_T - BETA_1) / (T - 1), rtol=1e-9)
    assert diff.num_timesteps == T
    assert diff.alphas_cumprod.shape == (T + 1,)
    assert diff.alphas_cumprod[0] == 1.0
    assert diff.betas[1] == pytest.approx(BETA_1) and diff.betas[T] == pytest.approx(BETA_T)
    np.testing.assert_allclose(diff.alphas_cumprod, ABAR, rtol=1e-12)
    # abar_T of the paper's schedule is about 4e-5 (so x_T is almost pure noise)
    assert 3e-5 < diff.alphas_cumprod[T] < 5e-5


def test_cosine_schedule_matches_closed_form():
    s = 0.008
    n = 200

    def f(t):
        return math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2

    d = GaussianDiffusion(make_betas("cosine", n))
    betas_closed = [1 - f(t) / f(t - 1) for t in range(1, n + 1)]
    # below the 0.999 clip (all but the last step), abar_t = f(t) / f(0) exactly
    last_unclipped = max(t for t in range(1, n + 1) if all(b < 0.999 for b in betas_closed[:t]))
    assert last_unclipped >= n - 1
    for t in (1, 2, 17, n // 2, 3 * n // 4, last_unclipped):
        assert d.alphas_cumprod[t] == pytest.approx(f(t) / f(0), rel=1e-9), t
    assert np.all(d.betas[1:] <= 0.999) and d.betas[n] == pytest.approx(0.999)


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="quadratic"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError):
        make_betas("linear", 0)
    with pytest.raises(ValueError):
        GaussianDiffusion(np.array([0.1, 1.0]))


# ---------------------------------------------------------------------------------- q(x_t | x_0)
def test_q_sample_moments(diff):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.3, 0.0, 0.7, 1.0], dtype=torch.float64)
    n = 200_000
    times = [1, 10, 300, 1000]
    for t in times:
        xt = diff.q_sample(x0.expand(n, 5).reshape(n, 5, 1, 1), t,
                           torch.randn(n, 5, 1, 1, generator=g, dtype=torch.float64)).reshape(n, 5)
        var = 1 - ABAR[t]
        se_mean = math.sqrt(var / n)
        np.testing.assert_allclose(xt.mean(0), math.sqrt(ABAR[t]) * x0, atol=5 * se_mean)
        np.testing.assert_allclose(xt.var(0), var, rtol=5 * math.sqrt(2 / n))
    # per-item times: item i uses times[i]
    t_vec = torch.tensor(times).repeat(n // 4)
    noise = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    xt = diff.q_sample(torch.full((n, 1, 1, 1), 0.5, dtype=torch.float64), t_vec, noise).reshape(-1, 4)
    for i, t in enumerate(times):
        assert float(xt[:, i].mean()) == pytest.approx(0.5 * math.sqrt(ABAR[t]), abs=5 * math.sqrt(4 / n))
        assert float(xt[:, i].var()) == pytest.approx(1 - ABAR[t], rel=5 * math.sqrt(8 / n))


def test_predict_x0_inverts_q_sample(diff):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 500, 999, 1000])
    xt = diff.q_sample(x0, t, noise)
    torch.testing.assert_close(diff.predict_x0(xt, t, noise), x0, rtol=0, atol=1e-10)
    # clip only clamps
    assert diff.predict_x0(xt, t, -3 * noise, clip=True).abs().max() <= 1.0


# ---------------------------------------------------------------------------------- posteriors
def test_posterior_single_step_is_eq7(diff):
    x0 = torch.tensor([[0.3, -0.9]], dtype=torch.float64).reshape(1, 2, 1, 1)
    xt = torch.tensor([[1.2, 0.1]], dtype=torch.float64).reshape(1, 2, 1, 1)
    for t in (1, 2, 3, 50, 999, 1000):
        b, a_t, ab_t, ab_prev = BETAS[t], 1 - BETAS[t], ABAR[t], ABAR[t - 1]
        mean = (math.sqrt(ab_prev) * b / (1 - ab_t)) * x0 + (math.sqrt(a_t) * (1 - ab_prev) / (1 - ab_t)) * xt
        var = (1 - ab_prev) / (1 - ab_t) * b
        q = diff.q_posterior(x0, xt, t)
        torch.testing.assert_close(q.mean, mean, rtol=1e-10, atol=1e-12)
        assert float(q.variance) == pytest.approx(var, rel=1e-10, abs=1e-300)
        assert diff.posterior_variance[t] == pytest.approx(var, rel=1e-10, abs=1e-300)


def test_p_mean_single_step_is_eq11(diff):
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([2, 10, 500, 1000])
    p = diff.p_mean_variance(xt, t, eps)
    for i, ti in enumerate(t.tolist()):
        mu = (xt[i] - BETAS[ti] / math.sqrt(1 - ABAR[ti]) * eps[i]) / math.sqrt(1 - BETAS[ti])
        torch.testing.assert_close(p.mean[i], mu, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("t,s", [(2, 0), (3, 1), (10, 3), (100, 1), (500, 250), (1000, 1), (1000, 999), (1000, 10)])
def test_strided_posterior_is_gaussian_product(diff, t, s):
    """q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0): precision-weighted combination."""
    x0 = torch.tensor([-1.0, -0.2, 0.4, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    xt = torch.tensor([0.5, -1.5, 0.0, 2.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    q = diff.q_posterior(x0, xt, t, s)
    if s == 0:     # x_0 is known: a point mass at x_0
        torch.testing.assert_close(q.mean, x0, rtol=0, atol=1e-12)
        assert float(q.variance) == 0.0
        return
    a = math.sqrt(ABAR[t] / ABAR[s])                 # x_t = a x_s + sqrt(1 - a^2) z
    # as a function of x_s, q(x_t | x_s) is N(x_t / a, (1 - a^2) / a^2)
    prec_lik, mean_lik = a * a / (1 - a * a), xt / a
    prec_prior, mean_prior = 1 / (1 - ABAR[s]), math.sqrt(ABAR[s]) * x0
    prec = prec_lik + prec_prior
    mean = (prec_lik * mean_lik + prec_prior * mean_prior) / prec
    torch.testing.assert_close(q.mean, mean, rtol=1e-9, atol=1e-12)
    assert float(q.variance) == pytest.approx(1 / prec, rel=1e-9)


def _single_step_coefs(k):
    """Eq. 7 for the step k -> k - 1, by hand: (coef of x_0, coef of x_k, variance)."""
    b, ab_k, ab_prev = BETAS[k], ABAR[k], ABAR[k - 1]
    return (math.sqrt(ab_prev) * b / (1 - ab_k), math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_k),
            (1 - ab_prev) / (1 - ab_k) * b)


@pytest.mark.parametrize("t,s", [(5, 2), (60, 20), (1000, 900)])
def test_strided_posterior_composes_single_steps(diff, t, s):
    """Ancestral single steps t -> t-1 -> ... -> s (Eq. 7, given x_0) land on q(x_s | x_t, x_0)."""
    x0v, xtv = 0.6, -0.4
    x0 = torch.tensor(x0v, dtype=torch.float64).reshape(1, 1, 1, 1)
    xt = torch.tensor(xtv, dtype=torch.float64).reshape(1, 1, 1, 1)
    q = diff.q_posterior(x0, xt, t, s)
    qm, qv = float(q.mean), float(q.variance)
    # (a) exact propagation of the affine-Gaussian chain
    m, v = xtv, 0.0
    for k in range(t, s, -1):
        c0, ck, var = _single_step_coefs(k)
        m, v = c0 * x0v + ck * m, ck * ck * v + var
    assert qm == pytest.approx(m, rel=1e-9) and qv == pytest.approx(v, rel=1e-9)
    # (b) empirically: simulate both and compare moments
    g = torch.Generator().manual_seed(t)
    n = 200_000
    x = torch.full((n,), xtv, dtype=torch.float64)
    for k in range(t, s, -1):
        c0, ck, var = _single_step_coefs(k)
        x = c0 * x0v + ck * x + math.sqrt(var) * torch.randn(n, generator=g, dtype=torch.float64)
    direct = qm + math.sqrt(qv) * torch.randn(n, generator=g, dtype=torch.float64)
    se = math.sqrt(qv / n)
    for sample in (x, direct):
        assert float(sample.mean()) == pytest.approx(qm, abs=5 * se)
        assert float(sample.var()) == pytest.approx(qv, rel=5 * math.sqrt(2 / n))
    assert float(x.mean() - direct.mean()) == pytest.approx(0.0, abs=7 * se)


def test_posterior_rejects_bad_pairs(diff):
    x = torch.zeros(1, 1, 1, 1)
    for t, s in [(5, 5), (5, 6), (5, -1), (T + 1, 3)]:
        with pytest.raises(ValueError):
            diff.q_posterior(x, x, t, s)


def test_p_variance_kinds(diff):
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    beta_tilde = [0.0] + [(1 - ABAR[t - 1]) / (1 - ABAR[t]) * BETAS[t] for t in range(1, T + 1)]
    for t in (1, 2, 30, 1000):
        assert float(diff.p_variance(t, t - 1, "fixedlarge", x)) == pytest.approx(BETAS[t], rel=1e-10)
    for t in (2, 30, 1000):
        assert float(diff.p_variance(t, t - 1, "fixedsmall", x)) == pytest.approx(beta_tilde[t], rel=1e-10)
    # s = 0 (the decoder): the posterior variance is 0 there; fixedsmall uses beta_tilde_2
    assert float(diff.p_variance(1, 0, "fixedsmall", x)) == pytest.approx(beta_tilde[2], rel=1e-10)
    # strided
    t, s = 700, 300
    assert float(diff.p_variance(t, s, "fixedlarge", x)) == pytest.approx(1 - ABAR[t] / ABAR[s], rel=1e-10)
    var_ts = (1 - ABAR[s]) * (1 - ABAR[t] / ABAR[s]) / (1 - ABAR[t])
    assert float(diff.p_variance(t, s, "fixedsmall", x)) == pytest.approx(var_ts, rel=1e-10)
    # fitted: posterior variance + c0^2 * E|x0 - x0_hat|^2
    mse = np.linspace(0.0, 0.5, T + 1)
    dfit = GaussianDiffusion(make_betas("linear", T), x0_mse=mse)
    c0 = math.sqrt(ABAR[s]) * (1 - ABAR[t] / ABAR[s]) / (1 - ABAR[t])
    assert float(dfit.p_variance(t, s, "fitted", x)) == pytest.approx(var_ts + c0 ** 2 * mse[t], rel=1e-10)
    with pytest.raises(ValueError, match="x0_mse"):
        diff.p_variance(t, s, "fitted", x)
    with pytest.raises(ValueError, match="bogus"):
        diff.p_variance(t, s, "bogus", x)
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", T), x0_mse=np.zeros(T))


# ---------------------------------------------------------------------------------- densities
@pytest.mark.parametrize("m1,v1,m2,v2", [(0.3, 0.5, -0.2, 2.0), (1.0, 1.0, 0.0, 1.0), (0.0, 3.0, 0.5, 0.1)])
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2):
    kl = float(normal_kl(torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m2), torch.tensor(math.log(v2))))
    g = torch.Generator().manual_seed(3)
    n = 1_000_000
    x = m1 + math.sqrt(v1) * torch.randn(n, generator=g, dtype=torch.float64)
    log_ratio = (-0.5 * math.log(v1) - (x - m1) ** 2 / (2 * v1)) - (-0.5 * math.log(v2) - (x - m2) ** 2 / (2 * v2))
    assert kl == pytest.approx(float(log_ratio.mean()), abs=5 * float(log_ratio.std()) / math.sqrt(n) + 1e-12)
    assert float(normal_kl(m1, math.log(v1), m1, math.log(v1))) == 0.0


GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


@pytest.mark.parametrize("scale", [1e-5, 1e-4, 3e-3, 0.05, 0.5, 1.0, 10.0])
def test_discretized_decoder_sums_to_one(scale):
    g = torch.Generator().manual_seed(4)
    means = list((torch.rand(40, generator=g, dtype=torch.float64) * 2 - 1).tolist())
    means += [-50.0, -3.0, -1.0, -1 + 1 / 255, 0.0, 1 / 255, 1 - 1 / 510, 1.0, 1.7, 40.0]
    for m in means:
        lp = discretized_gaussian_log_likelihood(GRID, means=torch.full((256,), m, dtype=torch.float64),
                                                 scales=torch.full((256,), scale, dtype=torch.float64))
        assert lp.dtype == torch.float64 and torch.all(lp <= 1e-12)
        assert float(torch.logsumexp(lp, 0).exp()) == pytest.approx(1.0, abs=1e-9), m


def test_discretized_decoder_by_hand():
    h = 1 / 255

    def cdf(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    cases = []
    for v, m, s in [(128, 0.0, 0.5), (64, -0.3, 0.01), (200, 0.9, 0.2), (0, -0.8, 0.3), (255, 0.95, 0.05),
                    (0, 0.5, 0.1), (255, -0.2, 1.0), (3, 0.7, 0.05)]:
        x = v / 127.5 - 1
        if v == 0:
            p = cdf((x + h - m) / s)
        elif v == 255:
            p = 1 - cdf((x - h - m) / s)
        else:
            p = cdf((x + h - m) / s) - cdf((x - h - m) / s)
        cases.append((x, m, s, p))
    x, m, s, p = (torch.tensor(c, dtype=torch.float64) for c in zip(*cases))
    lp = discretized_gaussian_log_likelihood(x, means=m, scales=s)
    for got, want in zip(lp.tolist(), p.tolist()):
        if want > 1e-300:
            assert got == pytest.approx(math.log(want), rel=1e-7), (got, want)
    # interior bins ~20 standard deviations from the mean, on either side: 1 - cdf rounds to 0 in
    # float64, so these need the upper-tail (or lower-tail) form; erfc is accurate out there
    for v, m, s in [(200, -0.5, 0.05), (30, 0.6, 0.05), (128, -0.9, 0.045)]:
        x = v / 127.5 - 1
        zl, zu = (x - h - m) / (s * math.sqrt(2)), (x + h - m) / (s * math.sqrt(2))
        p = 0.5 * (math.erfc(zl) - math.erfc(zu)) if zl > 0 else 0.5 * (math.erfc(-zu) - math.erfc(-zl))
        assert 1e-250 < p < 1e-80
        got = float(discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64),
                                                        means=torch.tensor([m], dtype=torch.float64),
                                                        scales=torch.tensor([s], dtype=torch.float64)))
        assert got == pytest.approx(math.log(p), rel=1e-9), (v, m, s)
    # a far tail bin: log p ~ -z^2/2, accurate where 1 - cdf underflows in float64
    lp_far = discretized_gaussian_log_likelihood(torch.tensor([1.0], dtype=torch.float64),
                                                 means=torch.tensor([-1.0], dtype=torch.float64),
                                                 scales=torch.tensor([0.01], dtype=torch.float64))
    z = (1 - h + 1) / 0.01
    assert float(lp_far) == pytest.approx(-z * z / 2 - math.log(z * math.sqrt(2 * math.pi)), rel=1e-4)


# ---------------------------------------------------------------------------------- respacing
def test_respaced_timesteps_properties():
    for n_total in (10, 37, 1000):
        for t_end in (1, 2, n_total // 3 or 1):
            for num in sorted({2, 3, 5, (n_total - t_end + 1) // 2, n_total - t_end + 1} - {0, 1}):
                for kind in ("uniform", "quadratic", "cubic"):
                    ts = respaced_timesteps(num, n_total, kind=kind, t_end=t_end)
                    assert len(ts) == num and ts[0] == n_total and ts[-1] == t_end
                    assert all(a > b for a, b in zip(ts, ts[1:])), ts
                    assert all(isinstance(t, int) for t in ts)
    assert respaced_timesteps(1000, 1000) == list(range(1000, 0, -1))
    assert respaced_timesteps(1, 1000) == [1000]
    # quadratic spacing is denser near t_end than uniform
    q, u = respaced_timesteps(20, 1000, kind="quadratic"), respaced_timesteps(20, 1000, kind="uniform")
    assert q[-2] < u[-2]
    c = respaced_timesteps(20, 1000, kind="cubic")  # t = 1 + 999·u^3 (u = 18/19 at the 2nd entry)
    assert c[-2] < q[-2] and c[1] == round(1 + 999 * (18 / 19) ** 3)
    for bad in [dict(num_steps=0), dict(num_steps=1001), dict(num_steps=5, t_end=0), dict(num_steps=5, kind="quartic")]:
        with pytest.raises(ValueError):
            respaced_timesteps(**{"num_timesteps": 1000, **bad})


# ---------------------------------------------------------------------------------- the bound
# One fixed image x* on the pixel grid, including both edge values.
X_STAR_PIXELS = np.array([0, 255, 128, 37, 200, 1, 254, 90] * 6, dtype=np.float64).reshape(3, 4, 4)
X_STAR = torch.from_numpy(X_STAR_PIXELS / 127.5 - 1)
D = X_STAR.numel()


def optimal_eps(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] when the data is the single image x*: (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""
    ab = torch.tensor([ABAR[int(v)] for v in t], dtype=torch.float64).reshape(-1, 1, 1, 1)
    return (xt.double() - ab.sqrt() * X_STAR) / (1 - ab).sqrt()


def hand_prior_bpd() -> float:
    ab = ABAR[T]
    x = X_STAR_PIXELS.ravel() / 127.5 - 1
    nats = sum(0.5 * (ab * (xi * xi - 1) - math.log(1 - ab)) for xi in x)
    return nats / (D * math.log(2))


def hand_decoder_bpd(sigma: float) -> float:
    """-log2 p(x* | x_1) per dim when x_hat_0 = x* exactly: central bin masses, edges open."""
    h = 1 / 255
    central = math.erf(h / (sigma * math.sqrt(2)))
    edge = 0.5 * (1 + central)
    nats = 0.0
    for v in X_STAR_PIXELS.ravel():
        nats -= math.log(edge if v in (0, 255) else central)
    return nats / (D * math.log(2))


SIGMA1_SMALL = math.sqrt((1 - ABAR[1]) / (1 - ABAR[2]) * BETAS[2])   # clipped: beta_tilde_2
SIGMA1_LARGE = math.sqrt(BETAS[1])


def test_optimal_eps_is_exact(diff):
    """Sanity of the fixture: with eps*, x_hat_0 recovers x* from any x_t."""
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([1, 400, 1000])
    xt = diff.q_sample(X_STAR.expand(3, -1, -1, -1), t, torch.randn(3, *X_STAR.shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close(diff.predict_x0(xt, t, optimal_eps(xt, t)), X_STAR.expand(3, -1, -1, -1))


def test_bound_single_image_full_chain_exact(diff):
    x0 = X_STAR.expand(2, -1, -1, -1)          # float64: exact pixel values
    rep = nll_bound(optimal_eps, diff, x0, variance="fixedsmall")
    assert rep.timesteps == list(range(T, 0, -1))
    assert rep.per_step.shape == (2, T - 1)
    assert np.abs(rep.per_step).max() < 1e-12          # every L_{t-1}, t >= 2, is exactly 0
    np.testing.assert_allclose(rep.prior, hand_prior_bpd(), rtol=1e-10)
    np.testing.assert_allclose(rep.distortion, hand_decoder_bpd(SIGMA1_SMALL), rtol=1e-8)
    np.testing.assert_allclose(rep.total, hand_prior_bpd() + hand_decoder_bpd(SIGMA1_SMALL), rtol=1e-8)
    s = rep.summary()
    assert s["num_images"] == 2 and s["num_steps"] == T


def test_bound_single_image_full_chain_mc(diff):
    # float32 input, as the codec passes it: pixel values are off by ~1e-8, hence rtol 1e-6
    x0 = X_STAR.expand(3, -1, -1, -1).float()
    rep = nll_bound(optimal_eps, diff, x0, variance="fixedsmall", mc_samples=8, batch_size=2)
    assert rep.per_step is None
    assert np.abs(rep.rate).max() < 1e-10
    np.testing.assert_allclose(rep.total, hand_prior_bpd() + hand_decoder_bpd(SIGMA1_SMALL), rtol=1e-6)


@pytest.mark.parametrize("kind", ["quadratic", "uniform"])
def test_bound_single_image_strided_fixedsmall(diff, kind):
    ts = respaced_timesteps(12, T, kind=kind)
    rep = nll_bound(optimal_eps, diff, X_STAR[None], timesteps=ts, variance="fixedsmall")
    assert rep.per_step.shape == (1, 11)
    assert np.abs(rep.per_step).max() < 1e-12
    np.testing.assert_allclose(rep.total, hand_prior_bpd() + hand_decoder_bpd(SIGMA1_SMALL), rtol=1e-8)


def test_bound_single_image_strided_fixedlarge(diff):
    """With fixedlarge only the variance part of each KL survives; known in closed form."""
    ts = respaced_timesteps(8, T, kind="quadratic")
    rep = nll_bound(optimal_eps, diff, X_STAR[None], timesteps=ts, variance="fixedlarge")
    want = []
    for t, s in zip(ts, ts[1:]):
        vq = (1 - ABAR[s]) * (1 - ABAR[t] / ABAR[s]) / (1 - ABAR[t])
        vp = 1 - ABAR[t] / ABAR[s]
        want.append(0.5 * (math.log(vp / vq) + vq / vp - 1) / math.log(2))   # per dim, bits
    np.testing.assert_allclose(rep.per_step[0], want, rtol=1e-9)
    np.testing.assert_allclose(rep.distortion, hand_decoder_bpd(SIGMA1_LARGE), rtol=1e-8)
    np.testing.assert_allclose(rep.total, hand_prior_bpd() + sum(want) + hand_decoder_bpd(SIGMA1_LARGE), rtol=1e-8)
    # the Monte-Carlo estimate of the KL sum is unbiased: within 5 standard errors of the exact sum
    m = 3000
    mc = nll_bound(optimal_eps, diff, X_STAR[None], timesteps=ts, variance="fixedlarge", mc_samples=m)
    w = np.array(want) * len(want)
    assert mc.rate[0] == pytest.approx(sum(want), abs=5 * w.std() / math.sqrt(m))


def test_bound_terms_of_the_zero_predictor(diff):
    """eps_theta = 0, so x_hat_0 = x_t / sqrt(abar_t) and x_0 - x_hat_0 = -sqrt((1 - abar_t) / abar_t) eps:
    E[L_{t->s}] per dim = c0^2 (1 - abar_t) / abar_t / (2 v_p) + KL of the variances. Checks that each
    term draws x_t from q(x_t | x_0) at the term's own t."""
    g = torch.Generator().manual_seed(6)
    n, shape = 40, (3, 8, 8)
    x0 = torch.randint(0, 256, (n, *shape), generator=g).double() / 127.5 - 1
    ts = respaced_timesteps(8, T, kind="quadratic")
    rep = nll_bound(lambda xt, t: torch.zeros_like(xt), diff, x0, timesteps=ts, variance="fixedlarge")
    dims = n * math.prod(shape)
    for i, (t, s) in enumerate(zip(ts, ts[1:])):
        c0 = math.sqrt(ABAR[s]) * (1 - ABAR[t] / ABAR[s]) / (1 - ABAR[t])
        vq = (1 - ABAR[s]) * (1 - ABAR[t] / ABAR[s]) / (1 - ABAR[t])
        vp = 1 - ABAR[t] / ABAR[s]
        mean_part = c0 ** 2 * (1 - ABAR[t]) / ABAR[t] / (2 * vp) / math.log(2)
        var_part = 0.5 * (math.log(vp / vq) + vq / vp - 1) / math.log(2)
        # the mean part is mean_part * chi^2_dims / dims over all images and dims
        got = float(rep.per_step[:, i].mean())
        assert got == pytest.approx(mean_part + var_part, abs=5 * mean_part * math.sqrt(2 / dims)), (t, s)


def test_fit_x0_mse_of_the_zero_predictor(diff):
    """eps_theta = 0: E|x_0 - x_hat_0|^2 per dim = (1 - abar_t) / abar_t exactly (x_0 drops out)."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 256, (50, 3, 8, 8), generator=g).float() / 127.5 - 1
    times = [1, 10, 100, 1000]
    mse = fit_x0_mse(lambda xt, t: torch.zeros_like(xt), diff, x0, times=times, batch_size=16)
    assert mse.shape == (T + 1,) and mse[0] == 0.0
    for t in times:
        assert mse[t] == pytest.approx((1 - ABAR[t]) / ABAR[t], rel=5 * math.sqrt(2 / x0.numel()))
    # in between: interpolated in log-log space, hence monotone here
    assert np.all(np.diff(mse[1:]) > 0)
    # the exact predictor of a one-image data set: zero error (floored at 1e-12)
    mse_star = fit_x0_mse(optimal_eps, diff, X_STAR[None].expand(3, -1, -1, -1).float(), times=times)
    assert np.all(mse_star[1:] < 1e-9)


def test_bound_rejects_bad_chains(diff):
    x0 = X_STAR[None]
    for ts in ([999, 500, 1], [1000, 500, 500, 1], [1000, 0]):
        with pytest.raises(ValueError):
            nll_bound(optimal_eps, diff, x0, timesteps=ts)


def test_fit_x0_shrink_of_the_zero_predictor(diff):
    """eps_theta = 0: x_hat_0 = x_0 + sqrt(n) eps with n = (1 - abar_t) / abar_t, independent of
    x_0, so the least-squares factor about the mean is v / (v + n) (v: the data's variance) while
    clipping is rare; when noise swamps [-1, 1], clip(x_hat_0) carries nothing about x_0: ~0."""
    g = torch.Generator().manual_seed(3)
    x0 = (torch.rand((200, 3, 8, 8), generator=g) - 0.5) * 0.6 + torch.tensor([0.1, -0.2, 0.0]).reshape(1, 3, 1, 1)
    st = fit_x0_stats(lambda xt, t: torch.zeros_like(xt), diff, x0, times=[1, 50, 1000], batch_size=64)
    v = float(((x0 - x0.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean())
    np.testing.assert_allclose(st.data_mean, [0.1, -0.2, 0.0], atol=0.01)
    for t in (1, 50):
        n = (1 - ABAR[t]) / ABAR[t]
        assert st.shrink[t] == pytest.approx(v / (v + n), abs=0.02), t
    assert 0 <= st.shrink[1000] < 0.05 and st.shrink[0] == 1.0
    assert st.mse[50] == pytest.approx((1 - ABAR[50]) / ABAR[50], rel=0.05)


def test_denoise_shrinks_toward_the_data_mean():
    lam = np.linspace(1, 0, T + 1)             # lambda_t = 1 - t / T
    d = GaussianDiffusion(make_betas("linear", T), x0_shrink=lam, data_mean=[0.5, 0.0, -0.5])
    xt = torch.full((1, 3, 2, 2), 0.3, dtype=torch.float64)
    eps = torch.zeros_like(xt)
    for t in (1, 250, T):
        x0 = torch.clamp(xt / math.sqrt(ABAR[t]), -1, 1)
        m = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64).reshape(1, 3, 1, 1)
        torch.testing.assert_close(d.denoise(xt, t, eps), m + (1 - t / T) * (x0 - m))
    plain = GaussianDiffusion(make_betas("linear", T))
    torch.testing.assert_close(plain.denoise(xt, 500, eps), torch.clamp(xt / math.sqrt(ABAR[500]), -1, 1))
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", T), x0_shrink=lam)


def test_bound_mc_with_exact_tail_is_unbiased(diff):
    """fixedlarge + the exact predictor: every term is a known constant (its variance part), so the
    stratified estimator (tail exact + uniform samples of the rest) must average to the exact sum."""
    exact = nll_bound(optimal_eps, diff, X_STAR[None], variance="fixedlarge")
    terms = exact.per_step[0]
    whole = nll_bound(optimal_eps, diff, X_STAR[None], variance="fixedlarge", mc_samples=3, exact_tail=T - 1)
    np.testing.assert_allclose(whole.rate, exact.rate, rtol=1e-9)   # all terms in the tail: exact
    tail, n, m = 30, 400, 10
    head = terms[: T - 1 - tail]
    rep = nll_bound(optimal_eps, diff, X_STAR.expand(n, -1, -1, -1), variance="fixedlarge", mc_samples=m,
                    exact_tail=tail, batch_size=n, generator=torch.Generator().manual_seed(2))
    se = len(head) * head.std() / math.sqrt(n * m)
    assert se > 0 and abs(rep.rate.mean() - exact.rate[0]) < 5 * se
    # and each estimate has the tail exactly: it never falls below it
    assert np.all(rep.rate >= terms[T - 1 - tail:].sum() - 1e-12)


def test_bound_report_saves_its_per_image_terms(tmp_path):
    import numpy as np

    from ddpm_codec.likelihood import BoundReport

    rep = BoundReport(prior=np.array([0.1, 0.2]), rate=np.array([1.0, 2.0]), distortion=np.array([3.0, 4.0]),
                      timesteps=[1000, 500, 1])
    rep.save(tmp_path / "b.npz", first_image=7, fingerprint="abc", variance="fixedlarge")
    z = np.load(tmp_path / "b.npz")
    assert list(z["image_index"]) == [7, 8] and list(z["timesteps"]) == [1000, 500, 1]
    assert np.array_equal(z["prior"] + z["rate"] + z["distortion"], [4.1, 6.2]) and z["per_step"].shape == (2, 0)
    assert str(z["fingerprint"]) == "abc" and str(z["variance"]) == "fixedlarge"
