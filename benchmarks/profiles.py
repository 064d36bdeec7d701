"""Codec profiles side by side on the same images, image by image (lossless files).

    python benchmarks/profiles.py -n 24 3 4          # default model, first 24 CIFAR-10 test images
    python benchmarks/profiles.py -n 12 3 --set log2_candidates=15 --set rate_percent=115
    python benchmarks/profiles.py -n 24 6 6:reuse_bits=5 6:reuse_bits=7   # per-run overrides
    python benchmarks/profiles.py -n 20 9 10 --decode --threads 2         # decode too (bit-exact check)

Prints per profile (or profile with overrides) the mean file size in bits/dim, the same without
each file's header and trailer (a changed value makes an explicit schedule, 7 bytes longer than a
profile id), encode seconds per image, and for each one after the first the paired differences
to the first (± standard error over images; whole files and, in bits per image, the bodies
without header and trailer) and the encode-time ratio. Encodes alternate
image by image so that machine noise hits all of them alike.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ddpm_codec import codec
from ddpm_codec.coding import container
from ddpm_codec.models.registry import resolve_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+", help="profile id, or id:KEY=VALUE[,KEY=VALUE] for one run's overrides")
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every profile after the first")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", default=None)
    ap.add_argument("--decode", action="store_true", help="also decode every file (checked bit-exact) and time it")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (float profiles force 1 while coding)")
    ap.add_argument("--save", help="also write the per-image arrays (bits/dim, body, seconds) to this .npz")
    ap.add_argument("--warmup", action="store_true",
                    help="first code (and decode) image 0 once per profile, untimed: the candidate pool and the "
                         "compiled kernels are built before any timing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = resolve_model(a.model)
    over = {k: (v if k in ("schedule_kind", "selection", "variance") else int(v))
            for k, v in (kv.split("=", 1) for kv in a.set)}
    def parse(kv):
        k, v = kv.split("=", 1)
        return k, (v if k in ("schedule_kind", "selection", "variance") else int(v))

    runs = []
    for i, spec in enumerate(a.profiles):
        pid, _, own = spec.partition(":")
        st = codec.PROFILES[codec.profile_id(pid)]
        extra = dict(parse(kv) for kv in own.split(",") if kv)
        if i > 0 and over:
            extra = {**over, **extra}
        runs.append((spec if not (i > 0 and over) else f"{spec} {a.set}", replace(st, **extra) if extra else st))
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][a.start:a.start + a.n]
    if a.warmup:
        for _, st in runs:
            warm = codec.encode(imgs[0], model, settings=st, metrics=False).data
            if a.decode:
                codec.decode(warm, model)
    bpd = np.zeros((len(runs), len(imgs)))
    body = np.zeros_like(bpd)
    esec, dsec, x0bits = np.zeros_like(bpd), np.zeros_like(bpd), np.zeros_like(bpd)
    for j, img in enumerate(imgs):
        for i, (_, st) in enumerate(runs):
            t0 = time.perf_counter()
            res = codec.encode(img, model, settings=st, metrics=False)
            data = res.data
            esec[i, j] = time.perf_counter() - t0
            x0bits[i, j] = res.x0_bits
            if a.decode:
                t0 = time.perf_counter()
                out = codec.decode(data, model).image
                dsec[i, j] = time.perf_counter() - t0
                assert np.array_equal(out, img), f"{runs[i][0]}: image {a.start + j} did not decode bit-exactly"
            f = container.unpack(data).file
            bpd[i, j] = 8 * len(data) / img.size
            body[i, j] = 8 * (sum(len(s.payload) for s in f.segments) + len(f.x0 or b"")) / img.size
        if a.save:   # after every image: a long run can be read while it goes
            np.savez(a.save, runs=np.array([r[0] for r in runs]), start=a.start, bpd=bpd[:, :j + 1],
                     body=body[:, :j + 1], encode_s=esec[:, :j + 1], decode_s=dsec[:, :j + 1],
                     x0_bits=x0bits[:, :j + 1])
    secs, dsecs = esec.sum(1), dsec.sum(1)
    print(f"model {model.name} ({model.fingerprint[:8]}), CIFAR-10 test images {a.start}..{a.start + len(imgs) - 1}")
    print("| run | bits/dim | w/o header and trailer | encode s/img | vs first: bits/dim (± s.e.) "
          "| vs first: body bits/image (± s.e.) | time ratio |" + (" decode s/img | decode ratio |" if a.decode else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if a.decode else ""))
    se = lambda d: d.std(ddof=1) / np.sqrt(len(d))  # noqa: E731
    for i, (name, st) in enumerate(runs):
        d = bpd[i] - bpd[0]
        db = (body[i] - body[0]) * imgs[0].size
        cmp = "" if i == 0 else f"{d.mean():+.4f} ± {se(d):.4f}"
        cmpb = "" if i == 0 else f"{db.mean():+.1f} ± {se(db):.1f}"
        ratio = "" if i == 0 else f"{secs[i] / secs[0]:.2f}"
        dec = f" {dsecs[i] / len(imgs):.2f} | {dsecs[i] / dsecs[0]:.2f} |" if a.decode else ""
        print(f"| profile {name} | {bpd[i].mean():.4f} | {body[i].mean():.4f} | {secs[i] / len(imgs):.2f} | {cmp} "
              f"| {cmpb} | {ratio} |{dec}")


if __name__ == "__main__":
    main()
