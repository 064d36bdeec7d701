"""Gaussian diffusion math of Ho et al. (2020), knowing nothing of networks or bits.

Conventions (used everywhere in this package):

* Images live in [-1, 1]: pixel value v in {0..255} maps to v / 127.5 - 1.
* Time is the paper's: t in {1, ..., T} are noisy latents, t = 0 is the data x_0. Schedule
  arrays therefore have T + 1 entries with ``alphas_cumprod[0] = 1``. A time argument is an
  int, or an int64 tensor ``[N]`` (one time per batch item).
* The network is never held here: functions that need it take ``eps`` (the network's
  epsilon-prediction for x_t) as a tensor.
* Densities are in nats; ``*_bpd`` helpers divide by ``D * log 2`` for bits/dim.
"""
from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from .arithmetic import FLOAT, Arithmetic
from .errors import InputError

VarianceKind = Literal["fixedlarge", "fixedsmall", "fitted"]
VARIANCE_KINDS: tuple[str, ...] = ("fixedlarge", "fixedsmall", "fitted")

# Half-width of one pixel bin in [-1, 1] units (Eq. 13 uses x +- 1/255).
BIN_HALF_WIDTH = 1.0 / 255.0


def make_betas(schedule: str, num_timesteps: int = 1000, *, beta_start: float = 1e-4,
               beta_end: float = 0.02, cosine_s: float = 0.008) -> np.ndarray:
    """beta_1..beta_T as float64 ``[T]``.

    ``linear``: the paper's (Sec. 4), beta_start..beta_end linearly. ``cosine``: Nichol &
    Dhariwal (2021), alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at 0.999.
    """
    if num_timesteps < 1:
        raise InputError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule == "linear":   # i·step + start, as numpy's linspace computes it today, written out so that
        if num_timesteps == 1:  # the values cannot move with a numpy version (exact profiles depend on them)
            return np.array([beta_start], dtype=np.float64)
        step = (beta_end - beta_start) / (num_timesteps - 1)
        return np.array([i * step + beta_start for i in range(num_timesteps - 1)] + [beta_end], dtype=np.float64)
    if schedule == "cosine":
        def abar(u):
            return math.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        ab = np.array([abar(u) for u in t]) / abar(0.0)
        return np.minimum(1.0 - ab[1:] / ab[:-1], 0.999)
    raise InputError(f"unknown beta schedule {schedule!r}; expected 'linear' or 'cosine'")


