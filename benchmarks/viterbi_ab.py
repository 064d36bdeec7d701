"""The encoder's Viterbi kernel against an earlier commit's, side by side in one process.

    python benchmarks/viterbi_ab.py dec5ec9 -n 6        # CIFAR-10 test images 0..5, default profile

Loads ``ddpm_codec/coding/viterbi.py`` as it was at the given commit (``git show``), then encodes each
image with the earlier kernel and with this tree's, alternating which goes first image by image,
and prints encode seconds per image, the network seconds inside them, their ratio, and whether
every file came out byte-identical (the kernels must make the same decisions). Then one segment of
the recursion alone at 2^17 states (random scores; 1 and 2 threads, min over 3 runs). Data:
../shared/data (read, never copied).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _old_module(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:ddpm_codec/coding/viterbi.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "viterbi_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("viterbi_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["viterbi_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def segments(old, new) -> None:
    rng = np.random.default_rng(1)
    B, M, S, G, C = 16, 1 << 14, 1 << 17, 1, 24
    s = rng.standard_normal((C, G, M)).astype(np.float32)
    offsets = rng.integers(0, M, G).astype(np.int64)
    shifts = rng.integers(0, M, C).astype(np.int64) | 1
    print("\n| threads | earlier ms/segment | now ms/segment | ratio | same scores and back pointers |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        best, out = {}, {}
        for _ in range(3):
            for name, mod in (("old", old), ("new", new)):
                score = np.full((G, S), -np.inf, np.float32)
                score[:, 0] = 0
                back = np.zeros((C, G, S), np.int8)
                t = time.perf_counter()
                for j in range(C):
                    mod.feed_kernel(s[j:j + 1], offsets, shifts[j:j + 1], score, back, j, B, threads=threads)
                best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / C * 1e3)
                out[name] = (score, back)
        same = all(np.array_equal(a, b) for a, b in zip(out["old"], out["new"]))
        print(f"| {threads} | {best['old']:.3f} | {best['new']:.3f} | {best['new'] / best['old']:.2f} | {same} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the earlier commit")
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--profile", type=int, default=None, help="default: the model's default profile")
    a = ap.parse_args()

    import ddpm_codec as dc
    from ddpm_codec import codec
    from ddpm_codec.coding import viterbi

    old = _old_module(a.rev)
    model = dc.load_model()
    settings = codec.settings_with(a.profile, model=model)
    imgs = np.load(DATA / "cifar10-subset.npz")["test_images"][: a.n]
    kernels = {"earlier": old.feed_kernel, "now": viterbi.feed_kernel}
    for fk in kernels.values():   # warm-up: pool, compiled kernels
        viterbi.feed_kernel = fk
        codec.encode(imgs[0], model, settings=settings)
    rows = {k: [0.0, 0.0, []] for k in kernels}
    for i, img in enumerate(imgs):
        for name in (list(kernels) if i % 2 == 0 else list(reversed(kernels))):
            viterbi.feed_kernel = kernels[name]
            e = codec.encode(img, model, settings=settings)
            rows[name][0] += e.seconds
            rows[name][1] += e.network_seconds
            rows[name][2].append(e.data)
    viterbi.feed_kernel = kernels["now"]
    n = len(imgs)
    same = rows["earlier"][2] == rows["now"][2]
    print(f"profile {codec.profile_of(settings)}, CIFAR-10 test images 0..{n - 1}, kernels alternating image by image; "
          f"files byte-identical: {same}\n")
    print("| kernel | encode s/img | in the networks | encode / networks | bits/dim |\n|---|---|---|---|---|")
    for k, (sec, net, files) in rows.items():
        print(f"| {k} ({a.rev if k == 'earlier' else 'this tree'}) | {sec / n:.2f} | {net / n:.2f} | {sec / net:.2f} | "
              f"{sum(8 * len(f) for f in files) / (n * imgs[0].size):.4f} |")
    print(f"\nencode time now / earlier: {rows['now'][0] / rows['earlier'][0]:.3f}")
    segments(old, viterbi)


if __name__ == "__main__":
    main()
