"""Classical image codecs as baselines, measured on real files (headers included).

Every size reported here is ``len()`` of the complete byte string a codec writes,
i.e. what a file on disk would hold: container/headers included, nothing stripped.

Images are uint8 RGB arrays ``[H, W, 3]``; batches are ``[N, H, W, 3]``.
Rates are in bits/dim (bits per sub-pixel, 3 dims per pixel); see ``metrics``.

Lossless codecs (``LOSSLESS_CODECS``), each checked to round-trip exactly:
  * ``PNG``       Pillow, ``optimize=True`` (zlib level 9).
  * ``WebP``      Pillow, ``lossless=True, quality=100, method=6`` (slowest/best).
  * ``JPEG XL``   ``imagecodecs.jpegxl_encode(img, lossless=True, effort=7)``,
                  bare codestream (no ISOBMFF container).
  * ``JPEG 2000`` Pillow/OpenJPEG, reversible 5/3 wavelet + RCT (``mct=1``),
                  raw ``.j2k`` codestream (no JP2 boxes).

Lossy codecs (``LOSSY_CODECS``); each sweep knob increases fidelity:
  * ``JPEG``        Pillow/libjpeg, ``quality`` 1..100, chroma 4:2:0 (libjpeg's default
                    and what most files use), ``optimize=True`` (optimal Huffman
                    tables; with the stock tables the header alone is ~1.6 bits/dim
                    on a 32x32 image).
  * ``JPEG 4:4:4``  same with ``subsampling=0`` (no chroma subsampling).
  * ``WebP``        Pillow/libwebp, ``quality`` 0..100, ``method=6``; always 4:2:0.
  * ``AVIF``        Pillow/libavif, ``quality`` 0..100, 4:2:0, default speed.
  * ``AVIF 4:4:4``  same with ``subsampling="4:4:4"``.
  * ``JPEG 2000``   Pillow/OpenJPEG, irreversible 9/7 + ICT, ``quality_mode="rates"``;
                    the knob is the *target* bits/dim (compression ratio ``8 / knob``).
                    ``num_resolutions`` is capped so the coarsest band is >= 8 px
                    (3 for 32x32; OpenJPEG's default 6 is meant for large images).
                    Raw ``.j2k`` codestream.
  * ``JPEG XL``     ``imagecodecs.jpegxl_encode(img, level=quality, effort=7)``; ``level``
                    is libjxl's quality 0..100 (cjxl ``-q``; 90 = distance 1.0).

Small images are dominated by headers: on 32x32 CIFAR images no codec gets near
0.05 bits/dim (19 bytes). The lowest rates of the default sweeps are about JPEG 0.80,
AVIF 0.87, JPEG 2000 0.53 (below ~0.4 OpenJPEG emits an empty codestream), JPEG XL
0.30 and WebP 0.24 bits/dim. They reach >= 3 bits/dim, except WebP (always 4:2:0:
at most ~2.4 bits/dim, ~38 dB); 4:2:0 also caps JPEG and AVIF near 38-39 dB.

Optional back ends (AVIF, WebP, JPEG 2000 in Pillow; ``imagecodecs`` for JPEG XL)
are detected at run time: a missing one is skipped with a warning, never an error.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .metrics import bits_per_dim, mse_per_image, psnr_from_mse

__all__ = [
    "LosslessCodec",
    "LossyCodec",
    "LOSSLESS_CODECS",
    "LOSSY_CODECS",
    "SweepResult",
    "encode_png",
    "encode_webp_lossless",
    "encode_jpegxl_lossless",
    "encode_jpeg2000_lossless",
    "encode_jpeg",
    "encode_webp",
    "encode_avif",
    "encode_jpeg2000",
    "encode_jpegxl",
    "decode_pillow",
    "decode_jpegxl",
    "available_codecs",
    "lossless_sizes",
    "lossy_sweep",
    "pareto_front",
    "rate_at_psnr",
    "rate_ratio_at_equal_psnr",
]


# --------------------------------------------------------------------------- #
# availability


def _pillow_has(feature: str) -> bool:
    try:
        from PIL import features

        return bool(features.check(feature))
    except Exception:  # pragma: no cover - exotic Pillow builds
        return False


def _imagecodecs_has_jpegxl() -> bool:
    try:
        import imagecodecs
    except Exception:
        return False
    try:
        return bool(imagecodecs.JPEGXL.available)
    except Exception:
        return hasattr(imagecodecs, "jpegxl_encode")


# --------------------------------------------------------------------------- #
# encoders / decoders (one image, uint8 [H, W, 3] -> bytes and back)


def _check_image(img) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


def _pillow_encode(img, **save_kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_image(img)).save(buf, **save_kwargs)
    return buf.getvalue()


def decode_pillow(data: bytes) -> np.ndarray:
    """Decode any Pillow-readable file bytes to uint8 RGB ``[H, W, 3]``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_jpegxl(data: bytes) -> np.ndarray:
    """Decode JPEG XL bytes (via ``imagecodecs``) to uint8 RGB ``[H, W, 3]``."""
    import imagecodecs

    out = np.asarray(imagecodecs.jpegxl_decode(data))
    if out.dtype != np.uint8:
        raise ValueError(f"JPEG XL decoded to {out.dtype}, expected uint8")
    return out


