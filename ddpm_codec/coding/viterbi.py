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
the default profile afford 2^17 states on a 2-core CPU. Its inner loop runs over a tile of state
blocks, branch-free, so that LLVM vectorizes it (see :func:`_feed`): 0.47 instead of 0.82 ms a
segment at 2^17 states on 2 threads, the same decisions.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np

__all__ = ["HAVE_KERNEL", "feed_kernel"]

# numba is a dependency, imported on first use (only the encoder searches; a float decoder never
# loads it); without it the torch recursion runs instead
HAVE_KERNEL = importlib.util.find_spec("numba") is not None


def _feed(s, offsets, shifts, score, new, back, j0, g0, g1, h0, h1, commit, B, log2_b, log2_m, log2_s):  # pragma: no cover - numba
    """Run ``nb`` segments of the recursion for items ``g0 .. g1-1`` and new-state blocks ``h0 .. h1-1``.

    ``s`` float32 ``[nb, G, M]`` pool-row scores; ``offsets`` int64 ``[G]``; ``shifts`` int64
    ``[nb]``; ``score`` float32 ``[G, S]``; ``new`` float32 ``[g1 - g0, S]`` scratch (the new
    scores); ``back`` int8 ``[C, G, S]`` (rows ``j0 .. j0+nb-1``, columns of the blocks, written);
    ``B``, ``M``, ``S`` powers of two (their log2 given). New states come in blocks of ``B``
    (``σ' = h·B + y``); for block ``h`` and predecessor index ``k`` the candidates ``n = k·S + h·B +
    y`` are ``B`` consecutive pool rows from ``(n mod M + r + (n div M)·shift) mod M``. ``commit``:
    copy ``new`` into ``score`` after each segment (all blocks: one thread); without it the caller
    does, once every thread has run its blocks of the (single) segment — blocks are independent,
    and they only read ``score``.

    Layout, for SIMD: blocks go in tiles of up to :data:`TILE_BLOCKS` whose candidates stay inside
    one multiple of ``M`` (so a tile's rows for one ``k`` are consecutive), and a tile's new scores
    are held transposed, ``[y, h]``. For each ``k`` and ``y`` the inner loop then runs over the
    tile's blocks: the predecessor scores ``score[k·H + h]`` are consecutive, and so are the rows,
    read from the segment's row transposed (``rt[y, j] = row[(j·B + y) mod M]``, twice over). That
    loop is branch-free (max, and a masked select of ``k``), which LLVM vectorizes; the former
    block-by-block loop, ``B`` long, ran scalar. Each state still takes the maximum over ``k = 0 ..
    B-1`` in that order with ties to the larger ``k``: the same decisions bit for bit.
    """
    nb, G, M = s.shape
    S = score.shape[1]
    H = S >> log2_b
    mask = M - 1
    bmask = B - 1
    J = (2 * M) >> log2_b
    TH = min(TILE_BLOCKS, max(1, M >> log2_b))
    rt = np.empty((B, J), np.float32)     # the segment's row twice, transposed
    nt = np.empty((B, TH), np.float32)    # a tile's new scores, nt[y, h - hs]
    at = np.empty((B, TH), np.int32)      # and their predecessor index k
    for i in range(nb):
        sh = shifts[i]
        # Paths start in state 0, so after j segments only states < B^j are reached: new blocks
        # h >= B^j have no finite predecessor. They get what the loop would give them (-inf, and
        # the last k: every comparison of -inf with -inf is a tie) without the loop.
        hr = h1
        if (j0 + i) * log2_b < log2_s - log2_b:
            hr = min(h1, max(h0, 1 << ((j0 + i) * log2_b)))
        bi = back[j0 + i]
        for g in range(g0, g1):
            ng = new[g - g0]
            bk = bi[g]
            for x in range(hr * B, h1 * B):
                ng[x] = -np.inf
                bk[x] = B - 1
            sg = s[i, g]
            for y in range(B):
                ry = rt[y]
                for j in range(J):
                    ry[j] = sg[((j << log2_b) + y) & mask]
            r = offsets[g]
            sc = score[g]
            hs = h0
            while hs < hr:
                # the tile's blocks: candidates k·S + h·B cross no multiple of M (S, M powers of two)
                he = min(hr, hs + TH, (((hs << log2_b) >> log2_m) + 1) << (log2_m - log2_b))
                L = he - hs
                for k in range(B):
                    n0 = (k << log2_s) + (hs << log2_b)
                    row0 = ((n0 & mask) + r + (n0 >> log2_m) * sh) & mask
                    jb = row0 >> log2_b
                    pk = sc[k * H + hs: k * H + he]
                    kk = np.int32(k)
                    for y in range(B):
                        yy = (row0 & bmask) + y
                        j1 = jb + (yy >> log2_b)
                        src = rt[yy & bmask, j1: j1 + L]
                        nv = nt[y]
                        av = at[y]
                        if k == 0:   # v >= -inf always: the first predecessor is taken
                            for hh in range(L):
                                nv[hh] = pk[hh] + src[hh]
                                av[hh] = 0
                        else:
                            for hh in range(L):
                                v = pk[hh] + src[hh]
                                c = nv[hh]
                                m = -np.int32(v >= c)   # ties: the largest k wins (as the torch fallback)
                                nv[hh] = max(v, c)
                                a = av[hh]
                                av[hh] = a ^ ((a ^ kk) & m)
                b0 = hs << log2_b   # the tile back in state order (row by row: 1.6x faster than column by column)
                ngt = ng[b0: b0 + (L << log2_b)]
                bkt = bk[b0: b0 + (L << log2_b)]
                for y in range(B):
                    nty = nt[y]
                    aty = at[y]
                    for hh in range(L):
                        ngt[(hh << log2_b) + y] = nty[hh]
                        bkt[(hh << log2_b) + y] = aty[hh]
                hs = he
            if commit:
                for x in range(S):
                    sc[x] = ng[x]


