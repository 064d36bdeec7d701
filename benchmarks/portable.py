"""Portable (exact) files against float files: where each decodes, and what exactness costs in time.

    python benchmarks/portable.py -n 10          # first 10 CIFAR-10 test images, shipped model

1. Decodes the golden files of profiles 9 (float) and 10 (exact) in fresh subprocesses under
   PyTorch's portable kernels, oneDNN limited to SSE4.1 and 2 threads, and prints what each gave.
2. Encodes the images with both profiles, then decodes every file with 1 and with 2 torch threads,
   interleaved (float profiles always run their network on one thread), and prints seconds per
   image and the ratios, with the time inside the network.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CHILD = r"""
import hashlib, json, os, sys, torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from ddpm_codec import codec
from ddpm_codec.models.registry import resolve_model
m, out = resolve_model(), {}
want = json.load(open(sys.argv[1] + "/golden.json"))["pixels_sha256"]
for pid in (9, 10):
    try:
        r = codec.decode(open(f"{sys.argv[1]}/p{pid}.ddpm", "rb").read(), m)
        out[pid] = "bit-exact" if hashlib.sha256(r.image.tobytes()).hexdigest() == want else "WRONG PIXELS"
    except codec.DecodeError:
        out[pid] = "checksum error"
print(json.dumps(out))
"""
SETTINGS = {"this machine's default kernels": {}, "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
            "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
            "2 threads": {"THREADS": "2", "OMP_NUM_THREADS": "2"},
            "all three": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "THREADS": "2"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    print("| decoder setting | profile 9 (float) | profile 10 (exact) |\n|---|---|---|")
    for name, env in SETTINGS.items():
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests" / "golden")], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=600)
        got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"9": r.stderr[-80:], "10": ""}
        print(f"| {name} | {got['9']} | {got['10']} |")

    from ddpm_codec import codec
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model()
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][: a.n]
    files = {pid: [codec.encode(im, model, settings=codec.PROFILES[pid], metrics=False).data for im in imgs]
             for pid in (9, 10)}
    secs = {(pid, th): [0.0, 0.0] for pid in (9, 10) for th in (1, 2)}
    for j in range(len(imgs)):
        for th in (1, 2):
            torch.set_num_threads(th)
            for pid in (9, 10):
                t0 = time.perf_counter()
                res = codec.decode(files[pid][j], model)
                secs[pid, th][0] += time.perf_counter() - t0
                secs[pid, th][1] += res.network_seconds
                assert res.lossless and np.array_equal(res.image, imgs[j])
    n = len(imgs)
    size = {pid: 8 * np.mean([len(f) for f in files[pid]]) / imgs[0].size for pid in files}
    print(f"\n{n} CIFAR-10 test images: profile 9 {size[9]:.4f} bits/dim, profile 10 {size[10]:.4f} "
          f"({size[10] / size[9]:.4f} x); all decodes bit-exact")
    print("| torch threads | profile 9 decode s/img (network) | profile 10 decode s/img (network) | 10 / 9 "
          "| 10 / (9 on 1 thread) |\n|---|---|---|---|---|")
    base = secs[9, 1][0]
    for th in (1, 2):
        (d9, n9), (d10, n10) = secs[9, th], secs[10, th]
        print(f"| {th} | {d9 / n:.2f} ({n9 / n:.2f}) | {d10 / n:.2f} ({n10 / n:.2f}) | {d10 / d9:.2f} | {d10 / base:.2f} |")


if __name__ == "__main__":
    main()