def encode_png(img) -> bytes:
    """PNG file bytes of a uint8 ``[H, W, 3]`` image (Pillow, ``optimize=True``)."""
    return _pillow_encode(img, format="PNG", optimize=True)


def encode_webp_lossless(img) -> bytes:
    """Lossless WebP file bytes (``lossless=True, quality=100, method=6``)."""
    return _pillow_encode(img, format="WEBP", lossless=True, quality=100, method=6)


def encode_jpegxl_lossless(img, effort: int = 7) -> bytes:
    """Lossless JPEG XL codestream bytes (``imagecodecs.jpegxl_encode``, ``effort=7``)."""
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(_check_image(img), lossless=True, effort=effort))


def encode_jpeg2000_lossless(img) -> bytes:
    """Lossless JPEG 2000 ``.j2k`` codestream bytes (reversible 5/3 wavelet, RCT)."""
    img = _check_image(img)
    return _pillow_encode(
        img,
        format="JPEG2000",
        no_jp2=True,
        irreversible=False,
        mct=1,
        num_resolutions=_j2k_num_resolutions(img.shape[0], img.shape[1]),
    )


def encode_jpeg(img, quality: float, subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG file bytes; ``quality`` 1..100, optimal Huffman tables."""
    sub = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[subsampling]
    return _pillow_encode(img, format="JPEG", quality=int(round(quality)), subsampling=sub, optimize=True)


def encode_webp(img, quality: float) -> bytes:
    """Lossy WebP file bytes; ``quality`` 0..100, ``method=6``."""
    return _pillow_encode(img, format="WEBP", quality=int(round(quality)), method=6)


def encode_avif(img, quality: float, subsampling: str = "4:2:0") -> bytes:
    """AVIF file bytes; ``quality`` 0..100 (Pillow's libavif plugin)."""
    return _pillow_encode(img, format="AVIF", quality=int(round(quality)), subsampling=subsampling)


def _j2k_num_resolutions(h: int, w: int) -> int:
    """OpenJPEG's default 6 resolutions, capped so the coarsest band is >= 8 px."""
    return int(max(1, min(6, math.floor(math.log2(max(1, min(h, w)))) - 2)))


def encode_jpeg2000(img, target_bits_per_dim: float) -> bytes:
    """Lossy JPEG 2000 ``.j2k`` bytes at about ``target_bits_per_dim`` (9/7 wavelet, ICT).

    Uses ``quality_mode="rates"`` with compression ratio ``8 / target_bits_per_dim``.
    """
    img = _check_image(img)
    if target_bits_per_dim <= 0:
        raise ValueError("target_bits_per_dim must be > 0")
    return _pillow_encode(
        img,
        format="JPEG2000",
        no_jp2=True,
        irreversible=True,
        mct=1,
        quality_mode="rates",
        quality_layers=[8.0 / float(target_bits_per_dim)],
        num_resolutions=_j2k_num_resolutions(img.shape[0], img.shape[1]),
    )


def encode_jpegxl(img, quality: float, effort: int = 7) -> bytes:
    """Lossy JPEG XL codestream bytes; ``quality`` 0..100 (libjxl quality, cjxl ``-q``)."""
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(_check_image(img), level=float(quality), effort=effort))


# --------------------------------------------------------------------------- #
# registries


@dataclass(frozen=True)
class LosslessCodec:
    """A lossless codec: ``codec(img) -> bytes``; ``decode(bytes) -> img``."""

    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    available: Callable[[], bool]
    note: str = ""

    def __call__(self, img) -> bytes:
        return self.encode(img)


@dataclass(frozen=True)
class LossyCodec:
    """A lossy codec: ``codec(img, quality) -> bytes``; ``decode(bytes) -> img``.

    ``qualities`` is the default sweep of the codec's knob ``param``, in increasing
    fidelity order.
    """

    name: str
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    available: Callable[[], bool]
    param: str
    qualities: tuple[float, ...]
    note: str = ""

    def __call__(self, img, quality: float) -> bytes:
        return self.encode(img, quality)


def _always() -> bool:
    return True


LOSSLESS_CODECS: dict[str, LosslessCodec] = {
    c.name: c
    for c in [
        LosslessCodec("PNG", encode_png, decode_pillow, _always, "Pillow optimize=True"),
        LosslessCodec(
            "WebP", encode_webp_lossless, decode_pillow, lambda: _pillow_has("webp"),
            "lossless=True quality=100 method=6",
        ),
        LosslessCodec(
            "JPEG XL", encode_jpegxl_lossless, decode_jpegxl, _imagecodecs_has_jpegxl,
            "imagecodecs lossless effort=7, bare codestream",
        ),
        LosslessCodec(
            "JPEG 2000", encode_jpeg2000_lossless, decode_pillow, lambda: _pillow_has("jpg_2000"),
            "OpenJPEG 5/3 + RCT, .j2k codestream",
        ),
    ]
}

_Q100 = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 100)

