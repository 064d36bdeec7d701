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
import os
from functools import lru_cache

import numpy as np

__all__ = ["HAVE_KERNEL", "feed_kernel"]

# numba is a dependency, imported on first use (only the encoder searches: decoding never loads
# it); without it the torch recursion runs instead
HAVE_KERNEL = importlib.util.find_spec("numba") is not None


def _feed(s, offsets, shifts, score, new, arg, back, j0, g0, g1, h0, h1, commit, B, log2_b, log2_m, log2_s):  # pragma: no cover - numba
    """Run ``nb`` segments of the recursion for items ``g0 .. g1-1`` and new-state blocks ``h0 .. h1-1``.

    ``s`` float32 ``[nb, G, M]`` pool-row scores; ``offsets`` int64 ``[G]``; ``shifts`` int64
    ``[nb]``; ``score`` float32 ``[G, S]``; ``new``/``arg`` float32/int32 ``[g1 - g0, S]`` scratch
    (the new scores and their predecessor index); ``back`` int8 ``[C, G, S]`` (rows ``j0 .. j0+nb-1``,
    columns of the blocks, written); ``B``, ``M``, ``S`` powers of two (their log2 given). New
    states come in blocks of ``B`` (``σ' = h·B + y``); for each block and predecessor index ``k``
    the candidates ``n = k·S + h·B + y`` are ``B`` consecutive pool rows from ``(n mod M + r +
    (n div M)·shift) mod M`` (shifts and masks only). ``commit``: copy ``new`` into ``score`` after
    each segment (all blocks: one thread); without it the caller does, once every thread has run
    its blocks of the (single) segment — blocks are independent, and they only read ``score``.
    """
    nb, G, M = s.shape
    S = score.shape[1]
    H = S >> log2_b
    mask = M - 1
    row2 = np.empty(2 * M, np.float32)  # the row twice: a rotated block never wraps
    for i in range(nb):
        sh = shifts[i]
        # Paths start in state 0, so after j segments only states < B^j are reached: new blocks
        # h >= B^j have no finite predecessor. They get what the loop would give them (-inf, and
        # the last k: every comparison of -inf with -inf is a tie) without the loop.
        hr = h1
        if (j0 + i) * log2_b < log2_s - log2_b:
            hr = min(h1, max(h0, 1 << ((j0 + i) * log2_b)))
        for g in range(g0, g1):
            ng = new[g - g0]
            ag = arg[g - g0]
            for x in range(hr * B, h1 * B):
                ng[x] = -np.inf
                ag[x] = B - 1
            for x in range(M):
                v = s[i, g, x]
                row2[x] = v
                row2[M + x] = v
            r = offsets[g]
            sc = score[g]
            for h in range(h0, hr):
                nv = ng[h * B: h * B + B]
                av = ag[h * B: h * B + B]
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
            for x in range(h0 * B, h1 * B):
                bk[x] = ag[x]
            if commit:
                for x in range(S):
                    sc[x] = ng[x]


@lru_cache(maxsize=None)
def _compiled():
    import numba

    return numba.njit(cache=True, nogil=True)(_feed)


SEARCH_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
"""Threads the search uses (the encoder only; any path decodes). Plain threads, each on its share of a
segment's new states: an OpenMP ``prange`` was 1.4x faster alone but, through its spinning threads,
5x slower beside a second encoder, and it reset torch's thread count; these never spin and leave
torch alone. (Scoring the pool on two torch threads was tried too: its spinning OpenMP workers then
slowed these threads, and the encode.)"""
ITEMS_PER_CALL = 16   # items per kernel call: its scratch is 8 bytes x 16 x S (16 MiB at 2^17 states)
_POOL: list = []


def _pool(n: int):
    from concurrent.futures import ThreadPoolExecutor

    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=max(1, n - 1), thread_name_prefix="ddpm-viterbi"))
    return _POOL[0]


def feed_kernel(s, offsets, shifts, score, back, j0, B, threads: int | None = None) -> None:
    """:func:`_feed` compiled (cached on disk by numba after the first run: ~1 s once, then ~0.3 s
    per process to load). With ``threads > 1`` (default :data:`SEARCH_THREADS`) each segment's new
    states are split between that many threads, the same results bit for bit (each state's maximum
    is taken over the same values in the same order): 0.66 instead of 1.10 ms a segment at 2^17
    states on this project's 2-vCPU machine (whose second vCPU adds ~1.3x, not 2x). Items go
    through in calls of :data:`ITEMS_PER_CALL`, so the scratch stays small for any tile count."""
    m, (g, S) = s.shape[2], score.shape
    log2_b, log2_m, log2_s = B.bit_length() - 1, m.bit_length() - 1, S.bit_length() - 1
    threads = SEARCH_THREADS if threads is None else max(1, int(threads))
    H = S >> log2_b
    kernel = _compiled()
    step = min(g, ITEMS_PER_CALL)
    new, arg = np.empty((step, S), np.float32), np.empty((step, S), np.int32)   # bounded scratch
    if threads == 1 or H < 64:
        for g0 in range(0, g, step):
            g1 = min(g, g0 + step)
            kernel(s, offsets, shifts, score, new, arg, back, j0, g0, g1, 0, H, True, B, log2_b, log2_m, log2_s)
        return
    pool = _pool(threads)
    cuts = [H * p // threads for p in range(threads + 1)]
    for i in range(s.shape[0]):
        for g0 in range(0, g, step):
            g1 = min(g, g0 + step)
            args = [(s[i:i + 1], offsets, shifts[i:i + 1], score, new, arg, back, j0 + i, g0, g1, cuts[p],
                     cuts[p + 1], False, B, log2_b, log2_m, log2_s) for p in range(threads)]
            futures = [pool.submit(kernel, *a) for a in args[1:]]
            kernel(*args[0])
            for f in futures:
                f.result()
            score[g0:g1] = new[:g1 - g0]
