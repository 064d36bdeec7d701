"""Counter-based shared randomness for reverse channel coding.

Encoder and decoder must draw *exactly* the same candidate noise, on any machine. Every
value here is a pure function of ``(key, counter)``:

* the hash is SplitMix64 (Steele, Lea & Flood 2014) written as numpy ``uint64`` integer ops;
* a standard normal is Box–Muller on that hash, evaluated in float64 with **only** IEEE
  ``+ - * /`` and ``sqrt`` (own polynomials for ``log``, ``sin``, ``cos``; integer angle
  reduction), then rounded to float32. Those operations are correctly rounded everywhere,
  so the result does not depend on the platform's libm/SIMD ``log``/``cos`` (numpy's differ
  between CPUs), on numpy's version or on thread count.

Layout: the 64-bit hash of pair index ``j = counter >> 1`` gives a radius (high 32 bits) and
a uniform angle φ (29 bits of octant angle + 3 bits choosing the octant); the even counter of
the pair takes ``r·cos φ``, the odd one ``r·sin φ``. Bulk generation (:func:`normal_block`,
:func:`candidate_pool`) computes each pair once; :func:`normals_at` on arbitrary counters
gives bit-identical values (tested). Speed (2-core CPU): ~3-4x ``torch.randn`` of the same
size, i.e. ~0.9 s for the 2^14 × 3072 pool.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .detmath import horner

if TYPE_CHECKING:   # torch is imported where a function needs it: reading headers must not load it
    import torch

__all__ = [
    "POOL_KEY",
    "derive_key",
    "hash64",
    "uniforms_at",
    "normals_at",
    "normal_block",
    "candidate_pool",
    "candidate_pool_t",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_GAMMA = _U64(0x9E3779B97F4A7C15)  # SplitMix64 increment (golden ratio)
_MUL1 = _U64(0xBF58476D1CE4E5B9)
_MUL2 = _U64(0x94D049BB133111EB)

# Box–Muller constants: python float arithmetic is IEEE, so these are the same everywhere.
_TWO_LN2 = 2.0 * 0.6931471805599453  # 2·(float64 nearest to ln 2), exact doubling
_SQRT_HALF = 0.7071067811865476
_OCTANT_SCALE = (math.pi / 4.0) / 2.0**29  # radians per unit of the 29-bit octant angle
# The pool's own polynomials, evaluated by detmath.horner: not detmath's log/sin/cos (those are more
# accurate and cost more); these define every candidate pool, so every file ever written: never change.
# Truncation errors below are ~1e-10, far under float32's 6e-8 resolution of the output.
# 2 ln m = s·(4 + 4s²/3 + 4s⁴/5 + ...), s = (m-1)/(m+1), |s| ≤ 0.1716: 6 terms (< 2e-10 rel).
_LOG_COEF = tuple(4.0 / (2 * k + 1) for k in range(6))
# On 0 ≤ θ < π/4: cos to θ^10 (truncation < 1.2e-10), sin to θ^11 (< 2e-12).
_COS_COEF = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(6))
_SIN_COEF = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(6))
_SIGN = (1 << 63)

_CHUNK = 1 << 16  # elements per vectorised chunk (temporaries stay in L2)


def derive_key(*parts: int | str) -> int:
    """A 64-bit key from a tuple of ints/strings (BLAKE2b; unambiguous encoding)."""
    enc = []
    for p in parts:
        if isinstance(p, (bool, np.bool_)):
            raise TypeError("derive_key: bool parts are ambiguous; pass an int")
        if isinstance(p, (int, np.integer)):
            enc.append(f"i{int(p)};")
        elif isinstance(p, str):
            enc.append(f"s{len(p)}:{p};")
        else:
            raise TypeError(f"derive_key: parts must be int or str, got {type(p).__name__}")
    digest = hashlib.blake2b("".join(enc).encode(), digest_size=8, person=b"ddpm-rcc").digest()
    return int.from_bytes(digest, "little")


POOL_KEY = derive_key("ddpm-codec", "candidate-pool", 1)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 output function, in place on a uint64 array."""
    z ^= z >> _U64(30)
    z *= _MUL1
    z ^= z >> _U64(27)
    z *= _MUL2
    z ^= z >> _U64(31)
    return z


def _key_state(key: int) -> np.uint64:
    k = int(key) & _MASK64
    return _mix64(np.array([k], dtype=_U64))[0]


