"""Portable coding of x_0 pixels: Eq. 13's discretized Gaussian as exact integer frequencies.

Same semantics as :mod:`ddpm_codec.coding.entropy` (Ho et al. 2020, Eq. 13, pixel units: the
bin of ``v`` is ``[v - 0.5, v + 0.5]``, the edge bins at 0 and 255 are open), but every number
that decides the bits is computed with IEEE ``+ - * /``, comparisons and ``floor`` only
(:mod:`~ddpm_codec.coding.detmath`), so a file decodes bit-exactly on any IEEE-754 machine,
numpy/SIMD build and thread count. Today's coder feeds ``(mean_pix, std_pix)`` to
constriction's ``QuantizedGaussian``, whose CDF is Rust libm ``erf``/``exp``: not portable.

Integer model (PRECISION = 24, ``M = 2^24 - 256`` free units)
--------------------------------------------------------------
For a pixel with ``(m, s)`` (float64, pixel units) and each inner boundary ``b_k = k - 0.5``,
``k = 1..255``::

    z_k = (b_k - m) / s                          (one subtraction, one division)
    u_k = floor(Q(|z_k|) * M + 0.5)  if |z_k| < 5.5, else 0
    G_k = u_k if z_k < 0 else M - u_k            (round(Phi(z_k) M) without cancellation)
    G_0 = 0, G_256 = M, G = running max of G     (a guard; a no-op for a monotone Q)
    f_v = G_{v+1} - G_v + 1                      (v = 0..255: every f_v >= 1, sum f_v = 2^24)

``Q`` is the upper normal tail on ``[0, 5.5)`` from a table of degree-7 Taylor polynomials at
``a_j = j/64`` whose coefficients are built at import from :func:`detmath.normal_tail` and
:func:`detmath.exp` (Hermite recursion; the same bits everywhere): 25 numpy passes instead of
~110 for :func:`detmath.normal_tail`, relative error 3.2e-14 against mpmath. The cut at
``|z| >= 5.5`` changes nothing (``Q(5.5) M = 0.32`` rounds to 0; tested): it only skips work.
Rounding ``Phi M`` to the nearest unit (constriction's ``LeakyQuantizer`` floors) treats
both tails alike; no remainder needs redistributing: the frequencies are differences of one integer CDF. All integer values are
held in float64 (exact below 2^53); every operation is elementwise per pixel, so batching,
chunking and thread count change no bit.

How the integers reach constriction exactly
-------------------------------------------
The model is constriction's ``stream.model.Categorical(perfect=False)`` family, fed the
float64 row ``w_v = f_v - 1`` (integers, summing to ``M``). Its Python binding builds
``LazyContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast(w, None)``
(``src/pybindings/stream/model/internals.rs``), which computes
``scale = M / sum(w) = 1.0`` and codes symbol ``v`` with left cumulative
``(sum_{j<v} w_j * scale) as u32 + v = G_v + v`` and probability ``f_v`` (the last symbol's
right end pinned to ``2^24``) (``src/stream/model/categorical/lazy_contiguous.rs``). All
those float sums are integers below ``2^24``: exact in f64 (and in f32), whatever their order.
Measured, not just read (``tests/test_coding_exact_entropy.py``): on an ANS stack the encoder
state after a symbol equals the state computed by hand from our ``(G_v + v, f_v)``, and a
decoder whose quantile we set to every boundary ``G_v + v`` and ``G_{v+1} + v`` decodes the
expected symbol; the code length is within the range coder's few words of
``-sum log2(f/2^24)``.

Speed (2-core CPU; today's coder = :mod:`~ddpm_codec.coding.entropy`, QuantizedGaussian):
N = 3072 pixels, std 0.5-20: write 9-10 ms (today 0.12 ms), read 9-10 ms (today 0.3 ms);
3000 reads of N = 1 / 4 / 16 pixels: 0.14 / 0.18 / 0.27 s (today's ``read_pixels`` 0.07 s,
``read_pixels_params`` 0.005-0.01 s). Code length: equal to today's coder to the 32-bit word
on the measured images, within 64 bits of ``-sum log2(f/2^24)``.
"""

