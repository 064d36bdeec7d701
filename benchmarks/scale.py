"""Measurements of issue 29 (docs/results/scale.md): one-image CLI latency against its network time,
sharded throughput (1 vs 2 ranks), and batching across images. Run on an otherwise idle machine
(``flock /work/cpu.lock python benchmarks/scale.py ...`` here).

    python benchmarks/scale.py latency -r 3        # CLI encode, pool cache off vs on, alternating
    python benchmarks/scale.py ranks -n 16         # rd-curve on 16 images: 1 process vs --workers 2
    python benchmarks/scale.py batch -n 16         # encode_many: one image at a time vs batched
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "ddpm_codec.cli.main"]
LINE = re.compile(r"; ([0-9.]+) s \(([0-9.]+) s in the network\)")


def latency(args) -> None:
    """One-image ``ddpm-codec encode``: wall clock of the whole process, the seconds it reports and its
    network seconds; pool cache off (built in the process, as before) and on (verified file)."""
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "img.png"
        subprocess.run(CLI + ["example", "-o", str(img)], check=True, capture_output=True)
        cache = Path(tmp) / "cache"
        subprocess.run(CLI + ["encode", str(img), "-o", str(Path(tmp) / "warm.ddpm"), "-q"], check=True,
                       capture_output=True, env={**os.environ, "DDPM_CODEC_CACHE_DIR": str(cache)})   # fills it
        print("| run | pool | process wall s | reported s | network s | wall / network | reported / network |")
        print("|---|---|---|---|---|---|---|")
        sums: dict[str, list[float]] = {"off": [0, 0, 0], "cache": [0, 0, 0]}
        for r in range(args.repeats):
            for mode in ("off", "cache"):
                env = {**os.environ, "DDPM_CODEC_CACHE_DIR": "off" if mode == "off" else str(cache)}
                t0 = time.perf_counter()
                p = subprocess.run(CLI + ["encode", str(img), "-o", str(Path(tmp) / f"{mode}{r}.ddpm"), "-q"],
                                   check=True, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t0
                rep, net = map(float, LINE.search(p.stdout).groups())
                for i, v in enumerate((wall, rep, net)):
                    sums[mode][i] += v
                print(f"| {r + 1} | {mode} | {wall:.2f} | {rep:.2f} | {net:.2f} | {wall / net:.2f} | {rep / net:.2f} |")
            same = (Path(tmp) / f"off{r}.ddpm").read_bytes() == (Path(tmp) / f"cache{r}.ddpm").read_bytes()
            assert same, "the cached pool changed the file"
        for mode, (w, rep, n) in sums.items():
            print(f"| all | {mode} | {w:.2f} | {rep:.2f} | {n:.2f} | {w / n:.2f} | {rep / n:.2f} |")


def ranks(args) -> None:
    """``rd-curve`` on the first N shipped test images (default profile, no baselines), whole commands
    timed: one process, then ``--workers 2``, each with ``--batch 1`` and ``--batch B``, and one process on
    one thread (what each of 2 ranks has); the stores' numbers compared."""
    import h5py
    import numpy as np

    b = str(args.batch)
    runs = [("1 process, --batch 1", ["--batch", "1"]),
            ("1 process on 1 thread (one rank's share), --batch 1", ["--batch", "1"]),
            ("--workers 2, --batch 1", ["--workers", "2", "--batch", "1"]),
            (f"1 process, --batch {b} (lanes: 1 per thread)", ["--batch", b]),
            (f"1 process on 1 thread, --batch {b}", ["--batch", b]),
            (f"--workers 2, --batch {b}", ["--workers", "2", "--batch", b])]
    if args.short:   # batch 1 only, twice, in alternating order
        runs = runs[:3] + runs[2::-1]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| run | wall s | images/s |\n|---|---|---|")
        ref = None
        for r, (name, extra) in enumerate(runs):
            out = Path(tmp) / f"rd{r}.h5"
            t0 = time.perf_counter()
            env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if "1 thread" in name else {})}
            subprocess.run(CLI + ["rd-curve", "cifar10", "-n", str(args.num), "-o", str(out), "--no-baselines",
                                  *extra], check=True, capture_output=True, env=env)
            wall = time.perf_counter() - t0
            print(f"| {name} | {wall:.1f} | {args.num / wall:.3f} |", flush=True)
            with h5py.File(out) as f:
                got = {k: f["ddpm"][k][()] for k in f["ddpm"] if k != "seconds"}
            ref = ref or got
            assert all(np.array_equal(ref[k], got[k]) for k in ref), f"{name}: other numbers than one process"


def batching(args) -> None:
    """In one process, pool and network built first: N images one at a time, then batched
    (:func:`ddpm_codec.codec.encode_many`), then both again in the other order; the same files."""
    import numpy as np

    from ddpm_codec import codec
    from ddpm_codec.data import example_image
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model(None)
    images = [example_image(i) for i in range(args.num)]
    codec.encode(images[-1], model)   # warm: exact network, candidate pool, compiled kernels

    def one():
        return [codec.encode(im, model).data for im in images]

    def batched(lanes):
        return lambda: [r.data for r in codec.encode_many(images, model, batch=args.batch, lanes=lanes)]
    from ddpm_codec.codec.batch import lanes_for
    lanes = lanes_for(None, None, args.num)
    modes = {"one at a time": one, f"batched ({args.batch}), 1 lane": batched(1)}
    if lanes > 1:
        modes[f"batched ({args.batch}), {lanes} lanes (default)"] = batched(None)
    times: dict[str, list[float]] = {k: [] for k in modes}
    files = []
    names = list(modes)
    for order in (names, names[::-1])[:args.repeats]:
        for name in order:
            t0 = time.perf_counter()
            files.append(modes[name]())
            times[name].append(time.perf_counter() - t0)
    assert all(f == files[0] for f in files), "batching changed a file"
    print("| mode | seconds per pass | images/s | vs one at a time |\n|---|---|---|---|")
    base = sum(times[names[0]])
    for name, ts in times.items():
        print(f"| {name} | {' / '.join(f'{t:.1f}' for t in ts)} | {args.num * len(ts) / sum(ts):.3f} "
              f"| {base / sum(ts):.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("-r", "--repeats", type=int, default=3)
    p = sub.add_parser("ranks")
    p.add_argument("-n", "--num", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--short", action="store_true", help="1 process, --workers 2, 1 thread; then reversed")
    p = sub.add_parser("batch")
    p.add_argument("-n", "--num", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("-r", "--repeats", type=int, default=2, choices=(1, 2))
    args = ap.parse_args()
    {"latency": latency, "ranks": ranks, "batch": batching}[args.what](args)


if __name__ == "__main__":
    main()
