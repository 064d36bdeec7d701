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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("-r", "--repeats", type=int, default=3)
    args = ap.parse_args()
    {"latency": latency}[args.what](args)


if __name__ == "__main__":
    main()