from __future__ import annotations

import math

import constriction
import numpy as np

from . import detmath

__all__ = [
    "NUM_LEVELS",
    "PRECISION",
    "TOTAL",
    "Z_CUT",
    "cdf_units",
    "frequencies",
    "ideal_bits",
    "read_pixels",
    "write_pixels",
]

NUM_LEVELS = 256
PRECISION = 24
TOTAL = 1 << PRECISION
_FREE = float(TOTAL - NUM_LEVELS)  # M: exact in float64
Z_CUT = 5.5
"""``|z| >= Z_CUT`` gives ``u = 0`` without evaluating Q (``Q(5.5) * M = 0.32``)."""

_BOUNDS = np.arange(1, NUM_LEVELS, dtype=np.float64) - 0.5  # b_k = k - 0.5, exact
_FAMILY = None

# Q on [0, Z_CUT) by a table of degree-7 Taylor polynomials at the nodes a_j = j/64:
# Q(a_j + h) = sum_n c_n(j) h^n, c_0 = Q(a_j), c_n = (-1)^n He_{n-1}(a_j) phi(a_j) / n!
# (He: Hermite polynomials, phi: the normal density). Built once at import with detmath (so
# the same bits everywhere); 0 <= h < 1/64 makes the truncation < 4e-14 relative (measured
# against mpmath: 3.2e-14 relative at most, near a = 5.5; Q M is needed to ~1e-9 units).
_Q_STEP_INV = 64.0
_Q_DEGREE = 7
_INV_SQRT_2PI = float.fromhex("0x1.9884533d43651p-2")  # 0.3989422804014327


def _q_table() -> np.ndarray:
    nodes = np.arange(int(Z_CUT * _Q_STEP_INV) + 1, dtype=np.float64) / _Q_STEP_INV  # exact
    phi = np.multiply(detmath.exp(np.multiply(np.multiply(nodes, nodes), -0.5)), _INV_SQRT_2PI)
    coef = np.empty((_Q_DEGREE + 1, nodes.size), dtype=np.float64)
    coef[0] = detmath.normal_tail(nodes)
    he_prev, he = np.zeros_like(nodes), np.ones_like(nodes)  # He_{-1} = 0, He_0 = 1
    for n in range(1, _Q_DEGREE + 1):  # he = He_{n-1}
        sign = -1.0 if n % 2 else 1.0
        coef[n] = np.divide(np.multiply(np.multiply(he, phi), sign), float(math.factorial(n)))
        he_prev, he = he, np.subtract(np.multiply(nodes, he), np.multiply(he_prev, float(n - 1)))
    return coef


_Q_COEF = _q_table()
_Q_COEF.setflags(write=False)


def normal_tail_table() -> tuple[np.ndarray, float]:
    """The portable normal tail Q on [0, Z_CUT) as this module evaluates it: the degree-7 Taylor
    coefficients at the nodes j/64 (read-only float64 ``[8, nodes]``, row n the h^n coefficient)
    and the nodes per unit (64.0). Other exact coders (``coding.bitsback``) evaluate Q from it in
    the same order (floor, then Horner), so every coder's Q is the same bits."""
    return _Q_COEF, _Q_STEP_INV


def _q_window(a: np.ndarray) -> np.ndarray:
    """Q(a) for float64 ``a`` in ``[0, Z_CUT)`` (1-D) from the table; Q(0) == 0.5 exactly."""
    j = np.floor(np.multiply(a, _Q_STEP_INV))  # exact scaling, exact floor
    h = np.subtract(a, np.divide(j, _Q_STEP_INV))  # exact (Sterbenz; j/64 exact)
    j = j.astype(np.intp)
    p = np.take(_Q_COEF[_Q_DEGREE], j)
    for n in range(_Q_DEGREE - 1, -1, -1):  # Horner: one multiply, one add per step
        np.multiply(p, h, out=p)
        np.add(p, np.take(_Q_COEF[n], j), out=p)
    return p


