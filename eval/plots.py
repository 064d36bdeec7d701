"""Figures written as PNG files.

``plot_rd`` and ``plot_vs_time`` use matplotlib with the non-interactive Agg
backend (imported lazily, inside the functions). ``save_image_grid`` only needs
Pillow.

A *series* is a dict ``{"label": str, "x": array[K], "y": array[K], "style": ...}``;
``style`` is optional and is either a matplotlib format string (``"o-"``, ``"k--"``)
or a dict of ``Axes.plot`` keyword arguments (``{"color": "C3", "marker": "s"}``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["plot_rd", "plot_vs_time", "save_image_grid", "image_grid", "square_grid"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _draw_series(ax, series: Sequence[Mapping[str, Any]]) -> None:
    for s in series:
        x = np.asarray(s["x"], dtype=np.float64)
        y = np.asarray(s["y"], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"series {s.get('label')!r}: x {x.shape} and y {y.shape} differ")
        style = s.get("style")
        label = s.get("label")
        if isinstance(style, Mapping):
            ax.plot(x, y, label=label, **style)
        elif style:
            ax.plot(x, y, style, label=label)
        else:
            ax.plot(x, y, ".-", label=label)
    if any(s.get("label") for s in series):
        ax.legend(fontsize="small")


def _save(fig, path) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def plot_rd(
    series: Sequence[Mapping[str, Any]],
    path,
    x: str = "bits/dim",
    y: str = "PSNR (dB)",
    title: str | None = None,
    log_x: bool = False,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (6.0, 4.5),
) -> str:
    """Rate-distortion plot of ``series`` (rate on x, quality on y) written to ``path``.

    ``x``/``y`` are the axis labels; ``log_x`` puts the rate on a log axis.
    Non-finite points (e.g. PSNR = inf of lossless points) are not drawn.
    Returns ``path`` (a PNG file).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    try:
        _draw_series(ax, series)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if log_x:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if xlim is not None:
            ax.set_xlim(*xlim)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_vs_time(
    panels: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    path,
    x: str = "reverse-process timestep t",
    title: str | None = None,
    t_max: float = 1000.0,
    invert_x: bool = True,
    figsize_per_panel: tuple[float, float] = (6.0, 3.0),
) -> str:
    """Curves against diffusion time ``t`` in ``[0, t_max]``, one subplot per panel.

    ``panels``: one dict or a list of dicts ``{"y": y-axis label, "series": [series,
    ...], "log_y": bool (optional)}``; each series' ``x`` holds timesteps ``t``.
    Panels are stacked vertically and share the time axis. With ``invert_x``
    (default) the axis runs from ``t_max`` to 0, i.e. in decoding order of the
    reverse process. Returns ``path`` (a PNG file).
    """
    if isinstance(panels, Mapping):
        panels = [panels]
    panels = list(panels)
    if not panels:
        raise ValueError("need at least one panel")
    plt = _pyplot()
    w, h = figsize_per_panel
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(w, h * len(panels)), dpi=100, squeeze=False)
    try:
        for ax, panel in zip(axes[:, 0], panels):
            _draw_series(ax, panel["series"])
            ax.set_ylabel(panel.get("y", ""))
            if panel.get("log_y"):
                ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        last = axes[-1, 0]
        last.set_xlabel(x)
        last.set_xlim((t_max, 0.0) if invert_x else (0.0, t_max))
        if title:
            axes[0, 0].set_title(title)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def square_grid(images, pad_value: int = 255) -> np.ndarray:
    """Lay ``N`` images ``[N, H, W, C]`` out row-major on a near-square grid: ``ceil(sqrt(N))``
    columns and as many rows as needed, the empty cells after the last image filled with
    ``pad_value`` (white). Returns ``[rows, cols, H, W, C]`` of the input's dtype (for ``image_grid``)."""
    a = np.asarray(images)
    if a.ndim != 4 or not len(a):
        raise ValueError(f"expected [N, H, W, C] with N >= 1, got shape {a.shape}")
    n = len(a)
    cols = math.isqrt(n - 1) + 1   # ceil(sqrt(n)), exactly
    rows = -(-n // cols)
    filler = np.full((rows * cols - n, *a.shape[1:]), pad_value, dtype=a.dtype)
    return np.concatenate([a, filler]).reshape(rows, cols, *a.shape[1:])


def image_grid(images, pad: int = 2, pad_value: int = 255, ncols: int | None = None, scale: int = 1) -> np.ndarray:
    """Tile images into one uint8 image.

    ``images``: uint8 ``[N, H, W, C]`` (laid out row-major on a grid with ``ncols``
    columns, default ``ceil(sqrt(N))``; empty cells filled with ``pad_value``) or
    ``[R, K, H, W, C]`` (R rows of K images, e.g. progressive strips). C is 1 or 3;
    ``[N, H, W]`` is taken as grayscale. Each image is upscaled by the integer
    ``scale`` (nearest neighbour) and ``pad`` pixels separate and surround them.
    Returns uint8 ``[rows*(H*scale+pad)+pad, cols*(W*scale+pad)+pad, C]``.
    """
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype}")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim == 4:
        n = a.shape[0]
        cols = int(ncols) if ncols else max(1, int(np.ceil(np.sqrt(n))))
        rows = max(1, -(-n // cols))
        filler = np.full((rows * cols - n,) + a.shape[1:], pad_value, dtype=np.uint8)
        a = np.concatenate([a, filler]).reshape((rows, cols) + a.shape[1:])
    if a.ndim != 5 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W, C] or [R, K, H, W, C] with C in (1, 3), got {np.shape(images)}")
    if scale != 1:
        a = a.repeat(int(scale), axis=2).repeat(int(scale), axis=3)
    rows, cols, h, w, c = a.shape
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
            out[y0 : y0 + h, x0 : x0 + w] = a[r, k]
    return out


def save_image_grid(
    images, path, pad: int = 2, pad_value: int = 255, ncols: int | None = None, scale: int = 1
) -> str:
    """Write ``image_grid(images, ...)`` as a PNG (Pillow, no matplotlib); returns ``path``.

    ``images``: uint8 ``[N, H, W, 3]`` or ``[R, K, H, W, 3]`` (see ``image_grid``).
    """
    from PIL import Image

    grid = image_grid(images, pad=pad, pad_value=pad_value, ncols=ncols, scale=scale)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    return path