LOSSY_CODECS: dict[str, LossyCodec] = {
    c.name: c
    for c in [
        LossyCodec(
            "JPEG", encode_jpeg, decode_pillow, _always, "quality", _Q100,
            "4:2:0, optimize=True",
        ),
        LossyCodec(
            "JPEG 4:4:4", lambda img, q: encode_jpeg(img, q, subsampling="4:4:4"), decode_pillow,
            _always, "quality", _Q100, "4:4:4, optimize=True",
        ),
        LossyCodec(
            "WebP", encode_webp, decode_pillow, lambda: _pillow_has("webp"), "quality",
            (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100), "method=6, 4:2:0",
        ),
        LossyCodec(
            "AVIF", encode_avif, decode_pillow, lambda: _pillow_has("avif"), "quality",
            (0, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 100), "4:2:0",
        ),
        LossyCodec(
            "AVIF 4:4:4", lambda img, q: encode_avif(img, q, subsampling="4:4:4"), decode_pillow,
            lambda: _pillow_has("avif"), "quality",
            (0, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 100), "4:4:4",
        ),
        LossyCodec(
            "JPEG 2000", encode_jpeg2000, decode_pillow, lambda: _pillow_has("jpg_2000"),
            "target bits/dim", (0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0),
            "9/7 + ICT, rates mode, .j2k",
        ),
        LossyCodec(
            "JPEG XL", encode_jpegxl, decode_jpegxl, _imagecodecs_has_jpegxl, "quality",
            (0, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 98, 99), "effort=7",
        ),
    ]
}


def available_codecs(registry: Mapping, names: Iterable[str] | None = None, warn: bool = True) -> list[str]:
    """Names (from ``names``, default all of ``registry``) whose back end is usable.

    Unknown names raise ``KeyError``; unavailable ones are dropped with a
    ``RuntimeWarning`` (if ``warn``).
    """
    names = list(registry) if names is None else list(names)
    out = []
    for name in names:
        if name not in registry:
            raise KeyError(f"unknown codec {name!r}; known: {sorted(registry)}")
        try:
            ok = bool(registry[name].available())
        except Exception:
            ok = False
        if ok:
            out.append(name)
        elif warn:
            warnings.warn(f"codec {name!r} is not available here; skipping it", RuntimeWarning, stacklevel=2)
    return out