def _family():
    global _FAMILY
    if _FAMILY is None:
        _FAMILY = constriction.stream.model.Categorical(perfect=False)
    return _FAMILY


def _check_params(mean_pix, std_pix) -> tuple[np.ndarray, np.ndarray]:
    mean_pix = np.asarray(mean_pix)
    std_pix = np.asarray(std_pix)
    if mean_pix.dtype != np.float64 or std_pix.dtype != np.float64:
        raise ValueError(
            f"mean_pix and std_pix must be float64, got {mean_pix.dtype} and {std_pix.dtype}"
        )
    if mean_pix.shape != std_pix.shape:
        raise ValueError(
            f"mean_pix and std_pix must have one shape, got {mean_pix.shape} and {std_pix.shape}"
        )
    mean_pix = mean_pix.reshape(-1)
    std_pix = std_pix.reshape(-1)
    if not (np.isfinite(mean_pix).all() and np.isfinite(std_pix).all()):
        raise ValueError("mean_pix and std_pix must be finite")
    if not (std_pix > 0.0).all():
        raise ValueError("std_pix must be > 0")
    return mean_pix, std_pix


def _cdf_units_t(mean_pix: np.ndarray, std_pix: np.ndarray, z_cut: float) -> np.ndarray:
    """``G`` transposed: float64 ``[257, N]`` (boundary-major: every step is a row operation)."""
    n = mean_pix.size
    with np.errstate(over="ignore", under="ignore"):
        z = np.subtract(_BOUNDS[:, None], mean_pix[None, :])
        np.divide(z, std_pix[None, :], out=z)
    g = np.empty((NUM_LEVELS + 1, n), dtype=np.float64)
    g[0] = 0.0
    g[NUM_LEVELS] = _FREE
    inner = g[1:NUM_LEVELS]
    np.greater_equal(z, 0.0, out=inner, casting="unsafe")  # 1.0 / 0.0
    np.multiply(inner, _FREE, out=inner)  # |z| >= z_cut: 0 below the mean, M above
    a = np.abs(z).reshape(-1)
    idx = np.flatnonzero(a < z_cut)
    if idx.size:
        av = np.take(a, idx)
        fast = z_cut <= Z_CUT
        q = _q_window(av) if fast else detmath._normal_tail_nonneg(av)
        np.multiply(q, _FREE, out=q)
        np.add(q, 0.5, out=q)
        np.floor(q, out=q)  # u = round(Q M), an integer in [0, M/2]
        zv = np.take(z.reshape(-1), idx)
        inner.reshape(-1)[idx] = np.where(zv < 0.0, q, np.subtract(_FREE, q))
    # Running max down each column: exact, a guard against a non-monotone Q (any evaluation
    # order gives the same result; numpy's accumulate over axis 0 is slow for wide arrays).
    if n < 64:
        np.maximum.accumulate(g, axis=0, out=g)
    else:
        for k in range(1, NUM_LEVELS + 1):
            np.maximum(g[k], g[k - 1], out=g[k])
    return g


_CHUNK = 256  # pixels per block: the temporaries (255 x 256 float64) stay in L2 cache
_CALL = 1 << 13  # pixels per coder call: their [N, 256] float64 weights take 16 MiB, whatever the image size


def cdf_units(mean_pix, std_pix, *, z_cut: float = Z_CUT) -> np.ndarray:
    """The integer CDF ``G`` of the module docstring: int64 ``[N, 257]``, ``G[:, 0] = 0``,
    ``G[:, 256] = 2^24 - 256``, non-decreasing along each row. ``mean_pix``/``std_pix``: float64
    ``[N]`` in pixel units (finite, ``std_pix > 0``). ``z_cut``: for tests only (a larger value
    evaluates :func:`detmath.normal_tail` instead of the table, on more boundaries)."""
    mean_pix, std_pix = _check_params(mean_pix, std_pix)
    out = np.empty((mean_pix.size, NUM_LEVELS + 1), dtype=np.int64)
    for c in range(0, mean_pix.size, _CHUNK):
        sl = slice(c, c + _CHUNK)
        out[sl] = _cdf_units_t(mean_pix[sl], std_pix[sl], z_cut).T
    return out