def _gather(arr: np.ndarray | torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as a float64 tensor broadcastable against ``like`` ([N, ...])."""
    table = torch.as_tensor(arr, dtype=torch.float64)
    if isinstance(t, torch.Tensor):
        out = table[t.to("cpu", torch.int64)].to(like.device)
        return out.reshape(-1, *([1] * (like.dim() - 1)))
    return torch.tensor(float(table[int(t)]), dtype=torch.float64, device=like.device)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v, dtype=torch.float64)
                                      for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_ndtr(x: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(x)


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor,
                                        scales: torch.Tensor) -> torch.Tensor:
    """log p(x) under the discretized Gaussian decoder of Eq. 13, elementwise, in nats.

    ``x`` holds exact pixel values in [-1, 1] (v / 127.5 - 1). Each bin spans x +- 1/255; the
    bins of x = -1 and x = +1 are open towards -inf and +inf. float64 throughout.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    means = torch.as_tensor(means, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    upper = (x + BIN_HALF_WIDTH - means) / scales
    lower = (x - BIN_HALF_WIDTH - means) / scales
    log_cdf_upper = _log_ndtr(upper)            # log Phi(upper)
    log_sf_lower = _log_ndtr(-lower)            # log (1 - Phi(lower))
    # log(Phi(upper) - Phi(lower)), computed on the side of the mean where it is accurate:
    # log(b - a) = log b + log(1 - exp(log a - log b)); clamped so that gradients stay finite.
    def log_diff(log_b, log_a):
        d = torch.clamp(log_a - log_b, max=-1e-12)
        return log_b + torch.log(torch.clamp(-torch.expm1(d), min=1e-300))

    mid = torch.where(lower > 0, log_diff(log_sf_lower, _log_ndtr(-upper)),
                      log_diff(log_cdf_upper, _log_ndtr(lower)))
    return torch.where(x < -1 + 1e-3, log_cdf_upper, torch.where(x > 1 - 1e-3, log_sf_lower, mid))


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian N(mean, variance) with a scalar-per-item variance, float64."""

    mean: torch.Tensor
    variance: torch.Tensor

    @property
    def log_variance(self) -> torch.Tensor:
        return torch.log(self.variance)


class GaussianDiffusion:
    """Schedules (float64, paper names) and the closed forms that use them.

    ``x0_mse`` (optional, ``[T + 1]``): per-time mean squared error of the network's x_0
    prediction, fitted on training images (see ``ddpm_codec.likelihood.fit_x0_mse``); it
    enables the ``fitted`` variance (the KL-optimal isotropic choice, as in Analytic-DPM).
    """

    def __init__(self, betas: np.ndarray, x0_mse: Sequence[float] | None = None,
                 x0_shrink: Sequence[float] | None = None, data_mean: Sequence[float] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise InputError("betas must be a 1-D array with values in (0, 1)")
        self.num_timesteps = T = len(betas)
        self.betas = np.concatenate([[0.0], betas])                    # beta_t, [T+1]
        self.alphas = 1.0 - self.betas
        # alpha_bar_t, [T+1]: sequential IEEE products (what np.cumprod does), written out
        self.alphas_cumprod = np.array(list(itertools.accumulate(self.alphas, operator.mul)))
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # Single-step posterior q(x_{t-1} | x_t, x_0) variance (Eq. 7); t = 1 gives 0, so the
        # "clipped" log variance uses t = 2's value there (as improved-diffusion does).
        post_var = np.zeros(T + 1)
        post_var[1:] = self.betas[1:] * (1.0 - self.alphas_cumprod[:-1]) / (1.0 - self.alphas_cumprod[1:])
        self.posterior_variance = post_var
        self.posterior_variance_clipped = post_var.copy()
        self.posterior_variance_clipped[1] = post_var[2] if T > 1 else self.betas[1]
        if x0_mse is not None:
            x0_mse = np.asarray(x0_mse, dtype=np.float64)
            if x0_mse.shape != (T + 1,):
                raise InputError(f"x0_mse must have T + 1 = {T + 1} entries, got {x0_mse.shape}")
        self.x0_mse = x0_mse
        if (x0_shrink is None) != (data_mean is None):
            raise InputError("x0_shrink and data_mean go together")
        if x0_shrink is not None:
            x0_shrink = np.asarray(x0_shrink, dtype=np.float64)
            if x0_shrink.shape != (T + 1,) or not np.all((x0_shrink >= 0) & (x0_shrink <= 1)):
                raise InputError(f"x0_shrink must have T + 1 = {T + 1} entries in [0, 1]")
            data_mean = np.asarray(data_mean, dtype=np.float64)
        self.x0_shrink = x0_shrink
        self.data_mean = data_mean

    @classmethod
    def from_config(cls, cfg: dict, x0_mse=None, x0_shrink=None, data_mean=None) -> "GaussianDiffusion":
        betas = make_betas(cfg.get("schedule", "linear"), cfg.get("num_timesteps", 1000),
                           beta_start=cfg.get("beta_start", 1e-4), beta_end=cfg.get("beta_end", 0.02))
        return cls(betas, x0_mse=x0_mse, x0_shrink=x0_shrink, data_mean=data_mean)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t) -> Posterior:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Eq. 4)."""
        return Posterior(_gather(self.sqrt_alphas_cumprod, t, x0) * x0.double(),
                         _gather(1.0 - self.alphas_cumprod, t, x0))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (Eq. 4); returns x0's dtype."""
        if noise is None:
            noise = torch.randn_like(x0)
        a = _gather(self.sqrt_alphas_cumprod, t, x0).to(x0.dtype)
        b = _gather(self.sqrt_one_minus_alphas_cumprod, t, x0).to(x0.dtype)
        return a * x0 + b * noise

    # ------------------------------------------------------------------ posteriors, any s < t
    def _check_pair(self, t, s):
        tt, ss = torch.as_tensor(t).cpu(), torch.as_tensor(s).cpu()   # t may be on the GPU, s an int
        if torch.any(ss < 0) or torch.any(tt > self.num_timesteps) or torch.any(ss >= tt):
            raise InputError(f"need 0 <= s < t <= T={self.num_timesteps}")

    def posterior_coefs(self, t, s, like: torch.Tensor):
        """Coefficients (c0, ct, var) with q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var I).

        For any 0 <= s < t (Eq. 6-7 generalised): with abar_{t|s} = abar_t / abar_s,
        c0 = sqrt(abar_s)(1 - abar_{t|s}) / (1 - abar_t),
        ct = sqrt(abar_{t|s})(1 - abar_s) / (1 - abar_t),
        var = (1 - abar_s)(1 - abar_{t|s}) / (1 - abar_t).
        """
        self._check_pair(t, s)
        ab_t = _gather(self.alphas_cumprod, t, like)
        ab_s = _gather(self.alphas_cumprod, s, like)
        ab_ts = ab_t / ab_s
        c0 = torch.sqrt(ab_s) * (1.0 - ab_ts) / (1.0 - ab_t)
        ct = torch.sqrt(ab_ts) * (1.0 - ab_s) / (1.0 - ab_t)
        var = (1.0 - ab_s) * (1.0 - ab_ts) / (1.0 - ab_t)
        return c0, ct, var

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t, s=None) -> Posterior:
        """q(x_s | x_t, x_0) for any s < t (default s = t - 1), float64."""
        if s is None:
            s = t - 1
        c0, ct, var = self.posterior_coefs(t, s, xt)
        return Posterior(c0 * x0.double() + ct * xt.double(), var)

    # ------------------------------------------------------------------ model side
    def predict_x0(self, xt: torch.Tensor, t, eps: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """x_hat_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Eq. 15), float64."""
        x0 = (xt.double() - _gather(self.sqrt_one_minus_alphas_cumprod, t, xt) * eps.double()) \
            / _gather(self.sqrt_alphas_cumprod, t, xt)
        return x0.clamp(-1, 1) if clip else x0

    def denoise(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """The image to show for x_t: x_hat_0 clipped to [-1, 1], then, with fitted ``x0_shrink``
        statistics, moved toward the data mean m by the least-squares factor lambda_t:
        m + lambda_t (x_hat_0 - m). At large t a network's x_hat_0 error (amplified by
        1/sqrt(abar_t)) exceeds the data's spread, and lambda_t -> 0 gives the mean image
        instead of saturated noise; at small t lambda_t ~ 1."""
        x0 = self.predict_x0(xt, t, eps, clip=True)
        if self.x0_shrink is None:
            return x0
        lam = _gather(self.x0_shrink, t, x0)
        m = torch.as_tensor(self.data_mean, dtype=torch.float64).reshape(1, -1, *([1] * (x0.dim() - 2)))
        return m + lam * (x0 - m)

    def p_variance(self, t, s, kind: VarianceKind, like: torch.Tensor) -> torch.Tensor:
        """Variance of p_theta(x_s | x_t) for the step t -> s, float64 (per item).

        ``fixedlarge``: beta_{t|s} = 1 - abar_t / abar_s (beta_t for s = t - 1; beta_1 for the
        paper's sigma_1 of Eq. 13), ``fixedsmall``: the posterior variance of q(x_s|x_t,x_0)
        (at s = 0, where it is 0, the t = 2 value as in improved-diffusion), ``fitted``: the posterior variance plus c0^2 * E|x_0 - x_hat_0|^2 per dim
        at t, the KL-optimal isotropic variance (needs ``x0_mse``).
        """
        if kind not in VARIANCE_KINDS:
            raise InputError(f"unknown variance kind {kind!r}; expected one of {VARIANCE_KINDS}")
        c0, _, var = self.posterior_coefs(t, s, like)
        if kind == "fixedlarge":
            return 1.0 - _gather(self.alphas_cumprod, t, like) / _gather(self.alphas_cumprod, s, like)
        if kind == "fixedsmall":
            # q(x_0 | x_t, x_0) is a point mass: use the clipped t = 1 posterior variance there
            floor = torch.tensor(self.posterior_variance_clipped[1], dtype=torch.float64, device=like.device)
            return torch.where(var > 0, var, floor)
        if self.x0_mse is None:
            raise InputError("variance 'fitted' needs x0_mse statistics; run `ddpm-codec calibrate`")
        return var + c0 ** 2 * _gather(self.x0_mse, t, like)

    def p_mean_variance(self, xt: torch.Tensor, t, eps: torch.Tensor, s=None,
                        variance: VarianceKind = "fixedlarge", clip: bool = False) -> Posterior:
        """p_theta(x_s | x_t) = N(mu_theta, sigma^2 I): the posterior mean with x_0 := x_hat_0."""
        if s is None:
            s = t - 1
        x0_hat = self.predict_x0(xt, t, eps, clip=clip)
        c0, ct, _ = self.posterior_coefs(t, s, xt)
        return Posterior(c0 * x0_hat + ct * xt.double(), self.p_variance(t, s, variance, xt))

    def decoder_scale(self, t, kind: VarianceKind, like: torch.Tensor) -> torch.Tensor:
        """Scale of the discretized Gaussian p(x_0 | x_t) used to code x_0 from x_t.

        For t = 1 and ``fixedlarge``/``fixedsmall`` this is Eq. 13's sigma_1 (sqrt(beta_1) or the
        clipped posterior std); ``fitted`` (and any t > 1) uses sqrt(x0_mse[t]), the RMS error of
        x_hat_0 (the "direct" decoder of RCC-NOTES).
        """
        direct = bool(torch.any(torch.as_tensor(t) > 1))
        if kind == "fitted" or direct:
            if self.x0_mse is None:
                raise InputError("decoding x_0 from t > 1 (or 'fitted') needs x0_mse statistics")
            return torch.sqrt(_gather(self.x0_mse, t, like))
        return torch.sqrt(self.p_variance(t, 0, kind, like))

    def ddim_step(self, xt: torch.Tensor, t: int, s: int, x0_hat: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0, probability-flow) step t -> s through a given x_hat_0:
        x_s = sqrt(abar_s) x_hat_0 + sqrt(1 - abar_s) eps_hat, eps_hat = (x_t - sqrt(abar_t) x_hat_0) / sqrt(1 - abar_t)."""
        ab = float(self.alphas_cumprod[s])
        e_hat = (xt - math.sqrt(float(self.alphas_cumprod[t])) * x0_hat) / math.sqrt(1 - float(self.alphas_cumprod[t]))
        return math.sqrt(ab) * x0_hat + math.sqrt(1 - ab) * e_hat

    def expected_step_kl(self, t: int, s: int, var_q: float, var_p: float, dims: int,
                         arithmetic: Arithmetic = FLOAT) -> float | None:
        """E KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)) over ``dims`` dims, nats, from the fitted
        ``x0_mse`` statistics (None without them): the variance term plus c0^2 E|x_0 - x_hat_0|^2 / (2 var_p).
        ``arithmetic``: whose logarithm to use (:data:`~ddpm_codec.arithmetic.EXACT`'s where the result
        must be the same bits everywhere)."""
        if self.x0_mse is None:
            return None
        c0, _, _ = self.posterior_coefs(t, s, torch.zeros(1))
        mean_sq = float(c0) ** 2 * float(self.x0_mse[t])
        return (0.5 * dims * (var_q / var_p - 1 - float(arithmetic.log(var_q / var_p)))
                + 0.5 * dims * mean_sq / var_p)

    # ------------------------------------------------------------------ variational bound terms
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per item, in nats (summed over dims)."""
        q = self.q_mean_variance(x0, self.num_timesteps)
        kl = normal_kl(q.mean, torch.log(q.variance), 0.0, 0.0)
        return kl.flatten(1).sum(1)

    def step_kl(self, x0, xt, t, eps, s=None, variance: VarianceKind = "fixedlarge") -> torch.Tensor:
        """L_{t-1} (or a strided t -> s term) = KL(q(x_s|x_t,x_0) || p_theta(x_s|x_t)) per item, nats."""
        if s is None:
            s = t - 1
        q = self.q_posterior(x0, xt, t, s)
        p = self.p_mean_variance(xt, t, eps, s, variance)
        kl = normal_kl(q.mean, torch.log(q.variance), p.mean, torch.log(p.variance))
        return kl.flatten(1).sum(1)

    def decoder_nll(self, x0, xt, t, eps, variance: VarianceKind = "fixedlarge") -> torch.Tensor:
        """L_0 = -log p(x_0 | x_t) under Eq. 13's discretized decoder, per item, nats.

        t = 1 is the paper's L_0; t > 1 codes x_0 directly from x_t (mean x_hat_0, fitted scale).
        """
        means = self.predict_x0(xt, t, eps)
        scales = self.decoder_scale(t, variance, xt).expand_as(means)
        return -discretized_gaussian_log_likelihood(x0, means=means, scales=scales).flatten(1).sum(1)


def nats_to_bpd(nats: torch.Tensor | float, num_dims: int):
    """Convert nats (per image) to bits per dimension."""
    return nats / (num_dims * math.log(2.0))


def respaced_timesteps(num_steps: int, num_timesteps: int = 1000, *, kind: str = "quadratic",
                       t_end: int = 1, arithmetic: Arithmetic = FLOAT) -> list[int]:
    """A decreasing chain of ``num_steps`` times from T down to ``t_end`` (inclusive).

    ``uniform``: evenly spaced; ``quadratic``: denser near t_end (t ~ u^2), where most bits of a
    DDPM's bound are; ``cubic`` (t ~ u^3): denser still. Returned as ints in (T ... t_end], strictly decreasing, with T first.
    :data:`~ddpm_codec.arithmetic.EXACT` ``arithmetic``: u_i = (n-1-i)/(n-1) and its powers by IEEE division and products only (numpy's
    ``linspace`` and libm's ``pow`` may differ in the last bit between versions and machines, which
    can move a time at a rounding tie; 121 of 192,700 (num_steps, t_end) pairs differ from the
    default path, so files written without it keep it).
    """
    T = num_timesteps
    if not 1 <= t_end <= T:
        raise InputError(f"t_end must be in [1, {T}], got {t_end}")
    if num_steps < 1 or num_steps > T - t_end + 1:
        raise InputError(f"num_steps must be in [1, {T - t_end + 1}], got {num_steps}")
    if num_steps == 1:
        return [T]
    if arithmetic.exact:
        n1 = num_steps - 1
        u = np.array([(n1 - i) / n1 for i in range(num_steps)])
        powers = {"uniform": u, "quadratic": u * u, "cubic": u * u * u}
        if kind not in powers:
            raise InputError(f"unknown spacing {kind!r}; expected 'uniform', 'quadratic' or 'cubic'")
        return _strictly_decreasing([int(round(v)) for v in t_end + powers[kind] * (T - t_end)], t_end)
    u = np.linspace(1.0, 0.0, num_steps)
    if kind == "uniform":
        ts = t_end + u * (T - t_end)
    elif kind == "quadratic":
        ts = t_end + u ** 2 * (T - t_end)
    elif kind == "cubic":
        ts = t_end + u ** 3 * (T - t_end)
    else:
        raise InputError(f"unknown spacing {kind!r}; expected 'uniform', 'quadratic' or 'cubic'")
    return _strictly_decreasing([int(round(v)) for v in ts], t_end)


def _strictly_decreasing(out: list[int], t_end: int) -> list[int]:
    """Rounded times made strictly decreasing, keeping the end points."""
    for i in range(1, len(out)):
        if out[i] >= out[i - 1]:
            out[i] = out[i - 1] - 1
    if out[-1] < t_end:
        # push the tail back up; there is room because num_steps <= T - t_end + 1
        out[-1] = t_end
        for i in range(len(out) - 2, -1, -1):
            if out[i] <= out[i + 1]:
                out[i] = out[i + 1] + 1
    return out
