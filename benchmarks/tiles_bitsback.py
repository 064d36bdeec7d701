"""A multi-tile image's own file against a bits-back archive of its 32x32 tiles (issue 28, a direction for
"per-image files closer to their bound" on images larger than one tile).

    python benchmarks/tiles_bitsback.py kodim01 kodim03 --size 256

For each shared Kodak image, the central SIZE x SIZE crop: its default lossless ``.ddpm`` file (every tile's chain
sent by the trellis coder, in one stream), and an archive (``codec.archive.archive``, default settings: bits-back
coding over the chain, the chunk's first 3 tiles stored as ordinary per-image files for the initial bits, the
tile names in the index) of its tiles as separate images. Both code each tile independently given the same model,
so the difference is the coder: reverse channel coding against bits-back. Prints bits/dim of both and their
ratio. Measured 2026-12-07 with the CLI (``ddpm-codec encode`` / ``ddpm-codec archive``, the same code):
kodim01 3.7785 against 3.6528 (0.967x), kodim03 3.1568 against 3.1011 (0.982x).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import ddpm_codec as dc
from ddpm_codec.codec import archive

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--size", type=int, default=256, help="crop side, a multiple of 32")
    ap.add_argument("--kodak", default=str(KODAK))
    a = ap.parse_args()
    model = dc.load_model()
    for name in a.images:
        im = np.asarray(Image.open(Path(a.kodak) / f"{name}.png").convert("RGB"))
        y0, x0 = (im.shape[0] - a.size) // 2, (im.shape[1] - a.size) // 2
        crop = np.ascontiguousarray(im[y0:y0 + a.size, x0:x0 + a.size])
        dims = crop.size
        one = dc.encode(crop, model)
        n = a.size // 32
        tag = (lambda i, j: f"t{i}{j}") if n <= 10 else (lambda i, j: f"t{i:02d}{j:02d}")   # as the CLI run's files
        tiles = [(f"{tag(i, j)}.png", np.ascontiguousarray(crop[32 * i:32 * i + 32, 32 * j:32 * j + 32]))
                 for i in range(n) for j in range(n)]
        arc = archive.archive(tiles, model)
        f, b = 8 * len(one.data) / dims, 8 * len(arc.data) / dims
        print(f"{name} {a.size}x{a.size} ({n * n} tiles): file {f:.4f} bits/dim, archive of its tiles {b:.4f} "
              f"({b / f:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
