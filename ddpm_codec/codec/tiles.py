"""Images as the network sees them: 32x32 tiles in [-1, 1], edge-padded, and the input checks."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data import to_uint8


def to_tiles(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 tiles [B, 3, size, size] in [-1, 1], edge-padded, raster order."""
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


def check_image(image: np.ndarray) -> np.ndarray:
    """Accept uint8 RGB [H, W, 3]; convert gray/RGBA/16-bit with clear rules or refuse."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        if np.any(arr[:, :, 3] != arr.dtype.type(np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else 1)):
            raise ValueError("the image has transparency (alpha < opaque): ddpm-codec codes RGB only; flatten it first")
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {arr.dtype}: convert 16-bit/float images to 8-bit first")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] > 65535 or arr.shape[1] > 65535:
        raise ValueError(f"image size {arr.shape[1]}x{arr.shape[0]} is outside 1..65535")
    return np.ascontiguousarray(arr)


def tile_metrics(x0_hat: torch.Tensor, ref_uint8: np.ndarray, height: int, width: int) -> tuple[float, float]:
    """RMSE and PSNR (of this image's MSE) of an estimate ``[B, 3, s, s]`` in [-1, 1] against the image."""
    img = from_tiles(to_uint8(x0_hat), height, width).astype(np.float64)
    mse = float(np.mean((img - ref_uint8.astype(np.float64)) ** 2))
    return math.sqrt(mse), (float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))
