"""The exact-arithmetic network (models/exact.py) against the float network.

    python benchmarks/exact.py agreement -n 4 --draws 2      # |ε̂_exact − ε̂_float|, ε-MSE vs true noise
    python benchmarks/exact.py timing --reps 10              # time per call, ratios, 1 and 2 threads
    python benchmarks/exact.py portability                   # sha256 of outputs under other ISAs/threads
    python benchmarks/exact.py digest --which exact|float    # (used by portability, one process)

Data: the first ``-n`` CIFAR-10 *test* images of ../shared/data/cifar10-subset.npz (read, never
copied), x = v/127.5 − 1, x_t = √ᾱ_t x + √(1−ᾱ_t) ε with ε from torch.Generator seeds 0.. .
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset.npz"
TIMES = (1, 10, 100, 500, 1000)


def _load(spec):
    import torch

    from ddpm_codec.models.exact import ExactUNet
    from ddpm_codec.models.registry import resolve_model

    m = resolve_model(spec)
    return m, ExactUNet.from_model(m), torch


def _images(n: int):
    import numpy as np
    import torch

    v = np.load(DATA)["test_images"][:n]
    return torch.from_numpy(v).permute(0, 3, 1, 2).double() / 127.5 - 1.0


def agreement(args) -> None:
    m, ex, torch = _load(args.model)
    torch.set_num_threads(args.threads)
    x0 = _images(args.n)
    ac = m.diffusion.alphas_cumprod
    rows = []
    for t in args.times:
        a = float(ac[t])
        mx = se = msf = mse = 0.0
        cnt = 0
        for d in range(args.draws):
            g = torch.Generator().manual_seed(1000 * t + d)
            noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            xt = (a ** 0.5 * x0 + (1 - a) ** 0.5 * noise).float()
            ef = m.eps(xt, t).double()
            ee = ex(xt, t)
            mx = max(mx, float((ef - ee).abs().max()))
            se += float((ef - ee).pow(2).sum())
            msf += float((ef - noise).pow(2).sum())
            mse += float((ee - noise).pow(2).sum())
            cnt += noise.numel()
        rows.append({"t": t, "max_abs_diff": mx, "rms_diff": (se / cnt) ** 0.5, "eps_mse_float": msf / cnt,
                     "eps_mse_exact": mse / cnt, "rel_change": (mse - msf) / msf})
    print(f"{args.n} test images x {args.draws} noise draws, model {m.name}, config {ex.config.to_dict()}")
    print("| t | max abs diff | RMS diff | ε-MSE float | ε-MSE exact | relative change |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['t']} | {r['max_abs_diff']:.2e} | {r['rms_diff']:.2e} | {r['eps_mse_float']:.6g} | "
              f"{r['eps_mse_exact']:.6g} | {r['rel_change']:+.2e} |")
    b = ex.bounds
    print("largest log2 bounds:", {k: round(v, 2) for k, v in sorted(b.items(), key=lambda kv: -kv[1])[:3]})
    convs = {k: v for k, v in b.items() if not any(s in k for s in ("norm", ".qk", ".pv"))}
    print("largest conv/linear log2 bound:", max(convs.items(), key=lambda kv: kv[1]))


def timing(args) -> None:
    """Float, exact with torch's elementwise ops, exact with the compiled kernels: interleaved."""
    from ddpm_codec.models.exact import ExactUNet

    m, ex, torch = _load(args.model)
    ex_torch = ExactUNet(m.net, kernels="torch")
    x0 = _images(4)
    print(f"model {m.name}; min over {args.reps} interleaved reps (ms per call); t = 500")
    print("| threads | batch | float ms | exact ms (torch elementwise) | exact ms (compiled kernels) | exact / float |")
    print("|---|---|---|---|---|---|")
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        for b in args.batches:
            x = x0[:b].float()
            tf, tt, te = [], [], []
            m.eps(x, 500), ex(x, 500), ex_torch(x, 500)
            for _ in range(args.reps):
                t0 = time.perf_counter(); m.eps(x, 500); t1 = time.perf_counter()
                ex_torch(x, 500); t2 = time.perf_counter()
                ex(x, 500); t3 = time.perf_counter()
                tf.append(t1 - t0); tt.append(t2 - t1); te.append(t3 - t2)
            f, et, e = min(tf) * 1e3, min(tt) * 1e3, min(te) * 1e3
            print(f"| {threads} | {b} | {f:.1f} | {et:.1f} | {e:.1f} | {e / f:.2f} |")


def digest(args) -> None:
    m, ex, torch = _load(args.model)
    torch.set_num_threads(args.threads)
    x = _images(2)
    g = torch.Generator().manual_seed(7)
    x = (0.8 * x + 0.6 * torch.randn(x.shape, generator=g, dtype=torch.float64)).float()
    h = hashlib.sha256()
    for t in (1, 10, 100, 500, 1000):
        out = ex(x, t) if args.which == "exact" else m.eps(x, t).double()
        h.update(out.numpy().tobytes())
    print(h.hexdigest())


def portability(args) -> None:
    settings = [("default", {}, 1), ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, 1),
                ("ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, 1),
                ("2 threads (OMP_NUM_THREADS=2)", {"OMP_NUM_THREADS": "2"}, 2),
                ("SSE41 + default ATen + 2 threads",
                 {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"}, 2)]
    print("| setting | exact sha256 | float sha256 |")
    print("|---|---|---|")
    seen = {"exact": set(), "float": set()}
    for label, extra, threads in settings:
        env = dict(os.environ, **extra)
        hs = {}
        for which in ("exact", "float"):
            r = subprocess.run([sys.executable, __file__, "digest", "--which", which, "--threads", str(threads)]
                               + (["--model", args.model] if args.model else []),
                               env=env, capture_output=True, text=True, check=True)
            hs[which] = r.stdout.strip()
            seen[which].add(hs[which])
        print(f"| {label} | `{hs['exact'][:16]}` | `{hs['float'][:16]}` |")
    print(f"distinct: exact {len(seen['exact'])}, float {len(seen['float'])}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("agreement", "timing", "portability", "digest"):
        s = sub.add_parser(name)
        s.add_argument("--model", default=None)
        s.add_argument("--threads", type=int, default=1)
        if name == "agreement":
            s.add_argument("-n", type=int, default=4)
            s.add_argument("--draws", type=int, default=2)
            s.add_argument("--times", type=int, nargs="+", default=list(TIMES))
        if name == "timing":
            s.add_argument("--reps", type=int, default=10)
            s.add_argument("--batches", type=int, nargs="+", default=[1, 4])
            s.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
        if name == "digest":
            s.add_argument("--which", choices=("exact", "float"), default="exact")
    args = p.parse_args(argv)
    {"agreement": agreement, "timing": timing, "portability": portability, "digest": digest}[args.cmd](args)


if __name__ == "__main__":
    main()
