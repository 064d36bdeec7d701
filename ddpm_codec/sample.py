"""Sampling (Algorithm 2), on the full chain or a respaced chain of K steps."""
from __future__ import annotations

import numpy as np
import torch

from .data import to_uint8
from .diffusion import GaussianDiffusion, VarianceKind, respaced_timesteps


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
                p = diffusion.p_mean_variance(x, t, eps, s, variance, clip=True)
                x = p.mean + torch.sqrt(p.variance) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
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