def _weights(mean_pix, std_pix) -> np.ndarray:
    """``f - 1`` as a C-contiguous float64 ``[N, 256]`` (what constriction is fed). Pixels are
    independent, so blocking them changes no bit."""
    mean_pix, std_pix = _check_params(mean_pix, std_pix)
    w = np.empty((mean_pix.size, NUM_LEVELS), dtype=np.float64)
    for c in range(0, mean_pix.size, _CHUNK):
        sl = slice(c, c + _CHUNK)
        g = _cdf_units_t(mean_pix[sl], std_pix[sl], Z_CUT)
        w[sl] = np.subtract(g[1:], g[:-1]).T  # exact: integers below 2^24
    return w


def frequencies(mean_pix, std_pix) -> np.ndarray:
    """Integer frequencies int64 ``[N, 256]``: every entry ``>= 1``, each row sums to ``2^24``;
    ``f / 2^24`` is the coded probability of each pixel value."""
    return _weights(mean_pix, std_pix).astype(np.int64) + 1


def _symbols(pixels, n: int) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be a uint8 array, got dtype {pixels.dtype}")
    if pixels.size != n:
        raise ValueError(f"pixels has {pixels.size} values, the parameters {n}")
    return np.ascontiguousarray(pixels.reshape(-1), dtype=np.int32)


def write_pixels(encoder, pixels, mean_pix, std_pix) -> None:
    """Appends ``pixels`` (uint8, ``N`` values, C order) to a
    ``constriction.stream.queue.RangeEncoder`` under the portable model of the module docstring,
    with per-pixel ``mean_pix``/``std_pix`` (float64 ``[N]``, pixel units: ``(mu + 1) * 127.5``
    and ``sigma * 127.5``, as :func:`ddpm_codec.coding.entropy.coder_params` makes them)."""
    mean_pix, std_pix = _check_params(mean_pix, std_pix)
    symbols = _symbols(pixels, mean_pix.size)
    for c in range(0, symbols.size, _CALL):   # a queue coder: pieces in order = one call, in bounded memory
        sl = slice(c, c + _CALL)
        encoder.encode(symbols[sl], _family(), _weights(mean_pix[sl], std_pix[sl]))


def read_pixels(decoder, mean_pix, std_pix) -> np.ndarray:
    """Inverse of :func:`write_pixels` on a ``RangeDecoder``: uint8 ``[N]``. Raises ValueError
    on data the coder rejects; garbage it accepts decodes to garbage (the pixel CRC catches it)."""
    mean_pix, std_pix = _check_params(mean_pix, std_pix)
    out = np.zeros(mean_pix.size, np.uint8)
    for c in range(0, mean_pix.size, _CALL):
        sl = slice(c, c + _CALL)
        try:
            out[sl] = decoder.decode(_family(), _weights(mean_pix[sl], std_pix[sl]))
        except Exception as exc:  # constriction reports invalid data as ValueError
            raise ValueError(f"x0 data is corrupted: {exc}") from exc
    return out


def ideal_bits(pixels, mean_pix, std_pix) -> float:
    """``-sum log2(f_v / 2^24)`` over the pixels: the code length this model aims at, in bits.

    A report only, not portable: it uses numpy's ``log2`` (libm) and ``math.fsum``."""
    mean_pix, std_pix = _check_params(mean_pix, std_pix)
    symbols = _symbols(pixels, mean_pix.size)
    fv = np.empty(symbols.size, np.float64)
    for c in range(0, symbols.size, _CALL):
        sl = slice(c, c + _CALL)
        f = frequencies(mean_pix[sl], std_pix[sl])
        fv[sl] = f[np.arange(f.shape[0]), symbols[sl]]
    return math.fsum((PRECISION - np.log2(fv)).tolist())
