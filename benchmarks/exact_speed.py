"""Exact (portable) against float coding on one large image: encode and decode wall time, file
sizes, bit-exact decode, and the network alone on the image's tiles (issue 25's 768x512 target).

    python benchmarks/exact_speed.py ../shared/data/kodak/kodim03.png            # profiles 11 and 12
    python benchmarks/exact_speed.py IMG --crop 256 --profiles 11 12 --threads 2
    python benchmarks/exact_speed.py IMG --network-only                          # U-Net calls only
    python benchmarks/exact_speed.py IMG --files DIR --encode-only               # write the files (no timing)
    python benchmarks/exact_speed.py IMG --files DIR --decode-only               # time their decodes

Each profile's encode, then its decode, run in this one process after a warm-up on a 32x32 crop
(candidate pool, compiled kernels). Float profiles run their network on one thread whatever
``--threads`` says (their sums depend on it); exact ones on ``--threads`` (default: all cores).
Report ratios (exact / float), measured side by side, not the bare seconds.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("--profiles", nargs="+", default=["11", "12"])
    ap.add_argument("--crop", type=int, default=None, help="top-left crop of this size (pixels, square)")
    ap.add_argument("--threads", type=int, default=None, help="threads for exact networks (default: all cores)")
    ap.add_argument("--network-only", action="store_true", help="time the U-Net on the image's tiles only")
    ap.add_argument("--reps", type=int, default=2, help="network-only: calls per arithmetic")
    ap.add_argument("--files", default=None, help="folder for the encoded files (profile-<id>.ddpm)")
    ap.add_argument("--encode-only", action="store_true", help="encode and write the files to --files, no decode")
    ap.add_argument("--decode-only", action="store_true", help="decode the files in --files (timed), no encode")
    a = ap.parse_args()

    from ddpm_codec import codec
    from ddpm_codec.codec.chain import Net
    from ddpm_codec.codec.tiles import to_tiles
    from ddpm_codec.imageio import read_image
    from ddpm_codec.models.registry import resolve_model

    img, _ = read_image(a.image)
    if a.crop:
        img = np.ascontiguousarray(img[:a.crop, :a.crop])
    model = resolve_model()
    print(f"{a.image}: {img.shape[1]}x{img.shape[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.network_only:
        x = to_tiles(img, model.image_size).double()
        for pid in a.profiles:
            st = codec.PROFILES[codec.profile_id(pid)]
            net = Net(model, st.arithmetic, a.threads)
            net(x[:1], 500)                                   # warm-up
            net.seconds = 0.0
            for r in range(a.reps):
                net(x, 900 - 300 * r)
            print(f"profile {pid} ({st.arithmetic}): {1e3 * net.seconds / a.reps / len(x):.2f} ms per tile "
                  f"({len(x)} tiles)")
        return
    warm = np.ascontiguousarray(img[:32, :32])
    if (a.encode_only or a.decode_only) and not a.files:
        ap.error("--encode-only and --decode-only need --files")
    rows = {}
    for pid in a.profiles:
        st = codec.PROFILES[codec.profile_id(pid)]
        path = f"{a.files}/profile-{codec.profile_id(pid)}.ddpm" if a.files else None
        codec.decode(codec.encode(warm, model, settings=st, metrics=False).data, model)
        te = ne = td = nd = float("nan")
        if a.decode_only:
            with open(path, "rb") as f:
                data = f.read()
        else:
            t0 = time.perf_counter()
            e = codec.encode(img, model, settings=st, metrics=False, threads=a.threads)
            te, ne, data = time.perf_counter() - t0, e.network_seconds, e.data
            if path:
                import os
                os.makedirs(a.files, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        if not a.encode_only:
            t0 = time.perf_counter()
            d = codec.decode(data, model, threads=a.threads)
            td, nd = time.perf_counter() - t0, d.network_seconds
            assert d.lossless and np.array_equal(d.image, img), f"profile {pid}: not bit-exact"
        rows[pid] = (st, len(data), te, ne, td, nd)
        print(f"profile {pid} ({st.arithmetic}): {len(data)} bytes, {8 * len(data) / img.size:.4f} bits/dim; "
              f"encode {te:.1f} s ({ne:.1f} s network), decode {td:.1f} s ({nd:.1f} s network)", flush=True)
    base = rows[a.profiles[0]]
    print(f"| profile | arithmetic | bits/dim | size / profile {a.profiles[0]} | encode / {a.profiles[0]} "
          f"| decode / {a.profiles[0]} | encode / its network | decode / its network |")
    print("|---|---|---|---|---|---|---|---|")
    for pid, (st, size, te, ne, td, nd) in rows.items():
        print(f"| {pid} | {st.arithmetic} | {8 * size / img.size:.4f} | {size / base[1]:.4f} | {te / base[2]:.3f} "
              f"| {td / base[4]:.3f} | {te / ne:.2f} | {td / nd:.2f} |")


if __name__ == "__main__":
    main()
