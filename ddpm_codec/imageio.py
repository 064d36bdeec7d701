"""Reading and writing single images with Pillow, with explicit conversion rules, and atomic writes.

:func:`read_image` returns 8-bit RGB exactly as stored, or refuses with a one-line
:class:`ImageFormatError`; it never drops bits, alpha or frames silently:

- 8-bit RGB (and RGBX, whose fourth byte is padding): as is.
- grayscale ``L`` and bilevel ``1``: RGB with three equal channels (a note; nothing lost).
- palette ``P``/``PA``: looked up to RGB (exact; a note), then the alpha rule if it has transparency.
- with alpha (``RGBA``, ``LA``, ``PA``, transparent palettes): alpha dropped with a note only if every
  pixel is opaque; any transparent pixel: refused.
- 16-bit samples (``I;16*``, 16-bit RGB/RGBA/LA PNG and TIFF, PPM with maxval > 255), 32-bit ``I``,
  float ``F``: refused (Pillow would truncate 16-bit RGB to 8 bits without a word).
- CMYK, YCbCr, LAB, HSV and other modes: refused (no exact conversion to RGB).
- animated or multi-frame files (GIF, APNG, WebP, multi-page TIFF): refused, naming the frame count
  (a camera MPO JPEG: its primary image, with a note).
- ICC profile, EXIF orientation: not kept / not applied (the stored pixels are coded), with a note.
- larger than ``max_pixels``: refused from the file's size field, before the pixels are read.
- missing, empty, a folder, not an image, damaged: refused.

:func:`write_image` and :func:`write_bytes_atomic` write to a temporary file in the target's folder
and rename it over the target, so a failed write leaves neither a partial file nor a changed one; an
unwritable target raises a one-line :class:`OutputError`.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import Error, NotFoundError


class ImageFormatError(Error, ValueError):
    """An input image this codec refuses (with the reason), or an image it cannot write."""


class OutputError(Error, OSError):
    """An output path that cannot be written (one-line reason)."""


# rawmodes of 16 bits per sample (RGB;16B, RGBA;16L, LA;16B, I;16N, CMYK;16B, ...); not the packed
# 16-bit-per-pixel BGR;16 / RGB;16 (5-6-5), which hold less than 8 bits a channel
_DEEP_RAWMODE = re.compile(r";16[BLN]|^I;16")
_ALPHA_MODES = ("RGBA", "LA", "RGBa", "La")
_INEXACT = {"CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "L*a*b*", "HSV": "HSV"}


def _rawmodes(im) -> list[str]:
    out = []
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, str):
            out.append(args)
        elif isinstance(args, tuple) and args and isinstance(args[0], str):
            out.append(args[0])
    return out


def _deep_samples(im) -> str | None:
    """Why ``im`` (opened, not loaded) has more than 8 bits a sample, or None."""
    mode = im.mode
    if mode.startswith("I;16"):
        return f"16-bit samples ({mode})"
    if mode == "I":
        return "32-bit integer samples (I; or 16-bit grayscale)"
    if mode == "F":
        return "32-bit float samples (F)"
    for raw in _rawmodes(im):
        if _DEEP_RAWMODE.search(raw):
            return f"16-bit samples ({mode} stored as {raw})"
    for tile in getattr(im, "tile", None) or []:   # PPM/PGM with maxval > 255: Pillow rescales to 8 bits
        args = tile[3] if len(tile) > 3 else None
        if tile[0] == "ppm" and isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) \
                and args[1] > 255:
            return f"{args[1].bit_length()}-bit samples (maxval {args[1]})"
    return None


def read_image(path: str | Path, *, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read an image as uint8 RGB ``[H, W, 3]``, exactly; return it and notes on any conversion.

    The rules are in the module's docstring. ``max_pixels`` (default the codec's
    ``MAX_CODEC_PIXELS``) is checked on the size the file declares, before its pixels are decoded.
    Raises ``FileNotFoundError`` (no such file) or :class:`ImageFormatError`, each with one line.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.is_dir():
        raise ImageFormatError(f"{p} is a folder, not an image")
    if p.exists() and p.is_file() and p.stat().st_size == 0:
        raise ImageFormatError(f"{p} is empty (0 bytes), not an image")
    try:
        with warnings.catch_warnings():   # our own size limit applies, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except FileNotFoundError:
        raise NotFoundError(f"no image at {p}") from None
    except UnidentifiedImageError:
        raise ImageFormatError(f"{p} is not an image in a format Pillow reads (unknown or damaged)") from None
    except Image.DecompressionBombError as e:
        raise ImageFormatError(f"{p} is too large to read: {e}") from None
    except OSError as e:
        raise ImageFormatError(f"cannot read {p}: {e.strerror or e}") from None
    with im:
        return convert_image(im, p, max_pixels)


def convert_image(im, p: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The rules of the module's docstring on an opened Pillow image (loaded or not), named ``p`` in
    errors: uint8 RGB ``[H, W, 3]`` and notes, or :class:`ImageFormatError`."""
    frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    notes: list[str] = []
    if frames > 1 and im.format == "MPO":   # a camera JPEG with MPF extras: its first image is the photo
        notes.append(f"MPO (multi-picture JPEG): the primary image is coded, its {frames - 1} other image(s) "
                     "(previews, stereo views, gain maps) are not")
        frames = 1
    if frames > 1:
        raise ImageFormatError(f"{p} is animated or has several frames ({frames} frames, {im.format}): "
                               "ddpm-codec codes one still image; extract the frame you want first")
    deep = _deep_samples(im)
    if deep:
        raise ImageFormatError(f"{p} has {deep}: ddpm-codec codes 8-bit samples exactly and would lose bits; "
                               "convert it to 8 bits yourself if that is what you want")
    mode = im.mode
    if mode in _INEXACT:
        raise ImageFormatError(f"{p} is a {_INEXACT[mode]} image: it has no exact conversion to RGB; "
                               "convert it to 8-bit RGB yourself (with its colour profile) first")
    if mode not in ("RGB", "RGBX", "L", "1", "P", "PA", *_ALPHA_MODES):
        raise ImageFormatError(f"{p} has {mode} pixels: ddpm-codec codes 8-bit RGB (and converts grayscale, "
                               "palette and opaque-alpha images exactly); convert it first")
    from .codec.tiles import check_dimensions

    try:
        check_dimensions(im.size[1], im.size[0], max_pixels)
    except ValueError as e:
        raise ImageFormatError(f"{p}: {e}") from None
    try:
        im.load()
    except Exception as e:   # truncated or damaged data (OSError, SyntaxError, ValueError, zlib.error...)
        raise ImageFormatError(f"{p} cannot be decoded (truncated or damaged?): {e}") from None

    if "icc_profile" in im.info:
        notes.append("embedded colour profile (ICC) not kept: the pixels are coded as stored")
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (0, 1):
        notes.append(f"EXIF orientation {orientation} not applied: the pixels are coded as stored")
    what = mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        what = "P with a transparent colour" if mode == "P" and has_alpha else mode
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image converted to RGB (exact: a table lookup)")
        mode = im.mode
    if mode in _ALPHA_MODES:
        alpha = np.asarray(im.getchannel("A"))
        n = int(np.count_nonzero(alpha < 255))
        if n:
            raise ImageFormatError(f"{p} has transparent pixels ({n} of {alpha.size} with alpha < 255, mode {what}): "
                                   "ddpm-codec codes RGB only and would drop the alpha; flatten it onto a "
                                   "background first")
        notes.append(f"alpha channel dropped ({what}: every pixel is opaque)")
        if mode in ("LA", "La"):
            notes.append("grayscale image coded as RGB (3 equal channels)")
        im = im.convert("RGB")
    elif mode in ("L", "1"):
        notes.append(f"{'grayscale' if mode == 'L' else 'bilevel'} image coded as RGB (3 equal channels)")
        im = im.convert("RGB")
    elif mode == "RGBX":
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:   # the rules above leave only this
        raise ImageFormatError(f"{p}: unexpected {arr.dtype} pixels of shape {arr.shape} after conversion")
    return np.ascontiguousarray(arr), notes