def _check_batch(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# --------------------------------------------------------------------------- #
# batch measurements


def lossless_sizes(
    images,
    codecs: Sequence[str] | None = None,
    progress: bool = True,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """File size in bytes of each image under each lossless codec.

    ``images``: uint8 ``[N, H, W, 3]``. ``codecs``: names from ``LOSSLESS_CODECS``
    (default: all available; unavailable ones are skipped with a warning).
    Returns ``{name: int64 [N] bytes}`` (full file sizes, headers included). With
    ``verify`` (default) each file is decoded and must equal the input exactly,
    else ``RuntimeError``. Bits/dim: ``bits_per_dim(sizes, images.shape[1:])``.
    """
    images = _check_batch(images)
    names = available_codecs(LOSSLESS_CODECS, codecs)
    out: dict[str, np.ndarray] = {}
    with _progress(len(names) * len(images), "lossless", progress) as bar:
        for name in names:
            codec = LOSSLESS_CODECS[name]
            sizes = np.zeros(len(images), dtype=np.int64)
            for i, img in enumerate(images):
                data = codec.encode(img)
                if verify:
                    back = codec.decode(data)
                    if back.shape != img.shape or not np.array_equal(back, img):
                        raise RuntimeError(f"{name} did not round-trip image {i} exactly")
                sizes[i] = len(data)
                bar.update(1)
            out[name] = sizes
    return out


@dataclass
class SweepResult:
    """One codec's quality sweep over ``N`` images and ``Q`` settings.

    ``quality[Q]``: the knob values (see ``param``), increasing fidelity.
    ``bytes[N, Q]``: file sizes (headers included). ``rmse[N, Q]`` (pixel values,
    0..255 scale) and ``psnr[N, Q]`` (dB, ``+inf`` if exact) per image and setting.
    ``image_shape``: ``(H, W, C)``, for bits/dim.
    """

    codec: str
    param: str
    quality: np.ndarray
    bytes: np.ndarray
    rmse: np.ndarray
    psnr: np.ndarray
    image_shape: tuple[int, int, int]
    note: str = ""

    @property
    def bits_per_dim(self) -> np.ndarray:
        """``[N, Q]`` bits/dim of each file."""
        return bits_per_dim(self.bytes, self.image_shape)

    @property
    def mean_bits_per_dim(self) -> np.ndarray:
        """``[Q]`` mean over images of bits/dim (= total bits / total dims)."""
        return self.bits_per_dim.mean(axis=0)

    @property
    def mean_psnr(self) -> np.ndarray:
        """``[Q]`` mean over images of per-image PSNR (dB); ``inf`` if any image is exact."""
        return self.psnr.mean(axis=0)

    @property
    def mean_rmse(self) -> np.ndarray:
        """``[Q]`` mean over images of per-image RMSE (pixel values)."""
        return self.rmse.mean(axis=0)

    @property
    def psnr_of_mean_mse(self) -> np.ndarray:
        """``[Q]`` PSNR (dB) of the MSE pooled over all images."""
        return np.asarray(psnr_from_mse((self.rmse**2).mean(axis=0)), dtype=np.float64)


def lossy_sweep(
    images,
    codecs: Sequence[str] | None = None,
    qualities: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    progress: bool = True,
) -> dict[str, SweepResult]:
    """Encode/decode every image at every quality of every lossy codec.

    ``images``: uint8 ``[N, H, W, 3]``. ``codecs``: names from ``LOSSY_CODECS``
    (default: all available; unavailable ones skipped with a warning).
    ``qualities``: ``None`` (each codec's default sweep), one sequence used for all
    codecs, or ``{name: sequence}`` (codecs missing from it use their default).
    Returns ``{name: SweepResult}`` with arrays ``bytes/rmse/psnr [N, Q]``.
    """
    images = _check_batch(images)
    names = available_codecs(LOSSY_CODECS, codecs)

    def qs_for(name: str) -> np.ndarray:
        if qualities is None:
            q = LOSSY_CODECS[name].qualities
        elif isinstance(qualities, Mapping):
            q = qualities.get(name, LOSSY_CODECS[name].qualities)
        else:
            q = qualities
        return np.asarray(list(q), dtype=np.float64)

    sweeps = {name: qs_for(name) for name in names}
    total = len(images) * sum(len(q) for q in sweeps.values())
    out: dict[str, SweepResult] = {}
    with _progress(total, "lossy", progress) as bar:
        for name in names:
            codec = LOSSY_CODECS[name]
            qs = sweeps[name]
            n, nq = len(images), len(qs)
            nbytes = np.zeros((n, nq), dtype=np.int64)
            mses = np.zeros((n, nq), dtype=np.float64)
            for j, q in enumerate(qs):
                decoded = np.empty_like(images)
                for i, img in enumerate(images):
                    data = codec.encode(img, float(q))
                    back = codec.decode(data)
                    if back.shape != img.shape:
                        raise RuntimeError(f"{name} decoded shape {back.shape} != {img.shape}")
                    decoded[i] = back
                    nbytes[i, j] = len(data)
                    bar.update(1)
                mses[:, j] = mse_per_image(images, decoded)
            out[name] = SweepResult(
                codec=name,
                param=codec.param,
                quality=qs,
                bytes=nbytes,
                rmse=np.sqrt(mses),
                psnr=np.asarray(psnr_from_mse(mses), dtype=np.float64),
                image_shape=tuple(int(s) for s in images.shape[1:]),
                note=codec.note,
            )
    return out


# --------------------------------------------------------------------------- #
# comparing rate-distortion curves


def pareto_front(rates, psnrs) -> tuple[np.ndarray, np.ndarray]:
    """Operating points not beaten by another (lower-or-equal rate AND higher PSNR).

    ``rates``, ``psnrs``: 1-D, same length (any rate unit; PSNR in dB). Non-finite
    points are dropped. Returns ``(rates, psnrs)`` sorted by rate, both strictly
    increasing: a monotone rate-distortion curve.
    """
    r = np.asarray(rates, dtype=np.float64).ravel()
    p = np.asarray(psnrs, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise ValueError(f"rates and psnrs differ in length: {r.shape} vs {p.shape}")
    keep = np.isfinite(r) & np.isfinite(p)
    r, p = r[keep], p[keep]
    order = np.lexsort((-p, r))  # by rate, then best PSNR first
    fr, fp = [], []
    for ri, pi in zip(r[order], p[order]):
        if not fp or pi > fp[-1]:  # a tie in rate cannot pass: best PSNR came first
            fr.append(ri)
            fp.append(pi)
    return np.asarray(fr), np.asarray(fp)


def rate_at_psnr(rates, psnrs, target_psnr: float) -> float:
    """Rate needed to reach ``target_psnr`` (dB) on a rate-distortion curve.

    The curve is reduced to its Pareto front (``pareto_front``), then log(rate) is
    linearly interpolated against PSNR. Returns a rate in the units of ``rates``
    (must be > 0), or ``nan`` if ``target_psnr`` is outside the curve's PSNR range.
    """
    r, p = pareto_front(rates, psnrs)
    if len(r) == 0 or np.any(r <= 0):
        raise ValueError("need at least one finite point with positive rates")
    t = float(target_psnr)
    if not (p[0] <= t <= p[-1]):
        return float("nan")
    return float(np.exp(np.interp(t, p, np.log(r))))


def rate_ratio_at_equal_psnr(rates_a, psnrs_a, rates_b, psnrs_b, num_points: int = 101) -> float:
    """How many times more bits curve A needs than curve B at equal PSNR (BD-rate style).

    Both curves are reduced to their Pareto fronts; on ``num_points`` PSNRs evenly
    spaced over the overlap of their PSNR ranges, log(rate) is linearly
    interpolated on each, and ``exp(mean(log(rate_a / rate_b)))`` is returned.
    < 1 means A is cheaper (0.8: A needs 20 % fewer bits; the usual BD-rate
    percentage is ``100 * (ratio - 1)``). ``nan`` if the PSNR ranges do not overlap.
    Piecewise-linear, not Bjøntegaard's cubic fit.
    """
    ra, pa = pareto_front(rates_a, psnrs_a)
    rb, pb = pareto_front(rates_b, psnrs_b)
    if len(ra) == 0 or len(rb) == 0:
        return float("nan")
    if np.any(ra <= 0) or np.any(rb <= 0):
        raise ValueError("rates must be > 0")
    lo, hi = max(pa[0], pb[0]), min(pa[-1], pb[-1])
    if lo > hi:
        return float("nan")
    grid = np.linspace(lo, hi, max(2, int(num_points))) if hi > lo else np.array([lo])
    la = np.interp(grid, pa, np.log(ra))
    lb = np.interp(grid, pb, np.log(rb))
    return float(np.exp(np.mean(la - lb)))
