"""Lossless coding of x_0 with the discretized Gaussian decoder (Ho et al. 2020, Eq. 13).

A pixel value ``v`` in ``{0, ..., 255}`` is the data point ``x = v / 127.5 - 1`` in
``[-1, 1]``. Given the network's per-pixel mean ``mu`` and standard deviation
``sigma > 0`` (both in the same ``[-1, 1]`` convention), Eq. 13 assigns

    p(v | mu, sigma) = Phi((x + 1/255 - mu) / sigma) - Phi((x - 1/255 - mu) / sigma),

except that the edge bins are open: for ``v = 0`` the lower limit is ``-inf`` and for
``v = 255`` the upper limit is ``+inf``, so the 256 probabilities sum to exactly 1.

Entropy coder
-------------
The bits are produced by ``constriction``'s ANS coder (``stream.stack.AnsCoder``, a
stack) with the model family ``stream.model.QuantizedGaussian(0, 255)``, fed the pixel-
space parameters ``mean_pix = (mu + 1) * 127.5`` and ``std_pix = sigma * 127.5``. In
pixel units the bin of ``v`` is ``[v - 0.5, v + 0.5]``, which is exactly Eq. 13's bin
``[x - 1/255, x + 1/255]`` scaled by 127.5. ``QuantizedGaussian`` is built on
constriction's ``LeakyQuantizer``, whose Rust source (``src/stream/model/quantize.rs``,
``left_cumulative_and_probability``) pins the left cumulative of the smallest symbol to
0 and the right cumulative of the largest symbol to ``2**24``: the tail mass goes to the
edge symbols, i.e. the edge bins are open exactly as in Eq. 13. (The Python docstring of
``QuantizedGaussian`` speaks of "clipping and renormalizing"; the code and our
measurements say otherwise: encoding ``v = 255`` under ``mean_pix = 255, std_pix = 1``
costs ``-log2 Phi(0.5) = 0.532`` bits per symbol, the open-edge value, not the
renormalized 0.853.)

Each probability is represented with 24-bit fixed point, and every symbol gets at least
``2**-24`` ("leaky"), so the code length is slightly above ``-log2 p`` for typical pixels
(measured: 18-27 bits, mean 23, on top of ~11,350 bits for a 32x32x3 image and of
~45,300 bits for 64x64x3, sigma in 0.01-0.05: a fixed ~3 bytes of ANS state rather than
a per-pixel loss; see ``docs/FORMAT.md``), and below it for pixels the model finds
extremely unlikely (they cost at most 24 bits each). ``QuantizedGaussian`` was
picked over a ``Categorical(probs, perfect=False)`` table built from
:func:`discretized_gaussian_probs` because it gives the same code length (measured equal
to the bit) at about 1/80 of the time (0.5 ms vs 40 ms for 3072 pixels, encode+decode),
and needs no ``[N, 256]`` table.

Parameters the coder sees are built by one function, :func:`coder_params`, on both the
encoder and the decoder side: any float dtype in, float64 out. The encoder and decoder
must pass ``means``/``scales`` with bit-identical float64 values (float32 arrays and
their exact float64 casts give the same bytes); the coder cannot detect a mismatch, the
container's pixel CRC-32 does.

Byte layout of a payload
------------------------
``get_compressed()`` returns uint32 words; they are written little-endian, and the zero
high-order bytes of the last word are dropped (the ANS head is never zero, so the last
word is nonzero and the word count is recovered as ``ceil(len / 4)``; the decoder pads
with zero bytes). A valid payload therefore never ends in ``0x00``; an empty payload is
valid (it is what an ANS stack holds when every symbol sat at the bottom of its CDF with
the coder still in its initial state).
"""

from __future__ import annotations

import math

import constriction
import numpy as np
from scipy.special import erf, log_ndtr

__all__ = [
    "NUM_LEVELS",
    "coder_params",
    "decode_pixels",
    "discretized_gaussian_log_likelihood",
    "discretized_gaussian_probs",
    "encode_pixels",
    "ideal_bits",
    "read_pixels",
    "write_pixels",
]

NUM_LEVELS = 256
"""Number of pixel values; bin half-width in the [-1, 1] convention is 1 / 255."""

_HALF_BIN = 1.0 / 255.0
_PIXEL_SCALE = 127.5  # x = v / 127.5 - 1
PIXEL_SCALE = _PIXEL_SCALE  # the coder's pixel units: mean_pix = (μ + 1)·PIXEL_SCALE
_SQRT_HALF = math.sqrt(0.5)
_TINY = np.finfo(np.float64).tiny


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------


