"""Speed and memory (issue 17): wall time against the network time inside it, as ratios measured
side by side in one run, and the CLI's start-up, on this machine.

    python benchmarks/speed.py -n 6                   # CIFAR-10 test images 0..5, default profile
    python benchmarks/speed.py -n 6 --profile 10      # the exact profile
    python benchmarks/speed.py --cli                  # + `ddpm-codec info/--help/encode/decode` in subprocesses
    python benchmarks/speed.py --kodak kodim03 --crop 256   # one Kodak image (or a centre crop): s/tile, peak RSS
    python benchmarks/speed.py --kodak kodim03 --profile 10 --encode-only

In-process rows (the first encode of the process is a warm-up, not counted): encode and decode wall
seconds, the network's seconds inside them and their ratio, with the encoder's search on 1 thread and
on 2 threads (interleaved, same images, bytes compared). CLI rows: each
command in a fresh process, wall time from outside (start-up included) against the network seconds
the command prints. Kodak rows: one fresh CLI process each for encode and decode, peak RSS from
GNU ``/usr/bin/time``, bits/dim beside PNG, WebP and JPEG XL.
Data: ../shared/data (read, never copied).
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

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def in_process(n: int, profile: int) -> None:
    import ddpm_codec as dc
    from ddpm_codec import codec

    model = dc.load_model()
    settings = codec.settings_with(profile)
    imgs = np.load(DATA / "cifar10-subset.npz")["test_images"][:n]
    codec.decode(codec.encode(imgs[0], model, settings=settings).data, model)   # warm-up: pool, compiled search
    rows = {}
    for rep in range(2):
        for threads in (1, 2):
            r = rows.setdefault(threads, {"enc": 0.0, "enc_net": 0.0, "dec": 0.0, "dec_net": 0.0, "bits": 0, "files": []})
            for i, img in enumerate(imgs):
                e = codec.encode(img, model, settings=settings, threads=threads)
                d = codec.decode(e.data, model)
                assert d.lossless and np.array_equal(d.image, img)
                r["enc"] += e.seconds
                r["enc_net"] += e.network_seconds
                r["dec"] += d.seconds
                r["dec_net"] += d.network_seconds
                if rep == 0:
                    r["bits"] += 8 * len(e.data)
                    r["files"].append(e.data)
    same = all(a == b for a, b in zip(*(r["files"] for r in rows.values())))
    print(f"profile {profile}, CIFAR-10 test images 0..{n - 1}, 2 interleaved passes; bytes equal across thread "
          f"counts: {same}")
    print("| search threads | encode s/img | in the network | encode / network | decode s/img | in the network "
          "| decode / network | bits/dim |")
    print("|---|---|---|---|---|---|---|---|")
    for threads, r in rows.items():
        k = 2 * n
        print(f"| {threads} | {r['enc'] / k:.2f} | {r['enc_net'] / k:.2f} | {r['enc'] / r['enc_net']:.2f} | "
              f"{r['dec'] / k:.2f} | {r['dec_net'] / k:.2f} | {r['dec'] / r['dec_net']:.2f} | "
              f"{r['bits'] / (n * 3072):.4f} |")


def _run(cmd: list[str]) -> tuple[float, str, float]:
    """Wall seconds, output and peak RSS (GB, from GNU time's ``%M``) of one fresh process."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        t0 = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name] + cmd, capture_output=True, text=True,
                             check=True)
        wall = time.perf_counter() - t0
        peak_kb = float(f.read().strip().splitlines()[-1])
    return wall, out.stdout + out.stderr, peak_kb / 1e6


def _network_seconds(text: str) -> float:
    m = re.search(r"\(([\d.]+) s in the network\)", text)
    return float(m.group(1)) if m else float("nan")


