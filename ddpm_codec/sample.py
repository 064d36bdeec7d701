"""Sampling (Algorithm 2), on the full chain or a respaced chain of K steps."""
from __future__ import annotations

import numpy as np
import torch

from .data import to_uint8
from .diffusion import GaussianDiffusion, VarianceKind, respaced_timesteps


def ancestral_step(diffusion: GaussianDiffusion, x: torch.Tensor, t: int, s: int, eps: torch.Tensor,
                   variance: VarianceKind, gen: torch.Generator) -> torch.Tensor:
    """One step of Algorithm 2 (strided t -> s): x_s ~ p_theta(x_s | x_t) with x_hat_0 clipped, float64."""
    p = diffusion.p_mean_variance(x, t, eps, s, variance, clip=True)
    return p.mean + torch.sqrt(p.variance) * torch.randn(x.shape, generator=gen, dtype=torch.float64)


def reconstruct(eps_fn, diffusion: GaussianDiffusion, x: torch.Tensor, t: int, eps: torch.Tensor, mode: str,
                num_steps: int, seed: int) -> torch.Tensor:
    """An image estimate from x_t (float64, [-1, 1]): x_hat_0 (``denoise``), a sample of
    p_theta(x_0 | x_t) (``ancestral``: Algorithm 2 on ``num_steps`` respaced steps), or the
    deterministic DDIM / probability-flow decode (``flow``). ``eps_fn(x, t)`` is the network;
    ``eps`` its output at (x, t)."""
    if mode == "denoise" or t <= 1:
        return diffusion.denoise(x, t, eps)
    n = min(num_steps, t)
    ts = [int(v) for v in np.unique(np.linspace(t, 1, n).round().astype(int))[::-1]] + [0]
    gen = torch.Generator().manual_seed(seed)
    cur, e = x, eps
    for j, (a, b) in enumerate(zip(ts[:-1], ts[1:])):
        if j > 0:
            e = eps_fn(cur, a)
        x0_hat = diffusion.predict_x0(cur, a, e, clip=True)
        if b == 0:
            return x0_hat
        if mode == "ancestral":
            cur = ancestral_step(diffusion, cur, a, b, e, "fixedsmall", gen)
        else:
            cur = diffusion.ddim_step(cur, a, b, x0_hat)
    raise AssertionError("unreachable: the respaced chain ends at 0")


@torch.no_grad()
def sample_images(net, diffusion: GaussianDiffusion, n: int, *, image_size: int = 32, channels: int = 3,
                  steps: int | None = None, seed: int = 0, device="cpu", variance: VarianceKind = "fixedlarge",
                  progressive: int = 0, batch_size: int = 256, progress: bool = False):
    """Draw ``n`` images with Algorithm 2 on ``steps`` respaced (uniform) steps (default: all T).

    Returns uint8 ``[n, H, W, C]``; with ``progressive = P > 0`` also uint8 ``[n, P, H, W, C]``:
    x_hat_0 (Eq. 15) at P evenly spaced points of the chain, the last one the final sample
    (the paper's Fig. 6). Reproducible for a given ``seed`` on a given device.
    """
    from tqdm.auto import tqdm

    T = diffusion.num_timesteps
    ts = respaced_timesteps(steps or T, T, kind="uniform") + [0]
    snap = set(np.linspace(0, len(ts) - 2, progressive).round().astype(int).tolist()) if progressive else set()
    gen = torch.Generator().manual_seed(seed)
    finals, strips = [], []
    bar = tqdm(total=n * (len(ts) - 1), disable=not progress, unit="img-step", desc="sampling")
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, channels, image_size, image_size), generator=gen, dtype=torch.float64)
        shots = []
        for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
            tt = torch.full((b,), t, dtype=torch.int64)
            eps = net(x.float().to(device), tt.to(device)).double().cpu()
            if s == 0:   # the last step outputs the mean, x_hat_0 (no noise)
                x = diffusion.predict_x0(x, t, eps, clip=True)
                shot = x
            else:
                shot = diffusion.denoise(x, t, eps)
                x = ancestral_step(diffusion, x, t, s, eps, variance, gen)
            if i in snap:
                shots.append(to_uint8(shot))
            bar.update(b)
        finals.append(to_uint8(x))
        if progressive:
            strips.append(np.stack(shots, axis=1))
    bar.close()
    images = np.concatenate(finals)
    if progressive:
        return images, np.concatenate(strips)
    return images