# ----------------------------------------------------------------------------- writing
_UMASK: int | None = None


def _new_file_mode(p: Path) -> int:
    global _UMASK
    try:
        return p.stat().st_mode & 0o7777   # replacing a file keeps its permissions
    except OSError:
        pass
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _temp_beside(p: Path) -> tuple[int, str]:
    """Checks ``p`` as an output path and opens a temporary file in its folder."""
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a folder")
    if not p.parent.exists():
        raise OutputError(f"cannot write {p}: folder {p.parent} does not exist")
    if not p.parent.is_dir():
        raise OutputError(f"cannot write {p}: {p.parent} is not a folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"cannot write {p}: the file is read-only")
    try:
        return tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".part")
    except OSError as e:
        raise OutputError(f"cannot write {p}: {_why(e)}") from None


def read_bytes(path: str | Path) -> bytes:
    """A whole input file, or a one-line ``FileNotFoundError`` / :class:`ImageFormatError` (a folder,
    unreadable)."""
    p = Path(path)
    if p.is_dir():
        raise ImageFormatError(f"{p} is a folder, not a file")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no file at {p}") from None
    except OSError as e:
        raise ImageFormatError(f"cannot read {p}: {_why(e)}") from None


def folder_images(paths) -> list[Path]:
    """``paths`` with each folder replaced by the images in it (by name; suffixes of
    :data:`ddpm_codec.data.IMAGE_SUFFIXES`); a folder without images is an :class:`ImageFormatError`."""
    from .data import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise ImageFormatError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def make_folder(path: str | Path) -> Path | None:
    """Create the folder ``path`` (its parent must exist) unless it is one already; return it if it
    was created (to remove it again if nothing goes into it), else None. One-line :class:`OutputError`."""
    p = Path(path)
    if p.is_dir():
        return None
    if p.exists():
        raise OutputError(f"cannot write into {p}: it is a file, not a folder")
    if not p.parent.is_dir():
        raise OutputError(f"cannot create folder {p}: folder {p.parent} does not exist")
    try:
        p.mkdir()
    except OSError as e:
        raise OutputError(f"cannot create folder {p}: {_why(e)}") from None
    return p


