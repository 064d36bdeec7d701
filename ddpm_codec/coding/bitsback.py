"""An ANS stack with exact integer models, for bits-back coding (Townsend, Bird & Barber 2019).

:class:`AnsStack` is range-variant ANS (rANS) with one 63-bit head and a stack of 32-bit words;
``push`` appends symbols (encodes), ``pop`` removes them in the reverse order (decodes), and a pop
on data that were never pushed *samples* from the model with the stack's bits (the "bits back").
Two model families, both exact integers computed with IEEE ``+ - * /``, comparisons and ``floor``
only, so both sides build the same frequencies on any machine, SIMD level and thread count:

* :meth:`AnsStack.push_gaussian` / :meth:`~AnsStack.pop_gaussian`: a Gaussian ``N(mu, sigma^2)``
  discretized on a grid (:class:`LatentGrid`: bins ``j * delta``, ``j in [-L, L]``), with a
  frequency of at least 1 on every bin, so any grid value can be coded under any Gaussian::

      z_j = ((j - 1/2) * delta - mu) / sigma
      g_j = round(Q(|z_j|) * M)   if z_j < 0,   M - round(Q(|z_j|) * M)   otherwise
            (Q: the upper normal tail, exact_entropy's degree-7 table; 0 for |z_j| >= 5.5)
      C(-L) = 0,  C(j) = g_j + (j + L),  C(L + 1) = 2^P,   M = 2^P - (2L + 1),   P = 27
      frequency of bin j: C(j + 1) - C(j) >= 1

  or, without that floor (``floor=False``, for a model that is only sampled from), ``M = 2^P``
  and ``C(j) = g_j``: bins beyond ~5.5 std get no probability. Each bin's CDF is evaluated on its own (no table), so a pop finds its bin by bisection over
  ``[-L, L]``: any grid size costs ~log2(2L) evaluations a symbol.
* :meth:`AnsStack.push_table` / :meth:`~AnsStack.pop_table`: symbols under per-symbol integer CDF
  rows (``C[i, 0] = 0``, ``C[i, K] = 2^precision``), e.g. x_0's pixels under
  :func:`ddpm_codec.coding.exact_entropy.cdf_units` (precision 24).

The coder (Duda 2013; Giesen's rANS with 32-bit words): head ``x in [2^31, 2^63)``; a push of a
symbol with start ``c`` and frequency ``f`` at precision ``P <= 31`` first moves the low 32 bits
to the stack when ``x >= f * 2^(63 - P)``, then ``x <- (x // f) * 2^P + x mod f + c``; a pop is
the inverse. All integers are below 2^63 (int64). The loops are compiled (numba, no ``fastmath``:
no fused multiply-add; ``tests/test_archive.py`` checks the machine code); the float arithmetic
inside them is the formula above in that order.

Initial bits: a stack may start on real data (``bottom``: e.g. other images' files, which a pop
then reads as its random bits and the decoder gets back intact); a pop from an empty stack reads
*virtual* words, a counter-based hash of the stack's ``seed`` that both sides can generate; they
cost their 32 bits each (nothing comes back for them) and are counted in
:attr:`AnsStack.virtual_used`. A decoder that undid every operation holds exactly the initial
head, the bottom and the virtual words the encoder read, in reverse: :meth:`AnsStack.release_bottom`
checks that (a strong check that everything decoded right).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from . import exact_entropy

__all__ = ["AnsStack", "LatentGrid", "LATENT_PRECISION", "gaussian_frequencies", "grid_for"]

LATENT_PRECISION = 27         # latents' frequencies sum to 2^27. rANS loses ~f/x of a push (x >= 2^31 the head):
                              # at 31 bits ~740 bits an image at 48 steps (measured), at 27 ~1/16 of that; the
                              # floor of 1 a bin costs ~(2L+1)/2^27 a symbol (~30 bits an image)
_P = LATENT_PRECISION
_P_ONE = 1 << _P
_P_MASK = _P_ONE - 1
_P_SHIFT = 63 - _P
HEAD_MIN = 1 << 31           # the head lives in [2^31, 2^63)
_WORD_MASK = (1 << 32) - 1
MAX_GRID_BINS = 1 << 22      # 2L + 1 at most: the floor of 1 per bin then takes < 2^-9 of the mass
_Z_CUT = exact_entropy.Z_CUT
_Q_COEF, _Q_STEP_INV = exact_entropy.normal_tail_table()   # degree-7 Taylor table of Q on [0, 5.5), step 1/64
_Q_COEF = np.array(_Q_COEF, dtype=np.float64, order="C")   # a writable copy for the compiled kernels

_jit = numba.njit(cache=True, nogil=True)   # no fastmath: no contraction, no reassociation


class AnsError(ValueError):
    """Data the stack cannot decode (a symbol outside its model, a non-monotone model)."""


@dataclass(frozen=True)
class LatentGrid:
    """Bins ``j * delta`` for ``j in [-half_bins, half_bins]``; ``delta`` is a power of two."""

    delta: float
    half_bins: int

    def __post_init__(self):
        m, _ = math.frexp(self.delta)
        if not (self.delta > 0 and m == 0.5):
            raise ValueError(f"grid step must be a power of two, got {self.delta!r}")
        if not 1 <= 2 * self.half_bins + 1 <= MAX_GRID_BINS:
            raise ValueError(f"grid of {2 * self.half_bins + 1} bins is outside 1..{MAX_GRID_BINS}")

    def values(self, j: np.ndarray) -> np.ndarray:
        """The grid values (float64, exact) of bin indices ``j``."""
        return np.asarray(j, np.int64).astype(np.float64) * self.delta


def grid_for(sigma: float, grid_bits: int, half_range: float) -> LatentGrid:
    """The grid for a latent whose narrowest Gaussian has std ``sigma``: ``delta = 2^(floor(log2
    sigma) - grid_bits)`` (between 2^grid_bits and 2^(grid_bits+1) bins a std), covering
    ``[-half_range, half_range]``. ``frexp`` and ``ldexp`` are exact: the same grid everywhere."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"grid for a std of {sigma!r}")
    _, e = math.frexp(sigma)                       # sigma = m 2^e, m in [0.5, 1): floor(log2 sigma) = e - 1
    delta = math.ldexp(1.0, e - 1 - grid_bits)
    return LatentGrid(delta, int(math.ceil(half_range / delta)))


