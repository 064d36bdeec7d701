"""Model presets: size, training speed and sampling speed, printed as a markdown table.

    python benchmarks/models.py [--presets NAME ...] [--threads N] [--train-steps K]
                                [--sample-steps K] [--budget S] [--max-step-s S] [--no-cuda]

For each preset in ``PRESETS``: the parameter count; training steps/s at batch 64 (``Trainer``
steps: batching, Algorithm 1's loss, backward, Adam, EMA; one warm-up step, then up to
``--train-steps`` timed steps or ``--budget`` seconds, whichever comes first); and sampling
ms per step (Algorithm 2 via ``sample_images``: one network call + the posterior step) at batch
1 and 16. On CPU, and on CUDA too when it is available (bf16 autocast in training, as the
trainer does). If a preset's warm-up training step alone takes longer than ``--max-step-s``,
its training speed is reported from that single step, marked ``~`` (it includes one-off costs).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from ddpm_codec.diffusion import GaussianDiffusion, make_betas
from ddpm_codec.models.presets import PRESETS
from ddpm_codec.models.unet import UNet, count_parameters
from ddpm_codec.sample import sample_images
from ddpm_codec.train import TrainConfig, Trainer

BATCH = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(name: str, device: torch.device, steps: int, budget: float, max_step_s: float):
    """(steps/s, number of timed steps; 0: from the warm-up step) for ``Trainer.train_step`` at
    batch 64 on random images."""
    cfg = PRESETS[name]
    images = np.random.default_rng(0).integers(0, 256, (256, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    tcfg = TrainConfig(steps=10 ** 9, batch_size=BATCH, warmup=1, log_every=10 ** 9, ckpt_every=10 ** 9)
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(cfg, images, run_dir, tcfg, device=device, progress=False)
        t0 = time.perf_counter()
        tr.train_step()
        _sync(device)
        warm = time.perf_counter() - t0
        if warm > max_step_s:
            return 1.0 / warm, 0
        n, t0 = 0, time.perf_counter()
        while n < steps and (n == 0 or time.perf_counter() - t0 < budget):
            tr.train_step()
            _sync(device)
            n += 1
        return n / (time.perf_counter() - t0), n


@torch.no_grad()
def sample_ms_per_step(name: str, device: torch.device, batch: int, steps: int) -> float:
    cfg = PRESETS[name]
    net = UNet(cfg).to(device).eval()
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    sample_images(net, diffusion, batch, image_size=cfg.image_size, steps=1, device=device, batch_size=batch)
    _sync(device)
    t0 = time.perf_counter()
    sample_images(net, diffusion, batch, image_size=cfg.image_size, steps=steps, device=device, batch_size=batch)
    _sync(device)
    return 1000 * (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps at most")
    ap.add_argument("--sample-steps", type=int, default=5, help="timed sampling steps")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed training steps at most")
    ap.add_argument("--max-step-s", type=float, default=60.0,
                    help="if one warm-up training step takes longer, report from that step only")
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# Model presets: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {args.threads} torch thread(s), load average {load:.2f} at start"
          + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))
    print()
    header = ["preset", "params"]
    for d in devices:
        header += [f"train steps/s b{BATCH} ({d.type})", f"train img/s ({d.type})",
                   f"sample ms/step b1 ({d.type})", f"sample ms/step b16 ({d.type})"]
    rows, timed = [], []
    results = {}
    for name in args.presets:
        with torch.device("meta"):
            n_params = count_parameters(UNet(PRESETS[name]))
        row = [name, f"{n_params / 1e6:.2f}M"]
        for d in devices:
            sps, n_timed = train_speed(name, d, args.train_steps, args.budget, args.max_step_s)
            timed.append(f"{name} ({d.type}): {n_timed or 'warm-up only'}")
            b1 = sample_ms_per_step(name, d, 1, args.sample_steps)
            b16 = sample_ms_per_step(name, d, 16, args.sample_steps)
            results[(name, d.type)] = (sps, b1, b16)
            mark = "" if n_timed else "~"
            row += [f"{mark}{sps:.3g}", f"{mark}{sps * BATCH:.3g}", f"{b1:.3g}", f"{b16:.3g}"]
        rows.append(row)
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"Timed training steps (after one warm-up step): {'; '.join(timed)}. Sampling: "
          f"{args.sample_steps} timed steps after a 1-step warm-up call.")
    # ratios are less sensitive to the machine's load than absolute numbers
    ref = "cpu-small" if ("cpu-small", "cpu") in results else args.presets[0]
    print()
    print(f"Ratios on CPU (cost relative to {ref}; batch 16 vs 16 x batch 1 per image):")
    print()
    print("| preset | train time/step ÷ " + ref + " | sample time/step b1 ÷ " + ref
          + " | b16 ms/img ÷ b1 ms/img |")
    print("|---|---|---|---|")
    r_sps, r_b1, _ = results[(ref, "cpu")]
    for name in args.presets:
        sps, b1, b16 = results[(name, "cpu")]
        print(f"| {name} | {r_sps / sps:.3g} | {b1 / r_b1:.3g} | {b16 / 16 / b1:.3g} |")


if __name__ == "__main__":
    main()
