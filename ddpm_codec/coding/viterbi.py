"""The trellis coder's Viterbi recursion as one compiled loop (numba), with a torch fallback.

Only the encoder runs this search, and any path it returns decodes exactly, so the kernel's
floats need not match any other machine's; it does match the torch fallback exactly (same
float32 additions, same tie rule: the largest predecessor index wins), which
``tests/test_coding_rcc.py`` checks on random scores.

Trellis (see :mod:`ddpm_codec.coding.rcc`): ``S`` states, ``B = 2^b`` branches per state,
``H = S / B``; the ``K = 2^reuse_bits`` state groups read the segment's pool-row scores rotated by
``r + h·shift_j``. Flattened candidate ``n = σ·B + y < K·M`` (``M`` pool rows) sits on pool row
``(n mod M + r + (n div M)·shift_j) mod M`` and leads to state ``σ' = n mod S``; the ``B``
predecessors of ``σ'`` are ``σ = k·H + σ' div B`` (``n = k·S + σ'``), told apart by ``k``, which
is what the back pointer stores.

Why compiled: the torch formulation needs ~6 passes over the ``S·B`` branch metrics per segment
(rotation copy, add, max, compare, multiply, max); the loop below makes one, which is what lets
the default profile afford 2^17 states on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np

__all__ = ["HAVE_KERNEL", "feed_kernel"]

# numba is a dependency, imported on first use (only the encoder searches: decoding never loads
# it); without it the torch recursion runs instead
HAVE_KERNEL = importlib.util.find_spec("numba") is not None


def _feed(s, offsets, shifts, score, back, j0, B, log2_b, log2_m, log2_s):  # pragma: no cover - numba
    """Run ``nb`` segments of the recursion in place.

    ``s`` float32 ``[nb, G, M]`` pool-row scores; ``offsets`` int64 ``[G]``; ``shifts`` int64
    ``[nb]``; ``score`` float32 ``[G, S]`` (updated); ``back`` int8 ``[C, G, S]`` (rows ``j0 ..
    j0+nb-1`` written); ``B``, ``M``, ``S`` powers of two (their log2 given). New states come in
    blocks of ``B`` (``σ' = h·B + y``); for each block and predecessor index ``k`` the candidates
    ``n = k·S + h·B + y`` are ``B`` consecutive pool rows from ``(n mod M + r + (n div M)·shift)
    mod M`` (shifts and masks only). Blocks are independent; a ``prange`` over them on both cores
    was 1.4x faster alone but, through OpenMP's spinning threads, 5x slower with a second encoder
    running beside it (11 s instead of 2.3 s an image; serial: ~2x, as expected), so it runs serially.
    """
    nb, G, M = s.shape
    S = score.shape[1]
    H = S >> log2_b
    mask = M - 1
    new = np.empty(S, np.float32)
    arg = np.empty(S, np.int32)
    row2 = np.empty(2 * M, np.float32)  # the row twice: a rotated block never wraps
    for i in range(nb):
        sh = shifts[i]
        for g in range(G):
            for x in range(M):
                v = s[i, g, x]
                row2[x] = v
                row2[M + x] = v
            r = offsets[g]
            sc = score[g]
            for h in range(H):
                nv = new[h * B: h * B + B]
                av = arg[h * B: h * B + B]
                for y in range(B):
                    nv[y] = -np.inf
                    av[y] = 0
                hb = h << log2_b
                for k in range(B):
                    n0 = (k << log2_s) + hb
                    row0 = ((n0 & mask) + r + (n0 >> log2_m) * sh) & mask
                    v0 = sc[k * H + h]
                    rv = row2[row0: row0 + B]
                    kk = np.int32(k)
                    for y in range(B):
                        v = v0 + rv[y]
                        c = nv[y]
                        ge = v >= c  # ties: the largest k wins (as the torch fallback)
                        nv[y] = v if ge else c
                        av[y] = kk if ge else av[y]
            bk = back[j0 + i, g]
            for x in range(S):
                sc[x] = new[x]
                bk[x] = arg[x]


@lru_cache(maxsize=None)
def _compiled():
    import numba

    return numba.njit(cache=True, nogil=True)(_feed)


def feed_kernel(s, offsets, shifts, score, back, j0, B) -> None:
    """:func:`_feed` compiled (cached on disk by numba after the first run: ~1 s once, then ~0.3 s
    per process to load)."""
    m, S = s.shape[2], score.shape[1]
    _compiled()(s, offsets, shifts, score, back, j0, B, B.bit_length() - 1, m.bit_length() - 1, S.bit_length() - 1)
