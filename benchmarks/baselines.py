"""Classical-codec baselines on the CIFAR-10 test subset, printed as markdown.

    python benchmarks/baselines.py [--data PATH] [--num N] [--codecs NAME ...] [--no-progress]

Lossless: mean bits/dim per codec (real file sizes, headers included; every file
verified to decode exactly). Lossy: for each codec and quality setting, mean
bits/dim, mean per-image PSNR, PSNR of the pooled MSE and mean per-image RMSE.
A "dim" is one sub-pixel: 32x32x3 = 3072 dims per image.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ddpm_codec.eval.baselines import LOSSY_CODECS, lossless_sizes, lossy_sweep
from ddpm_codec.eval.metrics import bits_per_dim

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "cifar10-subset.npz"


def _versions() -> str:
    import PIL

    parts = [f"Python {platform.python_version()}", f"Pillow {PIL.__version__}"]
    try:
        from PIL import features

        for mod, name in [("webp", "libwebp"), ("avif", "libavif"), ("jpg_2000", "OpenJPEG"), ("libjpeg_turbo", "libjpeg-turbo")]:
            v = features.version(mod)
            if v:
                parts.append(f"{name} {v}")
    except Exception:
        pass
    try:
        import imagecodecs

        parts.append(f"imagecodecs {imagecodecs.__version__}")
        v = getattr(imagecodecs, "jpegxl_version", None)
        if v:
            parts.append(v())
    except Exception:
        pass
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="npz with key test_images uint8 [N,32,32,3]")
    ap.add_argument("--key", default="test_images")
    ap.add_argument("--num", type=int, default=None, help="use only the first NUM images")
    ap.add_argument("--codecs", nargs="*", default=None, help=f"lossy codecs (default all): {list(LOSSY_CODECS)}")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=None, help="also write all per-image results to this HDF5 file")
    ap.add_argument("--plot", default=None, help="also write a rate-distortion plot (PNG) here")
    args = ap.parse_args(argv)

    images = np.load(args.data)[args.key]
    if args.num is not None:
        images = images[: args.num]
    n = len(images)
    shape = images.shape[1:]
    progress = not args.no_progress

    t0 = time.perf_counter()
    sizes = lossless_sizes(images, progress=progress)
    t1 = time.perf_counter()
    sweeps = lossy_sweep(images, codecs=args.codecs, progress=progress)
    t2 = time.perf_counter()

    print(f"## Classical codecs on {n} images {tuple(shape)} from `{Path(args.data).name}:{args.key}`\n")
    print(f"Software: {_versions()}.  ")
    print("Sizes are whole files (headers included); bits/dim = 8 * bytes / "
          f"{int(np.prod(shape))}, averaged over images.\n")

    print("### Lossless (every file verified to decode exactly)\n")
    print("| codec | bits/dim (mean) | std | min | max | bytes/image (mean) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in sorted(sizes.items(), key=lambda kv: kv[1].mean()):
        b = bits_per_dim(s, shape)
        print(f"| {name} | {b.mean():.3f} | {b.std():.3f} | {b.min():.3f} | {b.max():.3f} | {s.mean():.1f} |")
    print(f"\n({t1 - t0:.1f} s)\n")

    print("### Lossy sweeps\n")
    print("PSNR = mean of per-image PSNR; pooled = PSNR of the MSE over all images; "
          "RMSE = mean per-image RMSE (0..255 scale).\n")
    for name, r in sweeps.items():
        print(f"#### {name} ({r.note}; knob: {r.param})\n")
        print(f"| {r.param} | bits/dim | PSNR (dB) | pooled PSNR (dB) | RMSE |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for j, q in enumerate(r.quality):
            exact = int(np.isinf(r.psnr[:, j]).sum())
            mean_psnr = f"{r.mean_psnr[j]:.2f}" if not exact else (
                f"inf ({exact} exact; others {r.psnr[np.isfinite(r.psnr[:, j]), j].mean():.2f})")
            print(f"| {q:g} | {r.mean_bits_per_dim[j]:.3f} | {mean_psnr} | "
                  f"{r.psnr_of_mean_mse[j]:.2f} | {r.mean_rmse[j]:.2f} |")
        print()
    print(f"({t2 - t1:.1f} s for the lossy sweeps)")

    if args.out:
        from ddpm_codec.eval.store import ResultStore

        store = ResultStore(args.out)
        store.write_dict("lossless", {name: s for name, s in sizes.items()},
                         attrs={"data": str(args.data), "key": args.key, "num_images": n, "unit": "bytes"})
        for name, r in sweeps.items():
            store.write_dict(f"lossy/{name}", {"quality": r.quality, "bytes": r.bytes, "rmse": r.rmse, "psnr": r.psnr},
                             attrs={"param": r.param, "note": r.note, "image_shape": list(r.image_shape)})
        print(f"\nwrote {args.out}")
    if args.plot:
        from ddpm_codec.eval.plots import plot_rd

        series = [{"label": name, "x": r.mean_bits_per_dim, "y": r.psnr_of_mean_mse} for name, r in sweeps.items()]
        plot_rd(series, args.plot, y="PSNR of pooled MSE (dB)", title=f"{n} images {tuple(shape)}", log_x=True)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
