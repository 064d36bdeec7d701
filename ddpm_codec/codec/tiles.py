"""Images as the network sees them: 32x32 tiles in [-1, 1], edge-padded, and the input checks."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..data import to_uint8
from ..errors import InputError

if TYPE_CHECKING:   # torch is imported where used: the size check (the CLI's --max-pixels) needs none
    import torch

# The largest image (height x width) encode and decode accept by default, checked from the
# dimensions alone (a header, an image file's size field) before anything is allocated. Both
# sides hold every 32x32 tile's chain state (float64, 24 bytes per pixel per tensor) and send the
# tiles through the network 16 at a time; the encoder's search and x_0 stage work in bounded
# pieces too. Measured with the shipped cpu-small model and the default profile (2026-12-05,
# docs/results/speed-memory.md): a 32x32 image peaks at 0.90 GB to encode (the 200 MB candidate
# pool and its 200 MB norm table) and 0.29 GB to decode; a 768x512 one (384 tiles) at 1.84 and
# 0.45 GB, ~2.5 and ~0.4 KB more per pixel; a tile takes ~1.5 s to encode and ~0.6 s to decode on
# this 2-vCPU machine. 2**20 pixels (1024 tiles, e.g. 1024x1024) thus costs ~1 GB / ~10 min to
# decode and up to ~3.5 GB / ~25 min to encode: the most a default should let a file or an image
# ask of a machine. The format's own ceiling (container.MAX_PIXELS = 2**28, e.g. a forged
# 16384x16384 header, whose first tensor alone was 6.5 GB) would need ~256 times that. Raise it
# with ``max_pixels=`` (``--max-pixels``).
MAX_CODEC_PIXELS = 1 << 20


def check_dimensions(height: int, width: int, limit: int | None = None) -> None:
    """Refuse an image size before allocating anything for it: ``1 <= height, width <= 65535`` and at
    most ``limit`` pixels (default :data:`MAX_CODEC_PIXELS`). One-line :class:`~ddpm_codec.errors.InputError`."""
    from ..coding.container import MAX_DIM

    limit = MAX_CODEC_PIXELS if limit is None else int(limit)
    if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM):
        raise InputError(f"image size {width}x{height} is outside 1..{MAX_DIM} pixels a side")
    if height * width > limit:
        raise InputError(f"image size {width}x{height} ({height * width:,} pixels) exceeds the limit of {limit:,} "
                         f"pixels (memory grows with the size: ~2.5 KB a pixel to encode, ~0.4 KB to decode); "
                         f"raise it with --max-pixels / max_pixels= if this machine can afford it")


def to_tiles(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 tiles [B, 3, size, size] in [-1, 1], edge-padded, raster order."""
    import torch

    h, w, _ = image.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    H, W = padded.shape[:2]
    tiles = padded.reshape(H // size, size, W // size, size, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(tiles)).float() / 127.5 - 1.0


def from_tiles(tiles_uint8: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 tiles [B, size, size, 3] -> uint8 [height, width, 3] (crop of the padded mosaic)."""
    size = tiles_uint8.shape[1]
    gh, gw = -(-height // size), -(-width // size)
    mosaic = tiles_uint8.reshape(gh, gw, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(gh * size, gw * size, 3)
    return np.ascontiguousarray(mosaic[:height, :width])


def inside_mask(height: int, width: int, size: int) -> np.ndarray:
    """Boolean [B, 3, size, size]: which tile pixels lie inside the image (the ones coded losslessly)."""
    gh, gw = -(-height // size), -(-width // size)
    yy = (np.arange(gh)[:, None, None, None] * size + np.arange(size)[None, None, :, None])
    xx = (np.arange(gw)[None, :, None, None] * size + np.arange(size)[None, None, None, :])
    inside = (yy < height) & (xx < width)                      # [gh, gw, size, size]
    inside = np.broadcast_to(inside[:, :, None], (gh, gw, 3, size, size))
    return inside.reshape(-1, 3, size, size)


def check_image(image: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """Accept uint8 RGB [H, W, 3]; convert gray/RGBA/16-bit with clear rules or refuse. The size is
    checked first (:func:`check_dimensions` with ``max_pixels``), before any conversion copies it."""
    arr = np.asarray(image)
    if arr.ndim in (2, 3):
        check_dimensions(arr.shape[0], arr.shape[1], max_pixels)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        if np.any(arr[:, :, 3] != arr.dtype.type(np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else 1)):
            raise InputError("the image has transparency (alpha < opaque): ddpm-codec codes RGB only; flatten it first")
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise InputError(f"expected 8-bit pixels, got {arr.dtype}: convert 16-bit/float images to 8-bit first")
    return np.ascontiguousarray(arr)


def tile_metrics(x0_hat: torch.Tensor, ref_uint8: np.ndarray, height: int, width: int) -> tuple[float, float]:
    """RMSE and PSNR (of this image's MSE) of an estimate ``[B, 3, s, s]`` in [-1, 1] against the image."""
    img = from_tiles(to_uint8(x0_hat), height, width).astype(np.float64)
    mse = float(np.mean((img - ref_uint8.astype(np.float64)) ** 2))
    return math.sqrt(mse), (float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))
