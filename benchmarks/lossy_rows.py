"""The default lossy files at exact reverse times (format 4, issue 28): bytes, realised KL, PSNR per image.

    python benchmarks/lossy_rows.py -n 250 --start 0 --rows 900,1000 --out a.npz    # two of these side by side

For each of the shared CIFAR-10 test images ``start .. start+n-1`` and each row N, ``encode --steps N`` with the
default profile and format (a file that stops exactly at reverse time N): its size, the realised KL of its
steps (Σ KL(q‖p) of the chain it walked) and the PSNR of what a decoder shows there (the encoder's record of
that step). Prints the mean per row: bits/dim, KL bits/dim, their ratio, PSNR of the mean MSE.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ddpm_codec import codec
from ddpm_codec.models.registry import resolve_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--rows", default="900")
    ap.add_argument("--profile", type=int, default=None, help="default: the model's default profile")
    ap.add_argument("--format", type=int, default=None, dest="fmt", help="default: the codec's (4 for lossy)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None, help="per-image arrays (.npz)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(None)
    settings = codec.PROFILES[a.profile] if a.profile else None
    rows = [int(r) for r in a.rows.split(",")]
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][a.start:a.start + a.n]
    out = {k: np.zeros((len(imgs), len(rows))) for k in ("bytes", "kl_bits", "mse", "reverse_time")}
    for i, img in enumerate(imgs):
        for j, row in enumerate(rows):
            res = codec.encode(img, model, settings=settings, max_reverse_time=row, format_version=a.fmt)
            last = res.steps[-1]
            out["bytes"][i, j] = len(res.data)
            out["kl_bits"][i, j] = sum(r.kl_bits for r in res.steps)
            out["mse"][i, j] = last.rmse ** 2
            out["reverse_time"][i, j] = last.reverse_time
        print(f"image {a.start + i}: " + ", ".join(f"{int(out['reverse_time'][i, j])}: {int(out['bytes'][i, j])} B"
                                                   for j in range(len(rows))), flush=True)
        if a.out:
            np.savez(a.out, rows=np.array(rows), start=a.start, **{k: v[:i + 1] for k, v in out.items()})
    dims = imgs[0].size
    for j, row in enumerate(rows):
        bpd = 8 * out["bytes"][:, j].mean() / dims
        kl = out["kl_bits"][:, j].mean() / dims
        psnr = 10 * np.log10(255.0 ** 2 / out["mse"][:, j].mean())
        print(f"row {row}: {bpd:.4f} bits/dim, KL {kl:.4f}, actual/KL {bpd / kl:.3f}, PSNR of the mean MSE {psnr:.2f} dB "
              f"({len(imgs)} images; reverse times {sorted({int(x) for x in out['reverse_time'][:, j]})})")


if __name__ == "__main__":
    main()
