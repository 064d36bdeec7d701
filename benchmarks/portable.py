"""Portable (exact) files against float files: where each decodes, and what exactness costs in time.

    python benchmarks/portable.py -n 32                      # profiles 9 (float) and 12 (exact-context)
    python benchmarks/portable.py -n 10 --float 9 --exact 10

1. Decodes the golden files of both profiles (tests/golden) in fresh subprocesses under PyTorch's
   portable kernels, oneDNN limited to SSE4.1, 2 threads, numba's kernels built for a generic x86-64
   (no AVX), and all at once; prints what each gave.
2. Encodes the first N CIFAR-10 test images with the exact profile (this process, this machine's
   kernels) and decodes all N files in one fresh subprocess per setting of part 1: how many came
   back bit-exact (pixels against the originals).
   Then encodes the same images in a fresh subprocess under all four settings at once and decodes
   those files here, on this machine's default kernels: bit-exact, and byte-identical to this
   process's files?
3. Decodes every file of both profiles with 1 and with 2 torch threads, interleaved (float profiles
   always run their network on one thread): seconds per image and the ratios, with the time inside
   the networks (the U-Net and the x_0 context model).
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
for pid in map(int, sys.argv[2].split(",")):
    try:
        r = codec.decode(open(f"{sys.argv[1]}/p{pid}.ddpm", "rb").read(), m)
        out[pid] = "bit-exact" if hashlib.sha256(r.image.tobytes()).hexdigest() == want else "WRONG PIXELS"
    except codec.DecodeError:
        out[pid] = "checksum error"
print(json.dumps(out))
"""
FILES_CHILD = r"""
import hashlib, json, os, sys, torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from ddpm_codec import codec
from ddpm_codec.models.registry import resolve_model
m, d = resolve_model(), json.load(open(sys.argv[1] + "/want.json"))
ok = bad = err = 0
for i, want in enumerate(d):
    try:
        r = codec.decode(open(f"{sys.argv[1]}/{i}.ddpm", "rb").read(), m)
        ok += hashlib.sha256(r.image.tobytes()).hexdigest() == want
        bad += hashlib.sha256(r.image.tobytes()).hexdigest() != want
    except codec.DecodeError:
        err += 1
print(json.dumps([ok, bad, err]))
"""
ENCODE_CHILD = r"""
import json, os, sys, numpy as np, torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from ddpm_codec import codec
from ddpm_codec.models.registry import resolve_model
m, imgs = resolve_model(), np.load(sys.argv[2])["images"]
for i, im in enumerate(imgs):
    open(f"{sys.argv[1]}/enc{i}.ddpm", "wb").write(codec.encode(im, m, settings=codec.PROFILES[int(sys.argv[3])],
                                                              metrics=False).data)
"""
SETTINGS = {"this machine's default kernels": {}, "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
            "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
            "2 threads": {"THREADS": "2", "OMP_NUM_THREADS": "2"},
            "NUMBA_CPU_NAME=generic": {"NUMBA_CPU_NAME": "generic"},
            "all four": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "THREADS": "2",
                         "NUMBA_CPU_NAME": "generic"}}


def main():
    import hashlib
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--float", type=int, default=9, dest="fp", help="the float profile (default 9)")
    ap.add_argument("--exact", type=int, default=12, dest="ep", help="the exact profile (default 12)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--timing-only", action="store_true", help="part 3 only")
    ap.add_argument("--no-timing", action="store_true", help="parts 1 and 2 only (e.g. on a busy machine)")
    a = ap.parse_args()
    fp, ep = a.fp, a.ep
    pids = f"{fp},{ep}"
    settings = {} if a.timing_only else SETTINGS
    if settings:
        print(f"Golden files (tests/golden), one fresh process per setting:\n\n"
              f"| decoder setting | profile {fp} | profile {ep} |\n|---|---|---|")
    for name, env in settings.items():
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests" / "golden"), pids], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=600)
        got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {str(fp): r.stderr[-80:], str(ep): ""}
        print(f"| {name} | {got[str(fp)]} | {got[str(ep)]} |")

    from ddpm_codec import codec
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model()
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][: a.n]
    files = {pid: [codec.encode(im, model, settings=codec.PROFILES[pid], metrics=False).data for im in imgs]
             for pid in (fp, ep)}
    n = len(imgs)
    if settings:
        print(f"\nProfile {ep} files of CIFAR-10 test images 0..{n - 1} (encoded here), all decoded in one fresh "
              f"process per setting:\n\n| decoder setting | bit-exact | wrong pixels | checksum error |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(files[ep]):
            Path(tmp, f"{i}.ddpm").write_bytes(f)
        Path(tmp, "want.json").write_text(json.dumps([hashlib.sha256(im.tobytes()).hexdigest() for im in imgs]))
        for name, env in settings.items():
            r = subprocess.run([sys.executable, "-c", FILES_CHILD, tmp], capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=3600)
            got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else [r.stderr[-80:], "", ""]
            print(f"| {name} | {got[0]} | {got[1]} | {got[2]} |")
        if settings:
            np.savez(Path(tmp, "imgs.npz"), images=imgs)
            env = {**os.environ, **SETTINGS["all four"]}
            r = subprocess.run([sys.executable, "-c", ENCODE_CHILD, tmp, str(Path(tmp, "imgs.npz")), str(ep)],
                               capture_output=True, text=True, env=env, timeout=7200)
            if r.returncode != 0:
                print(f"\nencoding under all four settings failed: {r.stderr[-300:]}")
            else:
                same = exact = 0
                for i, im in enumerate(imgs):
                    data = Path(tmp, f"enc{i}.ddpm").read_bytes()
                    same += data == files[ep][i]
                    try:
                        res = codec.decode(data, model)
                        exact += bool(res.lossless and np.array_equal(res.image, im))
                    except codec.DecodeError:
                        pass
                print(f"\nProfile {ep} files encoded in a fresh process under all four settings, decoded here on the "
                      f"default kernels: {exact} of {n} bit-exact; {same} of {n} byte-identical to this process's files")
    if a.no_timing:
        return

    secs = {(pid, th): [0.0, 0.0] for pid in (fp, ep) for th in (1, 2)}
    for j in range(len(imgs)):
        for th in (1, 2):
            torch.set_num_threads(th)
            for pid in (fp, ep):
                t0 = time.perf_counter()
                res = codec.decode(files[pid][j], model)
                secs[pid, th][0] += time.perf_counter() - t0
                secs[pid, th][1] += res.network_seconds
                assert res.lossless and np.array_equal(res.image, imgs[j])
    size = {pid: 8 * np.mean([len(f) for f in files[pid]]) / imgs[0].size for pid in files}
    print(f"\n{n} CIFAR-10 test images: profile {fp} {size[fp]:.4f} bits/dim, profile {ep} {size[ep]:.4f} "
          f"({size[ep] / size[fp]:.4f} x); all decodes bit-exact")
    print(f"| torch threads | profile {fp} decode s/img (networks) | profile {ep} decode s/img (networks) | {ep} / {fp} "
          f"| {ep} / ({fp} on 1 thread) |\n|---|---|---|---|---|")
    base = secs[fp, 1][0]
    for th in (1, 2):
        (d9, n9), (d10, n10) = secs[fp, th], secs[ep, th]
        print(f"| {th} | {d9 / n:.2f} ({n9 / n:.2f}) | {d10 / n:.2f} ({n10 / n:.2f}) | {d10 / d9:.2f} | {d10 / base:.2f} |")


if __name__ == "__main__":
    main()
