"""Variational bound of a trained model on data, in bits/dim (paper Sec. 3.3, Table 1, Sec. 4.3).

``nll_bound`` evaluates L = L_T + sum_t L_{t-1} + L_0 term by term, for the dense 1000-step chain
or a respaced chain of S steps (the codec's lossless rate), exactly over the chain's terms (one
x_t draw per term) or as an unbiased Monte-Carlo estimate over sampled terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .diffusion import GaussianDiffusion, VarianceKind, nats_to_bpd

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BoundReport:
    """Per-image bound in bits/dim with its breakdown. Arrays are ``[N]``."""

    prior: np.ndarray          # L_T
    rate: np.ndarray           # sum of the Gaussian KL terms of the chain
    distortion: np.ndarray     # L_0 (-log p(x_0 | x_tau) under Eq. 13's decoder)
    timesteps: list[int]       # the chain, T first
    per_step: np.ndarray | None = None   # [N, S-1] KL of each t_i -> t_{i+1} term (exact mode)

    @property
    def total(self) -> np.ndarray:
        return self.prior + self.rate + self.distortion

    def summary(self) -> dict[str, float]:
        return {"L_T": float(self.prior.mean()), "rate": float(self.rate.mean()),
                "L_0": float(self.distortion.mean()), "total": float(self.total.mean()),
                "num_images": int(len(self.prior)), "num_steps": len(self.timesteps)}

    @classmethod
    def concat(cls, reports: "list[BoundReport]") -> "BoundReport":
        """The reports of consecutive image ranges as one (all over the same chain)."""
        ps = [r.per_step for r in reports]
        return cls(prior=np.concatenate([r.prior for r in reports]), rate=np.concatenate([r.rate for r in reports]),
                   distortion=np.concatenate([r.distortion for r in reports]), timesteps=reports[0].timesteps,
                   per_step=None if any(p is None for p in ps) else np.concatenate(ps))

    def save(self, path, *, first_image: int, fingerprint: str, variance: str) -> None:
        """Per-image terms as an ``.npz`` (``image_index`` counts from ``first_image`` in the dataset)."""
        np.savez(path, prior=self.prior, rate=self.rate, distortion=self.distortion, timesteps=np.array(self.timesteps),
                 per_step=self.per_step if self.per_step is not None else np.zeros((len(self.prior), 0)),
                 image_index=np.arange(first_image, first_image + len(self.prior)), fingerprint=fingerprint,
                 variance=variance)


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


@torch.no_grad()
def nll_bound(eps_fn: EpsFn, diffusion: GaussianDiffusion, x0: torch.Tensor, *,
              timesteps: Sequence[int] | None = None, variance: VarianceKind = "fixedlarge",
              decoder: str = "auto", mc_samples: int | None = None, exact_tail: int = 0, batch_size: int = 250,
              generator: torch.Generator | None = None, seed: int | None = None, first_image: int = 0,
              progress: bool = False) -> BoundReport:
    """The variational bound of ``x0`` ([N, C, H, W] in [-1, 1], exact pixel values) in bits/dim.

    ``timesteps``: a strictly decreasing chain starting at T (default: all T..1). Its last time
    tau is where x_0 is decoded: tau = 1 is the paper's L_0 (Eq. 13); tau > 1 decodes x_0
    directly from x_tau (mean x_hat_0, scale sqrt(x0_mse[tau])). ``mc_samples``: estimate the
    KL sum from that many uniformly sampled terms per image (unbiased), instead of all of them;
    ``exact_tail``: with ``mc_samples``, the last (small-t) terms are always evaluated and only the
    others sampled. The terms near t = 1 are the largest (the shipped model's last 20 of 1000 carry
    75% of the rate): sampled uniformly they make the estimate heavy-tailed — usually low, rarely
    far too high (measured: 4 terms/image on 500 images read 3.73 where the exact bound is 4.20).
    ``seed``: each batch draws its noise from a generator of its own, seeded by ``seed`` and the
    position of its first image in the data set (``first_image`` + its offset in ``x0``), instead of
    one ``generator`` for all: a batch's terms then depend on where it sits in the data set, not on
    which process or call evaluates it (sharded runs, :mod:`ddpm_codec.distributed`, and runs split
    with ``--start`` at multiples of ``batch_size`` give a one-process run's numbers).
    """
    T = diffusion.num_timesteps
    ts = list(range(T, 0, -1)) if timesteps is None else [int(t) for t in timesteps]
    if ts[0] != T or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 1:
        raise ValueError("timesteps must be strictly decreasing, start at T and end at >= 1")
    n, dims = x0.shape[0], int(np.prod(x0.shape[1:]))
    gen = generator or torch.Generator().manual_seed(0)
    pairs = list(zip(ts[:-1], ts[1:]))
    prior = np.zeros(n)
    rate = np.zeros(n)
    dist = np.zeros(n)
    per_step = np.zeros((n, len(pairs))) if mc_samples is None else None
    from tqdm.auto import tqdm

    total_work = n * (len(pairs) if mc_samples is None else mc_samples + min(exact_tail, len(pairs))) + n
    bar = tqdm(total=total_work, disable=not progress, unit="img-term", desc="bound")
    for sl in _batches(n, batch_size):
        if seed is not None:
            gen = torch.Generator().manual_seed(batch_seed(seed, first_image + sl.start))
        xb = x0[sl].double()
        b = xb.shape[0]
        prior[sl] = nats_to_bpd(diffusion.prior_kl(xb), dims).numpy()

        def term(idx: torch.Tensor) -> torch.Tensor:
            t = torch.tensor([pairs[i][0] for i in idx.tolist()], dtype=torch.int64)
            s = torch.tensor([pairs[i][1] for i in idx.tolist()], dtype=torch.int64)
            noise = torch.randn(xb.shape, generator=gen, dtype=torch.float64)
            xt = diffusion.q_sample(xb, t, noise).float()
            eps = eps_fn(xt, t).double()
            return nats_to_bpd(diffusion.step_kl(xb, xt.double(), t, eps, s, variance), dims)

        if pairs:
            if mc_samples is None:
                for i in range(len(pairs)):
                    per_step[sl, i] = term(torch.full((b,), i)).numpy()
                    bar.update(b)
                rate[sl] = per_step[sl].sum(1)
            else:
                tail = min(max(0, int(exact_tail)), len(pairs))
                head = len(pairs) - tail
                exact = np.zeros(b)
                for i in range(head, len(pairs)):
                    exact += term(torch.full((b,), i)).numpy()
                    bar.update(b)
                acc = np.zeros(b)
                if head:
                    for _ in range(mc_samples):
                        idx = torch.randint(head, (b,), generator=gen)
                        acc += term(idx).numpy() * head
                        bar.update(b)
                rate[sl] = exact + acc / mc_samples
        tau = ts[-1]
        noise = torch.randn(xb.shape, generator=gen, dtype=torch.float64)
        xt = diffusion.q_sample(xb, tau, noise).float()
        eps = eps_fn(xt, torch.full((b,), tau, dtype=torch.int64)).double()
        dist[sl] = nats_to_bpd(diffusion.decoder_nll(xb, xt.double(), tau, eps, variance), dims).numpy()
        bar.update(b)
    bar.close()
    return BoundReport(prior=prior, rate=rate, distortion=dist, timesteps=ts, per_step=per_step)


def batch_seed(seed: int, first_image: int) -> int:
    """The torch seed of a seeded :func:`nll_bound`'s batch that starts at image ``first_image``."""
    from .coding.prng import derive_key

    return derive_key("nll-batch", int(seed), int(first_image)) & ((1 << 63) - 1)


@dataclass
class X0Stats:
    """Per-time statistics of the network's x_0 prediction on calibration images (``[T + 1]``)."""

    mse: np.ndarray          # E|x_0 - x_hat_0(x_t)|^2 per dim (unclipped x_hat_0); entry 0 = 0
    shrink: np.ndarray       # lambda_t: least-squares factor of clip(x_hat_0) about the data mean; entry 0 = 1
    data_mean: np.ndarray    # [C] per-channel mean of the calibration images (model range)


@torch.no_grad()
def fit_x0_stats(eps_fn: EpsFn, diffusion: GaussianDiffusion, x0: torch.Tensor, *,
                 times: Sequence[int] | None = None, batch_size: int = 250,
                 generator: torch.Generator | None = None, progress: bool = False) -> X0Stats:
    """``mse`` as :func:`fit_x0_mse`, and ``shrink``: lambda_t = <y, d> / <y, y> with
    y = clip(x_hat_0) - m, d = x_0 - m (m the per-channel data mean), the factor minimising
    E|m + lambda (clip(x_hat_0) - m) - x_0|^2, clamped to [0, 1]. Both are evaluated at ``times``
    (default: 64 log-spaced) from the same x_t draws, and interpolated over log t."""
    T = diffusion.num_timesteps
    if times is None:
        times = sorted({int(round(v)) for v in np.geomspace(1, T, 64)})
    gen = generator or torch.Generator().manual_seed(1)
    from tqdm.auto import tqdm

    mean = x0.double().mean(dim=(0, 2, 3))
    m = mean.reshape(1, -1, 1, 1)
    mses, lams = [], []
    for t in tqdm(times, disable=not progress, desc="fit x0 stats", unit="t"):
        se, cnt, yd, yy = 0.0, 0, 0.0, 0.0
        for sl in _batches(x0.shape[0], batch_size):
            xb = x0[sl]
            noise = torch.randn(xb.shape, generator=gen)
            xt = diffusion.q_sample(xb, t, noise)
            x0_hat = diffusion.predict_x0(xt, t, eps_fn(xt, torch.full((xb.shape[0],), t, dtype=torch.int64)))
            se += float(((x0_hat - xb.double()) ** 2).sum())
            cnt += xb.numel()
            y = x0_hat.clamp(-1, 1) - m
            yd += float((y * (xb.double() - m)).sum())
            yy += float((y * y).sum())
        mses.append(se / cnt)
        lams.append(min(1.0, max(0.0, yd / yy)) if yy > 0 else 1.0)
    logt = np.log(np.arange(1, T + 1))
    mse = np.exp(np.interp(logt, np.log(times), np.log(np.maximum(np.array(mses), 1e-12))))
    lam = np.interp(logt, np.log(times), np.array(lams))
    return X0Stats(mse=np.concatenate([[0.0], mse]), shrink=np.concatenate([[1.0], lam]), data_mean=mean.numpy())


@torch.no_grad()
def fit_x0_mse(eps_fn: EpsFn, diffusion: GaussianDiffusion, x0: torch.Tensor, *,
               times: Sequence[int] | None = None, batch_size: int = 250,
               generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
    """E|x_0 - x_hat_0(x_t)|^2 per dim for every t (``[T + 1]``, entry 0 = 0), on images ``x0``.

    Evaluated at ``times`` (default: 64 log-spaced times) and interpolated in log-log space.
    """
    return fit_x0_stats(eps_fn, diffusion, x0, times=times, batch_size=batch_size, generator=generator,
                        progress=progress).mse