def cli(n: int, profile: int) -> None:
    from PIL import Image

    exe = [sys.executable, "-m", "ddpm_codec.cli.main"]
    imgs = np.load(DATA / "cifar10-subset.npz")["test_images"][:n]
    with tempfile.TemporaryDirectory() as tmp:
        png, ddpm, out = f"{tmp}/a.png", f"{tmp}/a.ddpm", f"{tmp}/b.png"
        Image.fromarray(imgs[0]).save(png)
        _run(exe + ["encode", png, "-o", ddpm, "-q"])   # warm the caches (numba's on disk)
        print("| command | wall s (fresh process) | network s | wall / network |")
        print("|---|---|---|---|")
        for args in (["--help"], ["info", ddpm]):
            w = min(_run(exe + args)[0] for _ in range(3))
            print(f"| ddpm-codec {' '.join(a if a != ddpm else 'F.ddpm' for a in args)} | {w:.2f} | | |")
        for i, img in enumerate(imgs):
            Image.fromarray(img).save(png)
            w, text, _ = _run(exe + ["encode", png, "-o", ddpm, "--profile", str(profile), "-q"])
            net = _network_seconds(text)
            print(f"| encode test image {i} | {w:.2f} | {net:.2f} | {w / net:.2f} |")
            w, text, _ = _run(exe + ["decode", ddpm, "-o", out])
            net = _network_seconds(text)
            print(f"| decode test image {i} | {w:.2f} | {net:.2f} | {w / net:.2f} |")


def kodak(name: str, crop: int | None, profile: int, threads: int | None, encode_only: bool = False) -> None:
    from PIL import Image

    from ddpm_codec.eval import baselines

    img = np.asarray(Image.open(DATA / "kodak" / f"{name}.png").convert("RGB"))
    if crop:
        y, x = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
        img = np.ascontiguousarray(img[y:y + crop, x:x + crop])
    h, w = img.shape[:2]
    tiles = -(-h // 32) * -(-w // 32)
    exe = [sys.executable, "-m", "ddpm_codec.cli.main"]
    thr = ["--threads", str(threads)] if threads else []
    with tempfile.TemporaryDirectory() as tmp:
        png, ddpm, out = f"{tmp}/a.png", f"{tmp}/a.ddpm", f"{tmp}/b.png"
        Image.fromarray(img).save(png)
        we, te, re_ = _run(exe + ["encode", png, "-o", ddpm, "--profile", str(profile), "-q"] + thr)
        bpd = 8 * os.path.getsize(ddpm) / (h * w * 3)
        wd, td, rd = float("nan"), "", float("nan")
        if not encode_only:
            wd, td, rd = _run(exe + ["decode", ddpm, "-o", out] + thr)
            assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), img), "decode is not bit-exact"
    ne, nd = _network_seconds(te), _network_seconds(td)
    print(f"{name}{f' centre crop {crop}' if crop else ''}: {w}x{h}, {tiles} tiles, profile {profile}, "
          f"threads {threads or 'default'}")
    print("| | wall s | network s | wall / network | s per tile | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    print(f"| encode | {we:.1f} | {ne:.1f} | {we / ne:.2f} | {we / tiles:.2f} | {re_:.2f} |")
    print(f"| decode | {wd:.1f} | {nd:.1f} | {wd / nd:.2f} | {wd / tiles:.2f} | {rd:.2f} |")
    row = [f"ddpm-codec {bpd:.4f}"]
    for codec_name, enc in (("PNG", baselines.encode_png), ("WebP", baselines.encode_webp_lossless),
                            ("JPEG XL e7", baselines.encode_jpegxl_lossless)):
        row.append(f"{codec_name} {8 * len(enc(img)) / (h * w * 3):.4f}")
    print("lossless bits/dim: " + ", ".join(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--profile", type=int, default=9)
    ap.add_argument("--cli", action="store_true")
    ap.add_argument("--kodak", default=None, help="a Kodak image name, e.g. kodim03 (skips the CIFAR rows)")
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--encode-only", action="store_true", help="Kodak: skip the decode")
    a = ap.parse_args()
    if a.kodak:
        kodak(a.kodak, a.crop, a.profile, a.threads, a.encode_only)
        return
    in_process(a.n, a.profile)
    if a.cli:
        cli(a.n, a.profile)


if __name__ == "__main__":
    main()