TILE_BLOCKS = 128   # state blocks per tile: 2 x 8 KiB of transposed scratch at B = 16, in L1


@lru_cache(maxsize=None)
def _compiled():
    import numba

    return numba.njit(cache=True, nogil=True)(_feed)


SEARCH_THREADS = 1
"""Threads the search uses by default (the encoder only; any path decodes; a constant: callers pass
``threads``, from ``RCCConfig.search_threads``, ``--threads`` in the CLI). Plain threads,
each on its share of a segment's new states. One by default: since the inner loop is vectorized a
segment at 2^17 states takes 0.37 ms on one thread and 0.48 ms split over two on this project's
2-vCPU machine (the split pays a hand-off per segment; `benchmarks/viterbi_ab.py`), and the
encode is as fast either way (`benchmarks/speed.py`). An OpenMP ``prange`` was not used: through
its spinning threads it was 5x slower beside a second encoder, and it reset torch's thread count."""
ITEMS_PER_CALL = 16   # items per kernel call: its scratch is 4 bytes x 16 x S (8 MiB at 2^17 states)
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
    is taken over the same values in the same order). Items go through in calls of
    :data:`ITEMS_PER_CALL`, so the scratch stays small for any tile count."""
    m, (g, S) = s.shape[2], score.shape
    log2_b, log2_m, log2_s = B.bit_length() - 1, m.bit_length() - 1, S.bit_length() - 1
    threads = SEARCH_THREADS if threads is None else max(1, int(threads))
    H = S >> log2_b
    kernel = _compiled()
    step = min(g, ITEMS_PER_CALL)
    new = np.empty((step, S), np.float32)   # bounded scratch
    if threads == 1 or H < 64:
        for g0 in range(0, g, step):
            g1 = min(g, g0 + step)
            kernel(s, offsets, shifts, score, new, back, j0, g0, g1, 0, H, True, B, log2_b, log2_m, log2_s)
        return
    pool = _pool(threads)
    cuts = [H * p // threads for p in range(threads + 1)]
    for i in range(s.shape[0]):
        for g0 in range(0, g, step):
            g1 = min(g, g0 + step)
            args = [(s[i:i + 1], offsets, shifts[i:i + 1], score, new, back, j0 + i, g0, g1, cuts[p],
                     cuts[p + 1], False, B, log2_b, log2_m, log2_s) for p in range(threads)]
            futures = [pool.submit(kernel, *a) for a in args[1:]]
            kernel(*args[0])
            for f in futures:
                f.result()
            score[g0:g1] = new[:g1 - g0]
