"""What ``encode --effort E`` buys: the smallest of E seeds' files, lossless and at ``--steps 900`` (issue 28).

    python benchmarks/effort.py collect -n 20 --start 0 --seeds 8 --out e0.json     # two of these side by side
    python benchmarks/effort.py summary e0.json e20.json                              # E = 1, 2, 4, 8
    python benchmarks/effort.py time -n 6 --efforts 1,2,4                            # wall time, interleaved
    python benchmarks/effort.py split -n 8 --seeds 4                                  # what moves between seeds

``collect``: for each shared CIFAR-10 test image, the default lossless file and the default ``--steps 900``
file (exact stop) with each seed 0..M-1 (one thread): bytes, and for the lossy file its realised KL (Σ KL(q‖p)
of the chain it walked) and the MSE of what a decoder shows. ``encode(..., effort=E)`` keeps the smallest of
seeds 0..E-1 (a seed other than 0 costs its byte, inside the length), so ``summary`` reads effort E off the
first E seeds: mean bits/dim, paired change against seed 0 (± standard error over the images); for the lossy
files also actual/KL and the PSNR of the mean MSE of the kept files. ``time``: ``encode(img, effort=E)`` for each
E in turn per image (after one warm-up), the wall seconds' ratio to E = 1 (all threads; the tries run in lanes).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from ddpm_codec.models.registry import resolve_model

from ddpm_codec import codec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _images(a) -> np.ndarray:
    return np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][a.start:a.start + a.n]


def collect(a) -> None:
    torch.set_num_threads(1)
    model = resolve_model(None)
    out = []
    for i, img in enumerate(_images(a)):
        lossless, lossy = [], []
        for s in range(a.seeds):
            lossless.append(len(codec.encode(img, model, seed=s, metrics=False).data))
            r = codec.encode(img, model, seed=s, max_reverse_time=a.steps)
            lossy.append(dict(bytes=len(r.data), kl_bits=sum(x.kl_bits for x in r.steps), mse=r.steps[-1].rmse ** 2,
                              reverse_time=r.steps[-1].reverse_time))
        out.append(dict(image=a.start + i, dims=int(img.size), lossless=lossless, lossy=lossy, steps=a.steps))
        print(a.start + i, lossless, [d["bytes"] for d in lossy], flush=True)
        Path(a.out).write_text(json.dumps(out))


def _kept(sizes: list[int], e: int) -> int:
    """The seed ``effort=e`` keeps: the smallest of the first e (the first of equals, as ``min`` does)."""
    return min(range(e), key=lambda s: sizes[s])


def summary(a) -> None:
    rows = [r for f in a.files for r in json.loads(Path(f).read_text())]
    dims = rows[0]["dims"]
    m = min(len(r["lossless"]) for r in rows)
    print(f"{len(rows)} images, seeds 0..{m - 1}; lossy files at --steps {rows[0]['steps']}")
    print("| effort | lossless bits/dim | vs effort 1 (± s.e.) | lossy bits/dim | vs effort 1 | actual/KL | "
          "PSNR of the mean MSE |")
    print("|---|---|---|---|---|---|---|")
    base_ll = np.array([r["lossless"][0] for r in rows], float)
    base_ly = np.array([r["lossy"][0]["bytes"] for r in rows], float)
    e = 1
    while e <= m:
        ll = np.array([r["lossless"][_kept(r["lossless"], e)] for r in rows], float)
        ly_rec = [r["lossy"][_kept([d["bytes"] for d in r["lossy"]], e)] for r in rows]
        ly = np.array([d["bytes"] for d in ly_rec], float)
        kl = np.mean([d["kl_bits"] for d in ly_rec])
        psnr = 10 * math.log10(255.0 ** 2 / np.mean([d["mse"] for d in ly_rec]))
        d_ll, d_ly = 8 * (ll - base_ll) / dims, 8 * (ly - base_ly) / dims
        se = lambda d: d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        print(f"| {e} | {8 * ll.mean() / dims:.4f} | {d_ll.mean():+.4f} ± {se(d_ll):.4f} | {8 * ly.mean() / dims:.4f} | "
              f"{d_ly.mean():+.4f} ± {se(d_ly):.4f} | {8 * ly.mean() / kl:.3f} | {psnr:.2f} |")
        e *= 2


def split(a) -> None:
    """Which parts of a lossless file move from seed to seed: per image and seed, the accounting's x_0 bits,
    the path bits of the large steps (KL > 100 bits) and of the others, and the counts; printed, each part's
    standard deviation across seeds within an image (pooled over the images) and the correlation of x_0 with
    the large steps' indices."""
    torch.set_num_threads(1)
    model = resolve_model(None)
    parts = {k: [] for k in ("file", "x0", "large-step indices", "small-step indices", "counts")}
    for img in _images(a):
        rows = {k: [] for k in parts}
        for s in range(a.seeds):
            r = codec.encode(img, model, seed=s, metrics=False)
            large = {rec.t for rec in r.steps if rec.kl_bits > 100}
            rows["file"].append(8 * len(r.data))
            rows["x0"].append(r.accounting.x0_bits)
            rows["large-step indices"].append(sum(b.index_bits for b in r.accounting.steps if b.t in large))
            rows["small-step indices"].append(sum(b.index_bits for b in r.accounting.steps if b.t not in large))
            rows["counts"].append(sum(b.count_bits for b in r.accounting.steps))
        for k, v in rows.items():
            parts[k].append(np.array(v) - np.mean(v))   # within the image
    n = len(parts["file"])
    for k, v in parts.items():
        sd = math.sqrt(np.concatenate(v).var() * a.seeds / (a.seeds - 1))
        print(f"{k}: ±{sd:.1f} bits across seeds ({n} images, {a.seeds} seeds)")
    c = np.corrcoef(np.concatenate(parts["x0"]), np.concatenate(parts["large-step indices"]))[0, 1]
    print(f"correlation of x_0 with the large steps' indices: {c:+.2f}")


def timing(a) -> None:
    model = resolve_model(None)
    efforts = [int(x) for x in a.efforts.split(",")]
    imgs = _images(a)
    codec.encode(imgs[0], model, metrics=False)   # the candidate pool and the exact network, built once
    secs = {e: [] for e in efforts}
    for img in imgs:
        for e in efforts:
            t0 = time.perf_counter()
            codec.encode(img, model, effort=e, metrics=False)
            secs[e].append(time.perf_counter() - t0)
    base = np.array(secs[efforts[0]])
    for e in efforts:
        r = np.array(secs[e]) / base
        print(f"effort {e}: wall time {r.mean():.2f}x effort {efforts[0]}'s (per image {np.round(r, 2).tolist()}; "
              f"{torch.get_num_threads()} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    t = sub.add_parser("time")
    sp = sub.add_parser("split")
    sp.add_argument("--seeds", type=int, default=4)
    for p in (c, t, sp):
        p.add_argument("-n", type=int, default=6)
        p.add_argument("--start", type=int, default=0)
        p.add_argument("--data", default=str(DATA))
    c.add_argument("--seeds", type=int, default=8)
    c.add_argument("--steps", type=int, default=900)
    c.add_argument("--out", required=True)
    t.add_argument("--efforts", default="1,2,4")
    s = sub.add_parser("summary")
    s.add_argument("files", nargs="+")
    a = ap.parse_args()
    {"collect": collect, "summary": summary, "time": timing, "split": split}[a.cmd](a)


if __name__ == "__main__":
    main()
