"""Before/after from two rd-curve stores of the same images (issue 28): each table row's actual and KL rate,
their ratio and PSNR, and the paired per-image differences (mean and standard error).

    python benchmarks/rd_compare.py before.h5 after.h5
"""
from __future__ import annotations

import argparse

import h5py
import numpy as np

from ddpm_codec.eval.rd import GROUP

ROWS = (100, 500, 800, 900, 1000)


def load(path: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[GROUP][k][()] for k in f[GROUP].keys()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    a = ap.parse_args()
    runs = {"before": load(a.before), "after": load(a.after)}
    n = min(len(d["image_index"]) for d in runs.values())
    if not all(np.array_equal(d["image_index"][:n], runs["before"]["image_index"][:n]) for d in runs.values()):
        raise SystemExit("the stores hold other images")
    rt = runs["before"]["reverse_time"]
    if not np.array_equal(rt, runs["after"]["reverse_time"]):
        raise SystemExit("the stores' chains differ")
    print(f"{n} images")

    def at(d, row, key):
        k = np.nonzero(rt <= row)[0][-1]
        return d[key][:n, k], int(rt[k])

    for row in ROWS:
        for name, d in runs.items():
            act, step = at(d, row, "cum_bpd")
            kl, _ = at(d, row, "cum_kl_bpd")
            mse = np.mean(at(d, row, "rmse")[0] ** 2)
            print(f"row {row} (step {step}) {name}: actual {act.mean():.4f} KL {kl.mean():.4f} "
                  f"ratio {act.mean() / kl.mean():.4f} PSNR of the mean MSE {10 * np.log10(255 ** 2 / mse):.2f} dB")
        diff = at(runs["after"], row, "cum_bpd")[0] - at(runs["before"], row, "cum_bpd")[0]
        print(f"   after - before, actual: {diff.mean():+.4f} +- {diff.std(ddof=1) / np.sqrt(n):.4f} bits/dim")
    for key in ("lossless_bpd", "lossless_context_bpd", "lossless_model_bound_bpd"):
        if all(key in d for d in runs.values()):
            b, c = runs["before"][key][:n], runs["after"][key][:n]
            print(f"{key}: before {b.mean():.4f} after {c.mean():.4f} "
                  f"diff {(c - b).mean():+.4f} +- {(c - b).std(ddof=1) / np.sqrt(n):.4f}")


if __name__ == "__main__":
    main()
