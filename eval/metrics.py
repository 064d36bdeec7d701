"""Distortion and rate metrics for 8-bit images.

Conventions
-----------
* Images are arrays of shape ``[..., H, W, C]`` holding uint8 values, or floats on
  the same 0..255 scale. Everything is computed in float64, so uint8 inputs never
  wrap around.
* ``mse``/``rmse``/``psnr`` pool over *all* elements and return one float. For a
  batch this is the PSNR of the pooled MSE, which is NOT the mean of per-image
  PSNRs; use the ``*_per_image`` variants for that.
* PSNR is in dB: ``10 * log10(peak**2 / MSE)``; identical inputs give ``+inf``.
* A "dim" is one sub-pixel (one colour channel of one pixel), so a 32x32 RGB image
  has 3072 dims and raw 8-bit storage is 8 bits/dim.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "mse",
    "rmse",
    "psnr",
    "mse_per_image",
    "rmse_per_image",
    "psnr_per_image",
    "psnr_from_mse",
    "bits_per_dim",
]


def _pair_as_float64(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("empty arrays")
    return a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)


def psnr_from_mse(mse_value, peak: float = 255.0):
    """PSNR in dB from a mean squared error (scalar or array, same units as ``peak**2``).

    ``10 * log10(peak**2 / mse)``; an MSE of 0 gives ``+inf``. Returns a float for a
    scalar input, else a float64 array of the input's shape.
    """
    m = np.asarray(mse_value, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(float(peak) ** 2 / m)
    return float(out) if out.ndim == 0 else out


def mse(a, b) -> float:
    """Mean squared error over all elements of two same-shape arrays ``[..., H, W, C]``.

    Units: (pixel value)^2 on the 0..255 scale. Computed in float64.
    """
    a, b = _pair_as_float64(a, b)
    return float(np.mean((a - b) ** 2))


def rmse(a, b) -> float:
    """Root mean squared error over all elements, in pixel values (0..255 scale)."""
    return math.sqrt(mse(a, b))


def psnr(a, b, peak: float = 255.0) -> float:
    """PSNR in dB of the pooled MSE over all elements; ``+inf`` if ``a == b`` everywhere."""
    return psnr_from_mse(mse(a, b), peak)


def mse_per_image(a, b) -> np.ndarray:
    """MSE of each image: reduces the last three axes ``(H, W, C)``.

    ``a``, ``b``: ``[N, H, W, C]`` (or any ``[..., H, W, C]``) -> float64 ``[N]``
    (resp. ``[...]``), units (pixel value)^2.
    """
    a, b = _pair_as_float64(a, b)
    if a.ndim < 3:
        raise ValueError(f"expected [..., H, W, C], got shape {a.shape}")
    return np.mean((a - b) ** 2, axis=(-3, -2, -1))


def rmse_per_image(a, b) -> np.ndarray:
    """RMSE of each image, ``[N, H, W, C]`` -> float64 ``[N]``, in pixel values."""
    return np.sqrt(mse_per_image(a, b))


def psnr_per_image(a, b, peak: float = 255.0) -> np.ndarray:
    """PSNR (dB) of each image, ``[N, H, W, C]`` -> float64 ``[N]``; ``+inf`` where identical."""
    return np.asarray(psnr_from_mse(mse_per_image(a, b), peak), dtype=np.float64)


def bits_per_dim(num_bytes_or_bits, shape, unit: str = "bytes"):
    """Rate in bits per dim (bits per sub-pixel).

    ``num_bytes_or_bits``: a count (scalar or array, e.g. ``bytes[N, Q]``) of the
    data coding ONE item of shape ``shape``; ``unit`` says whether it counts
    ``"bytes"`` (default) or ``"bits"``. ``shape``: the shape the count covers,
    e.g. ``(32, 32, 3)`` for one CIFAR image (3072 dims) or ``(N, 32, 32, 3)`` for a
    total over a batch. Returns ``count * (8 if bytes) / prod(shape)``: a float for
    a scalar count, else a float64 array of the count's shape.
    """
    if unit not in ("bytes", "bits"):
        raise ValueError(f"unit must be 'bytes' or 'bits', got {unit!r}")
    dims = int(np.prod(shape, dtype=np.int64))
    if dims <= 0:
        raise ValueError(f"shape {tuple(shape)} has no elements")
    bits = np.asarray(num_bytes_or_bits, dtype=np.float64) * (8.0 if unit == "bytes" else 1.0)
    out = bits / dims
    return float(out) if out.ndim == 0 else out