# ----------------------------------------------------------------------------- compiled kernels

@_jit
def _q(a, coef):  # pragma: no cover - numba
    """Q(a) for 0 <= a < 5.5: exact_entropy._q_window's table and order (floor, Horner)."""
    j = np.floor(a * 64.0)
    h = a - j / 64.0
    k = int(j)
    p = coef[7, k]
    for n in range(6, -1, -1):
        p = p * h
        p = p + coef[n, k]
    return p


@_jit
def _cdf(j, mu, sigma, delta, half, free, coef, floor):  # pragma: no cover - numba
    """C(j) of the module docstring (int64), for j in [-half, half + 1]; without the floor of 1 a
    bin (``floor == 0``): ``free = 2^P`` and ``C(j) = g_j``."""
    if j <= -half:
        return 0
    if j > half:
        return _P_ONE
    z = ((j - 0.5) * delta - mu) / sigma
    a = abs(z)
    u = 0.0
    if a < 5.5:
        u = np.floor(_q(a, coef) * free + 0.5)
    g = u if z < 0.0 else free - u
    return int(g) + floor * (j + half)


@_jit
def _push_state(head, words, n, f, c, prec, key):  # pragma: no cover - numba
    """One push of a symbol with start ``c``, frequency ``f`` at precision ``prec`` (whitened by ``key``)."""
    if head >= (f << (63 - prec)):
        words[n] = head & 0xFFFFFFFF
        n += 1
        head >>= 32
    return ((head // f) << prec) + ((head % f + c) ^ key), n


@_jit
def _pop_state(head, words, n, virt, vused):  # pragma: no cover - numba
    """A pop's renormalization: below 2^31, the head takes the top word (a virtual one if none is left)."""
    if head < (1 << 31):
        if n > 0:
            n -= 1
            w = np.int64(words[n])
        else:
            w = np.int64(virt[vused])
            vused += 1
        head = (head << 32) | w
    return head, n, vused


@_jit
def _push_gaussian(head, words, n, js, mus, sigma, delta, half, coef, floor, keys):  # pragma: no cover - numba
    free = float(_P_ONE - floor * (2 * half + 1))
    for i in range(js.shape[0] - 1, -1, -1):
        j = js[i]
        if j < -half or j > half:
            return head, n, -1 - i
        c0 = _cdf(j, mus[i], sigma, delta, half, free, coef, floor)
        f = _cdf(j + 1, mus[i], sigma, delta, half, free, coef, floor) - c0
        if f <= 0:
            return head, n, -1 - i
        head, n = _push_state(head, words, n, f, c0, _P, keys[i])
    return head, n, 0


@_jit
def _pop_gaussian(head, words, n, virt, vused, out, mus, sigma, delta, half, coef, floor, keys):  # pragma: no cover - numba
    free = float(_P_ONE - floor * (2 * half + 1))
    for i in range(out.shape[0]):
        cf = (head & _P_MASK) ^ keys[i]
        mu = mus[i]
        lo, hi = -half, half + 1        # C(lo) <= cf < C(hi)
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if _cdf(mid, mu, sigma, delta, half, free, coef, floor) <= cf:
                lo = mid
            else:
                hi = mid
        c0 = _cdf(lo, mu, sigma, delta, half, free, coef, floor)
        f = _cdf(lo + 1, mu, sigma, delta, half, free, coef, floor) - c0
        if f <= 0:
            return head, n, vused, -1 - i
        out[i] = lo
        head, n, vused = _pop_state(f * (head >> _P) + cf - c0, words, n, virt, vused)
    return head, n, vused, 0


@_jit
def _push_table(head, words, n, syms, cdf, prec, keys):  # pragma: no cover - numba
    for i in range(syms.shape[0] - 1, -1, -1):
        s = syms[i]
        if s < 0 or s + 1 >= cdf.shape[1]:
            return head, n, -1 - i
        c0 = cdf[i, s]
        f = cdf[i, s + 1] - c0
        if f <= 0:
            return head, n, -1 - i
        head, n = _push_state(head, words, n, f, c0, prec, keys[i])
    return head, n, 0


@_jit
def _pop_table(head, words, n, virt, vused, out, cdf, prec, keys):  # pragma: no cover - numba
    mask = (1 << prec) - 1
    k = cdf.shape[1] - 1
    for i in range(out.shape[0]):
        cf = (head & mask) ^ keys[i]
        lo, hi = 0, k
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if cdf[i, mid] <= cf:
                lo = mid
            else:
                hi = mid
        c0 = cdf[i, lo]
        f = cdf[i, lo + 1] - c0
        if f <= 0:
            return head, n, vused, -1 - i
        out[i] = lo
        head, n, vused = _pop_state(f * (head >> prec) + cf - c0, words, n, virt, vused)
    return head, n, vused, 0


@_jit
def _gaussian_freqs(js, mus, sigma, delta, half, coef, floor, out):  # pragma: no cover - numba
    free = float(_P_ONE - floor * (2 * half + 1))
    for i in range(js.shape[0]):
        c0 = _cdf(js[i], mus[i], sigma, delta, half, free, coef, floor)
        out[i] = _cdf(js[i] + 1, mus[i], sigma, delta, half, free, coef, floor) - c0


# ----------------------------------------------------------------------------- the stack

def virtual_words(seed: int, start: int, count: int) -> np.ndarray:
    """Virtual words ``start .. start + count - 1`` of a stack with ``seed`` (uint32): splitmix64
    of ``seed * 2^32 + k``, its high 32 bits (integer operations only)."""
    k = np.arange(start, start + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) + k
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)).astype(np.uint32)


