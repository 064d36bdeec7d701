"""What each coding step costs beyond what it delivers (issue 28), and the chunk counts the coder sends.

    python benchmarks/rcc_excess.py -n 8                       # profile 13: bits against KL and log2 q/p
    python benchmarks/rcc_excess.py -n 80 --start 100 --counts counts.json   # and every step's counts

For each shared CIFAR-10 test image (lossless, seed 0) and each coding step: the bits it costs (its chunk
count's and its path's code lengths, ``EncodeResult.accounting``), the realised KL(q‖p), and log2 q/p at the
sample the coder sent (``StepReport.selected_log_w_bits``). Under an exact model the rest of the chain costs
exactly log2 q/p less, pointwise, so bits − log2 q/p is the step's true excess; bits − KL also counts how
far the sample lies from q's typical set. Prints the ratios for large steps (KL > 100 bits) and the rest.

``--counts``: also writes every step's sent count, the encoder's own count before snapping and the
decoder's prediction (what ``COUNT_MODEL_2`` was fitted to, images 100-179).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ddpm_codec.coding.rcc as rcc
from ddpm_codec import codec
from ddpm_codec.coding.rcc import bitstream, search
from ddpm_codec.models.registry import resolve_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LARGE = 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--profile", type=int, default=None, help="default: the model's default profile")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE: a setting changed from the profile's")
    ap.add_argument("--counts", default=None, help="write every step's counts and predictions here (JSON)")
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(None)
    over = {k: (v if k in ("selection", "schedule_kind", "variance") else int(v))
            for k, v in (kv.split("=", 1) for kv in a.set)}
    settings = codec.settings_with(a.profile, model=model, **over)
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][a.start:a.start + a.n]
    reports, counts, natural = [], [], {}
    encode_step, snap, write_counts = rcc.encode_step, search.snap_chunks, bitstream.write_counts

    def encode_step_rec(*args, **kw):
        out = encode_step(*args, **kw)
        reports.append(out[2])
        return out

    def snap_rec(nc, pred, cfg, dim):
        natural["nc"] = np.asarray(nc).tolist()
        return snap(nc, pred, cfg, dim)

    def write_counts_rec(enc, nc, dim, cfg, pred):
        counts[-1].append(dict(nc=np.asarray(nc).tolist(), natural=natural.pop("nc", None),
                               pred=None if pred is None else np.asarray(pred, float).ravel().tolist()))
        return write_counts(enc, nc, dim, cfg, pred)

    rcc.encode_step, search.snap_chunks, bitstream.write_counts = encode_step_rec, snap_rec, write_counts_rec
    kl, logw, bits = [], [], []
    try:
        for i, img in enumerate(imgs):
            reports.clear()
            counts.append([])
            res = codec.encode(img, model, settings=settings, seed=0, metrics=False)
            k = np.array([float(r.kl_bits.sum()) for r in reports])
            w = np.array([float(r.selected_log_w_bits.sum()) for r in reports])
            b = np.array([s.count_bits + s.index_bits for s in res.accounting.steps])
            kl.append(k), logw.append(w), bits.append(b)
            print(f"image {a.start + i}: {len(res.data)} bytes, bits - KL {b.sum() - k.sum():.1f}, "
                  f"bits - log2 q/p {b.sum() - w.sum():.1f}", flush=True)
    finally:
        rcc.encode_step, search.snap_chunks, bitstream.write_counts = encode_step, snap, write_counts
    kl, logw, bits = np.array(kl), np.array(logw), np.array(bits)
    n = len(imgs)
    for name, m in (("KL > 100 bits", kl > LARGE), ("3 < KL <= 100 bits", (kl > 3) & (kl <= LARGE)), ("all", kl >= 0)):
        print(f"{name}: bits / KL {bits[m].sum() / kl[m].sum():.4f}, bits / log2 q/p {bits[m].sum() / logw[m].sum():.4f}, "
              f"log2 q/p / KL {logw[m].sum() / kl[m].sum():.4f}, excess over log2 q/p {(bits - logw)[m].sum() / n:.1f} "
              f"bits per image")
    if a.counts:
        Path(a.counts).write_text(json.dumps([dict(image=a.start + i, steps=c) for i, c in enumerate(counts)]))


if __name__ == "__main__":
    main()