def hash64(key: int, counters: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """SplitMix64 of stream ``key`` at positions ``counters`` (uint64 in, uint64 out)."""
    c = np.asarray(counters)
    if c.dtype != _U64:
        if c.size and np.min(c) < 0:
            raise ValueError("counters must be non-negative")
        c = c.astype(_U64)
    z = np.multiply(c, _GAMMA, out=out)  # wraps mod 2^64
    z += _key_state(key)
    return _mix64(z)


def uniforms_at(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniforms on [0, 1) (53 bits, float64) at ``counters`` of stream ``key``."""
    h = hash64(key, counters)
    return (h >> _U64(11)).astype(np.float64) * (2.0**-53)


class _Workspace:
    """Preallocated temporaries for :func:`_pairs` (one per thread; avoids page faults)."""

    def __init__(self, n: int):
        self.n = n
        self.f = [np.empty(n, np.float64) for _ in range(6)]
        self.u = [np.empty(n, _U64) for _ in range(3)]
        self.e = np.empty(n, np.int32)
        self.b = np.empty(n, np.bool_)


_tls = threading.local()


def _workspace(n: int) -> _Workspace:
    ws = getattr(_tls, "ws", None)
    if ws is None or ws.n < n:
        ws = _tls.ws = _Workspace(max(n, _CHUNK))
    return ws


def _pairs(h: np.ndarray, out_even: np.ndarray, out_odd: np.ndarray) -> None:
    """Box–Muller pair from 64-bit hashes ``h`` (1-D): writes r·cos φ and r·sin φ as float32.

    Bits 63..32 give the radius (u = (hi + ½)/2^32, r = √(−2 ln u)); bits 31..3 an angle
    θ ∈ [0, π/4) and bits 0, 1, 2 an octant (swap cos/sin, sign of each), so φ is uniform.
    """
    n = h.size
    ws = _workspace(n)
    x, m, t, acc, r, s = (a[:n] for a in ws.f)
    ua, ub = (a[:n] for a in ws.u[:2])
    e = ws.e[:n]
    small = ws.b[:n]
    # radius²: -2 ln u = 2 (32 - e') ln2 - 2 ln m',  hi + ½ = m' 2^e', m' ∈ [√½, √2)
    np.right_shift(h, _U64(32), out=ua)
    np.copyto(x, ua, casting="unsafe")  # exact: < 2^32
    x += 0.5
    np.frexp(x, out=(m, e))  # exact
    np.less(m, _SQRT_HALF, out=small)
    np.add(small, 1.0, out=t)  # 1 or 2 (a masked multiply is 20x slower in numpy)
    m *= t
    np.subtract(e, small, out=e, casting="unsafe")
    np.subtract(32, e, out=r, casting="unsafe")  # small integer, exact in float64
    r *= _TWO_LN2
    np.add(m, 1.0, out=t)
    m -= 1.0
    np.divide(m, t, out=s)  # s = (m'-1)/(m'+1)
    np.multiply(s, s, out=t)
    horner(t, _LOG_COEF, acc)
    acc *= s  # 2 ln m'
    r -= acc
    np.sqrt(r, out=r)
    # angle θ = (bits 31..3)·(π/4)/2^29
    np.right_shift(h, _U64(3), out=ua)
    ua &= _U64((1 << 29) - 1)
    np.copyto(x, ua, casting="unsafe")
    x *= _OCTANT_SCALE
    np.multiply(x, x, out=t)
    c = horner(t, _COS_COEF, m)
    sn = horner(t, _SIN_COEF, acc)
    sn *= x
    c *= r
    sn *= r
    cb = c.view(_U64)
    sb = sn.view(_U64)
    # bit 0: swap (exact, by masks)
    np.bitwise_and(h, _U64(1), out=ua)
    np.subtract(_U64(0), ua, out=ua)  # all ones where swapped (wraps)
    np.bitwise_xor(cb, sb, out=ub)
    ub &= ua
    cb ^= ub
    sb ^= ub
    # bits 1, 2: signs
    np.left_shift(h, _U64(62), out=ua)
    ua &= _U64(_SIGN)
    cb ^= ua
    np.left_shift(h, _U64(61), out=ua)
    ua &= _U64(_SIGN)
    sb ^= ua
    np.copyto(out_even, c.reshape(out_even.shape), casting="same_kind")  # any view of n values
    np.copyto(out_odd, sn.reshape(out_odd.shape), casting="same_kind")


def _pair_block(key: int, j: np.ndarray, out_even: np.ndarray, out_odd: np.ndarray) -> None:
    """Both members of pairs ``j`` (1-D): counter 2j gets the first value, 2j+1 the second.

    ``out_even``/``out_odd``: float32 views (any shape, row-major order) of ``j.size`` values.
    """
    ws = _workspace(j.size)
    h = hash64(key, j, out=ws.u[2][: j.size])
    _pairs(h, out_even, out_odd)


def _normals_generic(key: int, counters: np.ndarray) -> np.ndarray:
    c = counters.reshape(-1)
    ev = np.empty(c.size, np.float32)
    od = np.empty(c.size, np.float32)
    _pair_block(key, c >> _U64(1), ev, od)
    return np.where((c & _U64(1)) == 0, ev, od)


def _pool_threads() -> int:
    env = os.environ.get("DDPM_CODEC_PRNG_THREADS")
    if env:
        return max(1, int(env))
    import torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def normals_at(key: int, counters: np.ndarray) -> np.ndarray:
    """Standard normals (float32) at ``counters`` (non-negative ints) of stream ``key``.

    Depends only on (key, counter): identical for any chunking, order, platform.
    """
    c = np.asarray(counters)
    shape = c.shape
    if c.dtype != _U64:
        if c.size and np.min(c) < 0:
            raise ValueError("counters must be non-negative")
        c = c.astype(_U64)
    c = c.reshape(-1)
    out = np.empty(c.size, dtype=np.float32)
    for s in range(0, c.size, _CHUNK):
        out[s : s + _CHUNK] = _normals_generic(key, c[s : s + _CHUNK])
    return out.reshape(shape)


def normal_block(key: int, rows: int, cols: int, row_start: int = 0, row_stop: int | None = None,
                 *, transposed: bool = False, threads: int | None = None) -> np.ndarray:
    """``normals_at(key, r*cols + c)`` for rows ``[row_start, row_stop)``, all columns.

    Returns ``[n_rows, cols]`` (or ``[cols, n_rows]`` C-contiguous if ``transposed``).
    Fast path (each Box–Muller pair computed once) when ``cols`` is even; chunked and
    multi-threaded (numpy releases the GIL), bit-identical to :func:`normals_at`.
    """
    row_stop = rows if row_stop is None else row_stop
    if not (0 <= row_start <= row_stop <= rows):
        raise ValueError("bad row range")
    n = row_stop - row_start
    out = np.empty((cols, n) if transposed else (n, cols), dtype=np.float32)
    if n == 0 or cols == 0:
        return out
    threads = _pool_threads() if threads is None else threads
    tasks = []
    if cols % 2 == 0:
        half = cols // 2
        if transposed:
            # columns 2q and 2q+1 share pair index j = r*half + q: one contiguous row each
            rr = np.arange(row_start, row_stop, dtype=_U64) * _U64(half)
            step = max(1, _CHUNK // n)
            for q0 in range(0, half, step):
                q1 = min(half, q0 + step)

                def task(q0=q0, q1=q1):
                    for r0 in range(0, n, _CHUNK):
                        r1 = min(n, r0 + _CHUNK)
                        j = rr[r0:r1][None, :] + np.arange(q0, q1, dtype=_U64)[:, None]
                        _pair_block(key, j.reshape(-1), out[2 * q0 : 2 * q1 : 2, r0:r1],
                                    out[2 * q0 + 1 : 2 * q1 : 2, r0:r1])

                tasks.append(task)
        else:
            step = max(1, _CHUNK // cols)
            for r0 in range(row_start, row_stop, step):
                r1 = min(row_stop, r0 + step)

                def task(r0=r0, r1=r1):
                    j = np.arange(r0 * half, r1 * half, dtype=_U64)
                    blk = out[r0 - row_start : r1 - row_start]
                    _pair_block(key, j, blk[:, 0::2], blk[:, 1::2])

                tasks.append(task)
    else:
        step = max(1, _CHUNK // cols)
        for r0 in range(row_start, row_stop, step):
            r1 = min(row_stop, r0 + step)

            def task(r0=r0, r1=r1):
                cnt = np.arange(r0 * cols, r1 * cols, dtype=_U64)
                v = _normals_generic(key, cnt).reshape(r1 - r0, cols)
                if transposed:
                    out[:, r0 - row_start : r1 - row_start] = v.T
                else:
                    out[r0 - row_start : r1 - row_start] = v

            tasks.append(task)
    if threads <= 1 or len(tasks) == 1:
        for t in tasks:
            t()
    else:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            for f in [ex.submit(t) for t in tasks]:
                f.result()
    return out


@lru_cache(maxsize=4)
def candidate_pool_t(cols: int, rows: int) -> "torch.Tensor":
    """The candidate pool stored column-major: ``[cols, rows]`` contiguous float32 (CPU).

    Element ``[c, r]`` is ``normals_at(POOL_KEY, r*cols + c)``. Cached per shape, and on disk for
    large pools (:mod:`.pool_cache`: verified on every read, rebuilt when a check fails).
    """
    if rows <= 0 or cols <= 0:
        raise ValueError("pool shape must be positive")
    import torch

    from .pool_cache import cached_pool   # verified on every read, rebuilt when it fails

    pool = cached_pool(POOL_KEY, cols, rows, lambda: normal_block(POOL_KEY, rows, cols, transposed=True),
                       lambda counters: normals_at(POOL_KEY, counters))
    return torch.from_numpy(pool)


def candidate_pool(rows: int, cols: int) -> "torch.Tensor":
    """``P[r, c] = normals_at(POOL_KEY, r*cols + c)``, shape ``[rows, cols]`` float32.

    A transposed view of :func:`candidate_pool_t` (the layout the encoder scores in).
    """
    return candidate_pool_t(cols, rows).t()
