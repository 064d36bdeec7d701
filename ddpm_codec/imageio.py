"""Reading and writing single images with Pillow, with explicit conversion rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class ImageFormatError(ValueError):
    """An input image this codec refuses (with the reason)."""


def read_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read an image as uint8 RGB ``[H, W, 3]``; return it and notes on any conversion.

    Grayscale, bilevel, palette and CMYK/YCbCr images are converted to RGB; an alpha channel is
    dropped only if fully opaque; 16-bit and float images are refused (they would lose bits).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        im = Image.open(p)
        im.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {p}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageFormatError(f"{p} is not a readable image ({e})") from None
    notes: list[str] = []
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or mode.startswith("I;16"):
        raise ImageFormatError(f"{p} has {mode} pixels (16-bit/32-bit/float): ddpm-codec codes 8-bit RGB; "
                               "convert it to 8-bit first")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette image converted to RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise ImageFormatError(f"{p} has transparent pixels: ddpm-codec codes RGB only; flatten it onto a background first")
        notes.append("opaque alpha channel dropped")
        im = im.convert("RGB")
    elif mode in ("L", "1"):
        notes.append(f"{'grayscale' if mode == 'L' else 'bilevel'} image coded as RGB (3 equal channels)")
        im = im.convert("RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)), notes


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 RGB ``[H, W, 3]``; the format follows the suffix (PNG recommended: lossless)."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(p)