def whitening_keys(key: int, count: int, precision: int) -> np.ndarray:
    """The per-symbol keys (int64 below 2^precision) a call named ``key`` XORs into its symbols'
    positions: a push stores ``(x mod f + c) XOR k``, a pop reads ``(x mod 2^P) XOR k`` (still a
    bijection on ``[0, 2^P)``, so the code lengths do not change). Without them, a pop right after
    pushes reads back those symbols' quantiles (ANS decodes what was encoded): popping the next
    latents from x_0's freshly pushed pixels drew z-scores of mean 0.6 and std 1.8 instead of 0
    and 1 (measured), and the chain then cost far more than its KLs."""
    return (virtual_words(0x6B657900 ^ int(key), 0, count).astype(np.int64) & ((1 << precision) - 1))


def _words_of(data: bytes) -> np.ndarray:
    """Bytes as little-endian 32-bit words, the last padded with zeros."""
    return np.frombuffer(bytes(data) + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def _flat_f64(a, n: int | None = None, name: str = "mus") -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float64).reshape(-1))
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values, expected {n}")
    if not np.all(np.isfinite(a)):
        raise AnsError(f"{name} are not all finite")
    return a


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise AnsError(f"std must be positive and finite, got {sigma!r}")
    return sigma


class AnsStack:
    """The rANS stack of the module docstring. ``seed`` names its virtual words (both sides must
    agree on it); a decoder is made with :meth:`from_bytes`."""

    def __init__(self, seed: int = 0, bottom: bytes = b""):
        self.seed = int(seed)
        self.head = self.initial_head(seed)
        w = _words_of(bottom)
        self.words = np.concatenate([w, np.zeros(1024, np.uint32)])
        self.n = w.size
        self.virtual_used = 0
        self._virt = np.zeros(0, np.uint32)

    @staticmethod
    def initial_head(seed: int) -> int:
        """The head both sides start from: 2^62 plus 32 hashed bits (virtual too: sampled from)."""
        return (1 << 62) | (int(virtual_words(seed ^ 0x5A5A5A5A, 0, 1)[0]) << 20)

    # ------------------------------------------------------------------ storage
    def _reserve(self, extra: int) -> None:
        if self.n + extra > self.words.size:
            grown = np.zeros(max(2 * self.words.size, self.n + extra), np.uint32)
            grown[:self.n] = self.words[:self.n]
            self.words = grown

    def _virtual(self, extra: int) -> np.ndarray:
        need = self.virtual_used + extra
        if need > self._virt.size:
            size = max(need, 2 * self._virt.size, 4096)
            self._virt = virtual_words(self.seed, 0, size)
        return self._virt

    def num_bits(self) -> int:
        """The size of :meth:`to_bytes` in bits: the head (64) and the words."""
        return 64 + 32 * self.n

    def to_bytes(self) -> bytes:
        """The head (8 bytes, little-endian) and the words, bottom first (4 bytes each, little-endian)."""
        return int(self.head).to_bytes(8, "little") + self.words[:self.n].astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, seed: int = 0) -> "AnsStack":
        if len(data) < 8 or (len(data) - 8) % 4:
            raise AnsError(f"a stack is 8 + 4k bytes, got {len(data)}")
        st = cls(seed)
        st.head = int.from_bytes(data[:8], "little")
        if not HEAD_MIN <= st.head < (1 << 63):
            raise AnsError("the stack's head is out of range")
        w = np.frombuffer(data, dtype="<u4", offset=8).astype(np.uint32)
        st.words = np.concatenate([w, np.zeros(1024, np.uint32)])
        st.n = w.size
        return st

    def is_initial(self) -> bool:
        """Whether this (decoder's) stack is back where the encoder started: the initial head, and
        exactly the virtual words the encoder read, in reverse."""
        return self.release_bottom(0) == b""

    def release_bottom(self, nbytes: int) -> bytes | None:
        """For a decoder that undid everything above an encoder's ``bottom`` (``AnsStack(seed,
        bottom)``, ``nbytes = len(bottom)``): that bottom, or None unless the stack is exactly where
        that encoder began (its initial head; below the bottom, the virtual words it read, in
        reverse; the bottom's padding zero)."""
        m = -(-nbytes // 4)
        v = self.n - m
        if self.head != self.initial_head(self.seed) or v < 0:
            return None
        if not np.array_equal(self.words[:v][::-1], virtual_words(self.seed, 0, v)):
            return None
        raw = self.words[v:self.n].astype("<u4").tobytes()
        return raw[:nbytes] if not any(raw[nbytes:]) else None

    # ------------------------------------------------------------------ Gaussian on a grid
    def push_gaussian(self, js, mus, sigma: float, grid: LatentGrid, *, floor: bool = True, key: int = 0) -> None:
        """Push bin indices ``js`` (int, any shape, C order) under N(mus, sigma^2) on ``grid``; a
        :meth:`pop_gaussian` with the same parameters returns them in the same order. ``floor``:
        every bin of the grid has frequency >= 1 (a model that must code any value: p); without
        it, bins beyond ~5.5 std have none (a model that is sampled from: q, which then never
        draws a far outlier; measured: with the floor, ~2 latents an image at 48 steps did, and
        each made the network's later predictions, and so the image, much more expensive).
        ``key``: names this call's whitening keys (:func:`whitening_keys`); the pop must use the same."""
        js = np.ascontiguousarray(np.asarray(js, np.int64).reshape(-1))
        mus = _flat_f64(mus, js.size)
        self._reserve(js.size)
        head, n, status = _push_gaussian(self.head, self.words, self.n, js, mus, _check_sigma(sigma), grid.delta,
                                         grid.half_bins, _Q_COEF, int(floor),
                                         whitening_keys(key, js.size, LATENT_PRECISION))
        if status:
            raise AnsError(f"symbol {-1 - status} ({js[-1 - status]}) is outside the grid of {2 * grid.half_bins + 1} "
                           f"bins or has no probability")
        self.head, self.n = head, n

    def pop_gaussian(self, mus, sigma: float, grid: LatentGrid, *, floor: bool = True, key: int = 0) -> np.ndarray:
        """Pop ``mus.size`` bin indices (int64, flat) under N(mus, sigma^2) on ``grid`` (``floor``:
        ``key``: see :meth:`push_gaussian`)."""
        mus = _flat_f64(mus)
        out = np.empty(mus.size, np.int64)
        virt = self._virtual(mus.size)
        head, n, vused, status = _pop_gaussian(self.head, self.words, self.n, virt, self.virtual_used, out, mus,
                                               _check_sigma(sigma), grid.delta, grid.half_bins, _Q_COEF,
                                               int(floor), whitening_keys(key, mus.size, LATENT_PRECISION))
        if status:
            raise AnsError("a latent has no probability under its model (non-monotone CDF)")
        self.head, self.n, self.virtual_used = head, n, vused
        return out

    # ------------------------------------------------------------------ integer CDF rows
    def push_table(self, symbols, cdf: np.ndarray, precision: int, *, key: int = 0) -> None:
        """Push ``symbols`` (int, ``[N]``) under the rows of ``cdf`` (int64 ``[N, K + 1]``, ``cdf[:, 0] =
        0``, ``cdf[:, K] = 2^precision``, non-decreasing; symbol ``s`` has frequency ``cdf[s+1] - cdf[s]``;
        ``key`` as for :meth:`push_gaussian`)."""
        syms = np.ascontiguousarray(np.asarray(symbols, np.int64).reshape(-1))
        cdf = self._check_cdf(cdf, syms.size, precision)
        self._reserve(syms.size)
        head, n, status = _push_table(self.head, self.words, self.n, syms, cdf, int(precision),
                                      whitening_keys(key, syms.size, precision))
        if status:
            raise AnsError(f"symbol {-1 - status} has no probability under its table")
        self.head, self.n = head, n

    def pop_table(self, cdf: np.ndarray, precision: int, *, key: int = 0) -> np.ndarray:
        """Pop ``len(cdf)`` symbols (int64) under the rows of ``cdf`` (see :meth:`push_table`)."""
        cdf = self._check_cdf(cdf, None, precision)
        out = np.empty(cdf.shape[0], np.int64)
        virt = self._virtual(out.size)
        head, n, vused, status = _pop_table(self.head, self.words, self.n, virt, self.virtual_used, out, cdf,
                                            int(precision), whitening_keys(key, out.size, precision))
        if status:
            raise AnsError("a symbol has no probability under its table")
        self.head, self.n, self.virtual_used = head, n, vused
        return out

    @staticmethod
    def _check_cdf(cdf, n: int | None, precision: int) -> np.ndarray:
        cdf = np.ascontiguousarray(np.asarray(cdf, np.int64))
        if not 1 <= precision <= 31:
            raise ValueError(f"precision must be in [1, 31], got {precision}")
        if cdf.ndim != 2 or (n is not None and cdf.shape[0] != n) or cdf.shape[1] < 2:
            raise ValueError(f"cdf must be [N, K + 1] with N = {n}, got {cdf.shape}")
        if cdf.size and (np.any(cdf[:, 0] != 0) or np.any(cdf[:, -1] != 1 << precision)):
            raise ValueError(f"cdf rows must run from 0 to 2^{precision}")
        return cdf


def gaussian_frequencies(js, mus, sigma: float, grid: LatentGrid, *, floor: bool = True) -> np.ndarray:
    """The integer frequency (out of 2^LATENT_PRECISION) of each bin ``js`` under N(mus, sigma^2) on ``grid``:
    what :meth:`AnsStack.push_gaussian` codes it with (int64, flat)."""
    js = np.ascontiguousarray(np.asarray(js, np.int64).reshape(-1))
    mus = _flat_f64(mus, js.size)
    out = np.empty(js.size, np.int64)
    _gaussian_freqs(js, mus, _check_sigma(sigma), grid.delta, grid.half_bins, _Q_COEF, int(floor), out)
    return out