def check_writable(path: str | Path) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written (by :func:`write_bytes_atomic`): not a
    folder, in an existing folder where a file can be created. Creates nothing (a probe file is
    removed at once). Call it before long work whose result goes there."""
    p = Path(path)
    fd, tmp = _temp_beside(p)
    os.close(fd)
    os.unlink(tmp)
    return p


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed, renamed over
    ``path``. On any failure nothing is left behind and an existing file is unchanged. One-line
    :class:`OutputError` for an unwritable path."""
    p = Path(path)
    fd, tmp = _temp_beside(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(p))
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write {p}: {_why(e)}") from None
        raise
    return p


def image_format_for(path: str | Path) -> str:
    """Pillow's format name for ``path``'s suffix (``.png`` -> ``PNG``), or :class:`ImageFormatError`."""
    from PIL import Image

    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ImageFormatError(f"cannot write {p}: {p.suffix or 'no suffix'!s} is not an image format Pillow "
                               "writes (use .png: lossless)")
    return fmt


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write uint8 RGB ``[H, W, 3]`` atomically; the format follows the suffix (PNG recommended:
    lossless). The image is encoded in memory first: an unknown suffix or a failed encode writes
    nothing; an unwritable path raises :class:`OutputError`. The folder must exist."""
    from PIL import Image

    fmt = image_format_for(path)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_image expects uint8 RGB [H, W, 3], got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as e:
        raise ImageFormatError(f"cannot write {path} as {fmt}: {e}") from None
    return write_bytes_atomic(path, buf.getvalue())