def _float64_params(means, scales) -> tuple[np.ndarray, np.ndarray]:
    """Checks ``means``/``scales`` (same shape, floating dtype, finite, scales > 0)."""
    means = np.asarray(means)
    scales = np.asarray(scales)
    for name, arr in (("means", means), ("scales", scales)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if means.shape != scales.shape:
        raise ValueError(
            f"means and scales must have the same shape, got {means.shape} and {scales.shape}"
        )
    means = means.astype(np.float64, copy=False)
    scales = scales.astype(np.float64, copy=False)
    if not np.all(np.isfinite(means)):
        raise ValueError("means must be finite (found NaN or inf)")
    if not np.all(np.isfinite(scales)):
        raise ValueError("scales must be finite (found NaN or inf)")
    if not np.all(scales > 0):
        raise ValueError(f"scales must be > 0, smallest is {scales.min()!r}")
    return means, scales


def _check_pixels(pixels, shape: tuple[int, ...]) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be a uint8 array, got dtype {pixels.dtype}")
    if pixels.shape != shape:
        raise ValueError(
            f"pixels and means must have the same shape, got {pixels.shape} and {shape}"
        )
    return pixels


# ---------------------------------------------------------------------------------------
# The density of Eq. 13 (float64, numerically careful)
# ---------------------------------------------------------------------------------------


def _log_bin_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``log(Phi(hi) - Phi(lo))`` elementwise for standardized limits ``lo < hi``.

    ``lo`` may be ``-inf`` and ``hi`` may be ``+inf``. Three regimes, each without
    cancellation: a bin in the lower tail (``hi <= 0``) uses ``log_ndtr`` and
    ``expm1``; a bin in the upper tail (``lo >= 0``) is reflected onto the lower tail;
    a bin straddling 0 uses ``(erf(hi/sqrt2) - erf(lo/sqrt2)) / 2``, a sum of two
    non-negative terms. Returns nats; ``-inf`` only where the mass underflows float64.
    """
    lo, hi = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    out = np.empty(lo.shape, np.float64)
    lower = hi <= 0.0
    upper = lo >= 0.0
    middle = ~(lower | upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        for sel, a, b in ((lower, lo[lower], hi[lower]), (upper, -hi[upper], -lo[upper])):
            if a.size:
                log_b = log_ndtr(b)
                # log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b)))
                res = log_b + np.log(-np.expm1(log_ndtr(a) - log_b))
                # a == b == -inf (a tiny sigma far from the bin): mass 0, not NaN.
                out[sel] = np.where(log_b == -np.inf, -np.inf, res)
        if np.any(middle):
            a, b = lo[middle], hi[middle]
            out[middle] = np.log(0.5 * (erf(b * _SQRT_HALF) - erf(a * _SQRT_HALF)))
    return out


def _bin_limits(values: np.ndarray, means: np.ndarray, scales: np.ndarray):
    """Standardized bin limits of Eq. 13 for pixel values ``values`` (any int array)."""
    x = values.astype(np.float64) / _PIXEL_SCALE - 1.0
    lo = (x - _HALF_BIN - means) / scales
    hi = (x + _HALF_BIN - means) / scales
    lo = np.where(values == 0, -np.inf, lo)
    hi = np.where(values == NUM_LEVELS - 1, np.inf, hi)
    return lo, hi


def discretized_gaussian_probs(means, scales) -> np.ndarray:
    """The 256 bin probabilities of Eq. 13 for every pixel.

    Args:
        means: float array ``[...]``, per-pixel mean in the ``[-1, 1]`` convention (may
            lie outside ``[-1, 1]``).
        scales: float array ``[...]``, per-pixel standard deviation, ``> 0``.

    Returns:
        float64 array ``[..., 256]``; entry ``v`` is ``p(v | mu, sigma)`` with open edge
        bins, so each row sums to 1 up to float64 rounding (about 1e-15). Masses below
        the smallest normal float64 (2.2e-308) are clamped to it, so ``log p`` is finite;
        for exact log-probabilities in the deep tails use
        :func:`discretized_gaussian_log_likelihood`. For analysis; the coder itself uses
        :func:`coder_params`.
    """
    means, scales = _float64_params(means, scales)
    values = np.arange(NUM_LEVELS)
    with np.errstate(over="ignore"):  # z = +-inf for tiny sigma is handled
        lo, hi = _bin_limits(values, means[..., None], scales[..., None])
    return np.maximum(np.exp(_log_bin_mass(lo, hi)), _TINY)


def discretized_gaussian_log_likelihood(pixels, means, scales) -> np.ndarray:
    """``log p(v | mu, sigma)`` of Eq. 13 per pixel, in nats (float64, same shape)."""
    means, scales = _float64_params(means, scales)
    pixels = _check_pixels(pixels, means.shape)
    with np.errstate(over="ignore"):
        lo, hi = _bin_limits(pixels.astype(np.int64), means, scales)
    return _log_bin_mass(lo, hi)


def ideal_bits(pixels, means, scales) -> float:
    """``-sum log2 p(v | mu, sigma)`` over all pixels: the ideal code length in bits."""
    return float(-np.sum(discretized_gaussian_log_likelihood(pixels, means, scales)) / math.log(2))


# ---------------------------------------------------------------------------------------
# Real bits
# ---------------------------------------------------------------------------------------


def pixel_means(means: np.ndarray) -> np.ndarray:
    """The coder's means in pixel units, ``(μ + 1)·127.5`` (float64): the one expression, used by
    :func:`coder_params` and by callers that build parameters pixel by pixel."""
    return (means + 1.0) * _PIXEL_SCALE


def coder_params(means, scales) -> tuple[np.ndarray, np.ndarray]:
    """The ONE function that builds the entropy model parameters, for encoder and decoder.

    Args:
        means, scales: float arrays of one shape, ``[-1, 1]`` convention, ``scales > 0``.

    Returns:
        ``(mean_pix, std_pix)``: flat float64 ``[N]`` arrays for
        ``QuantizedGaussian(0, 255)``, ``mean_pix = (mu + 1) * 127.5``,
        ``std_pix = sigma * 127.5``.
    """
    means, scales = _float64_params(means, scales)
    with np.errstate(over="ignore"):  # overflow is reported just below
        mean_pix = np.ascontiguousarray(pixel_means(means.reshape(-1)))
        std_pix = np.ascontiguousarray(scales.reshape(-1) * _PIXEL_SCALE)
    if not (np.all(np.isfinite(mean_pix)) and np.all(np.isfinite(std_pix))):
        raise ValueError("means or scales too large: overflow in pixel units")
    if not np.all(std_pix > 0):
        raise ValueError("scales too small: underflow to 0 in pixel units")
    return mean_pix, std_pix


def _model_family():
    return constriction.stream.model.QuantizedGaussian(0, NUM_LEVELS - 1)


def encode_pixels(pixels, means, scales) -> bytes:
    """Losslessly encodes pixels with the discretized Gaussian of Eq. 13.

    Args:
        pixels: uint8 array of any shape.
        means, scales: float arrays of the same shape (``[-1, 1]`` convention,
            ``scales > 0``), e.g. the network's mean and sigma of p(x_0 | x_1).

    Returns:
        The payload bytes (see the module docstring for the layout). Arrays are
        flattened in C order.
    """
    mean_pix, std_pix = coder_params(means, scales)
    pixels = _check_pixels(pixels, np.shape(means))
    symbols = np.ascontiguousarray(pixels.reshape(-1), dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    if symbols.size:
        coder.encode_reverse(symbols, _model_family(), mean_pix, std_pix)
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    if words.size and words[-1] == 0:  # cannot happen: constriction's head is never 0
        raise RuntimeError("ANS coder produced a zero last word")
    return words.tobytes().rstrip(b"\x00")


def decode_pixels(data: bytes, means, scales) -> np.ndarray:
    """Inverse of :func:`encode_pixels`.

    Args:
        data: the payload bytes.
        means, scales: arrays with the same float64 values as those given to
            :func:`encode_pixels`; their size gives the number of pixels ``N``.

    Returns:
        uint8 array ``[N]`` (flat, C order of ``means``).

    Raises:
        ValueError: bad ``means``/``scales``, or ``data`` that cannot be a payload (ends
            in a zero byte, or is not fully consumed). Garbage that passes these checks
            decodes to garbage pixels (never hangs): the container's pixel CRC-32 is what
            detects that.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    mean_pix, std_pix = coder_params(means, scales)
    if data.endswith(b"\x00"):
        raise ValueError("x0 payload is corrupted: a valid payload never ends in a zero byte")
    padded = data + b"\x00" * (-len(data) % 4)
    words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        if mean_pix.size:
            symbols = coder.decode(_model_family(), mean_pix, std_pix)
        else:
            symbols = np.zeros(0, np.int32)
    except Exception as exc:  # constriction reports invalid data as ValueError
        raise ValueError(f"x0 payload is corrupted: {exc}") from exc
    if not coder.is_empty():
        raise ValueError(
            "x0 payload is corrupted or does not match the model: "
            "data left over after decoding all pixels"
        )
    return np.asarray(symbols).astype(np.uint8)


def write_pixels(encoder, pixels, means, scales) -> None:
    """Appends pixels to a ``constriction.stream.queue.RangeEncoder`` (a queue: in order)
    under the same model as :func:`encode_pixels` (format version 2: x_0 at the end of the
    one coded stream, so it shares that stream's end instead of paying its own ANS state and
    length field)."""
    pixels = _check_pixels(pixels, np.shape(means))
    write_pixels_params(encoder, pixels.reshape(-1), *coder_params(means, scales))


def write_pixels_params(encoder, pixels, mean_pix, std_pix) -> None:
    """:func:`write_pixels` for callers that already hold the coder's parameters (as
    :func:`read_pixels_params`)."""
    symbols = np.ascontiguousarray(_check_pixels(pixels, np.shape(mean_pix)), dtype=np.int32)
    if symbols.size:
        encoder.encode(symbols, _model_family(), mean_pix, std_pix)


def read_pixels_params(decoder, mean_pix, std_pix) -> np.ndarray:
    """:func:`read_pixels` for callers that already hold the coder's parameters, i.e. arrays equal
    element for element to what :func:`coder_params` makes of their means and scales (``(μ + 1)·127.5``
    and ``σ·127.5`` in float64): the pixel-by-pixel decoder of ``codec.x0.X0Side`` calls this ~3000 times
    per image, where :func:`coder_params`'s checks would cost more than the decoding."""
    try:
        symbols = decoder.decode(_model_family(), mean_pix, std_pix)
    except Exception as exc:  # constriction reports invalid data as ValueError
        raise ValueError(f"x0 data is corrupted: {exc}") from exc
    return np.asarray(symbols).astype(np.uint8)


def read_pixels(decoder, means, scales) -> np.ndarray:
    """Inverse of :func:`write_pixels` from a ``RangeDecoder`` positioned after the steps:
    uint8 ``[N]`` (flat, C order of ``means``). Raises ValueError on data the coder rejects;
    garbage it accepts decodes to garbage pixels, which the pixel CRC-32 catches."""
    mean_pix, std_pix = coder_params(means, scales)
    if not mean_pix.size:
        return np.zeros(0, np.uint8)
    try:
        symbols = decoder.decode(_model_family(), mean_pix, std_pix)
    except Exception as exc:  # constriction reports invalid data as ValueError
        raise ValueError(f"x0 data is corrupted: {exc}") from exc
    return np.asarray(symbols).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Raw bits on a range coder (side information, trellis paths)
# ---------------------------------------------------------------------------------------

def write_raw_bits(encoder, values: np.ndarray, nbits: np.ndarray) -> None:
    """values[i] < 2^nbits[i] as raw bits, in pieces of ≤ 16 bits (Uniform models)."""
    import constriction as cn

    values = np.asarray(values, dtype=np.int64)
    nbits = np.asarray(nbits, dtype=np.int64)
    rem = nbits.copy()
    while np.any(rem > 0):
        w = np.minimum(rem, 16)
        live = w > 0
        rem = rem - w
        piece = (values[live] >> rem[live]) & ((1 << w[live]) - 1)
        sizes = (1 << w[live]).astype(np.int32)
        encoder.encode(piece.astype(np.int32), cn.stream.model.Uniform(), sizes)


def read_raw_bits(decoder, nbits: np.ndarray) -> np.ndarray:
    import constriction as cn

    nbits = np.asarray(nbits, dtype=np.int64)
    out = np.zeros(len(nbits), np.int64)
    rem = nbits.copy()
    while np.any(rem > 0):
        w = np.minimum(rem, 16)
        live = w > 0
        rem = rem - w
        sizes = (1 << w[live]).astype(np.int32)
        piece = np.asarray(decoder.decode(cn.stream.model.Uniform(), sizes), dtype=np.int64)
        out[live] = (out[live] << w[live]) | piece
    return out
