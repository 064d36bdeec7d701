"""Reverse channel coding of one Gaussian coding step (Ho et al. 2020, Sec. 4.3, Algs. 3–4).

Modules: :mod:`.layout` (what a step code means: both sides), :mod:`.bitstream` (how it is
range-coded: both sides), :mod:`.search` (the encoder's trellis Viterbi search), :mod:`.legacy`
(PFR and MRC selection of profiles 1-2, and the fitting of their index tables). This package
re-exports the public names.

Transmits a sample of ``q = N(μ_q, var_q·I)`` to a decoder that knows only
``p = N(μ_p, var_p·I)``, for ``B`` independent items of ``D`` dims. Knows nothing of
diffusion: the caller computes ``x = μ_p + sqrt(var_p)·ε`` from the returned ``ε`` (which
is bit-identical on both sides).

Per item and step (all shared randomness from :mod:`ddpm_codec.coding.prng`):

1. ``KL(q‖p)`` in bits (closed form). Below ``cfg.min_step_bits`` the step is *free*:
   ``C = 0``, nothing is sent, both sides use ``ε = normals_at(derive_key(seed, step, item,
   "free"), arange(D))`` (a draw from ``p``; the report counts the mismatch).
2. Otherwise ``C = min(D, max(1, round(KL / chunk_bits)))`` chunks: pool columns
   ``0..D-1`` are cut into ``C`` near-equal contiguous blocks; pool column ``k`` carries image dim
   ``perm[k]`` with sign ``s_k`` (``perm``, ``s``, row offset ``r`` derived from
   ``(seed, step, item)``).
3. Candidate ``n < M = 2^log2_candidates`` of chunk ``c`` is ``ε_n[perm[k]] = s_k·P[(n + r)
   mod M, k]`` for the columns ``k`` of block ``c`` (``P = candidate_pool(M, D)``): i.i.d.
   ``N(0, I)`` within a chunk, disjoint columns across chunks.
4. The encoder scores ``log w_n = log q(z_n)/p(z_n)`` for all chunks in one pass over the
   pool and selects with the Poisson functional representation (Li & El Gamal 2018):
   ``n* = argmin_n log T_n − log w_n``, ``T_n`` Poisson arrival times from its private
   generator (``selection="mrc"``: minimal random coding, ``n* ~ w_n``, for comparison).
5. :func:`write_step` range-codes ``C`` (around the caller's ``predicted_chunks``) and each
   index as bucket ``b = floor(log2(n*+1))`` under a simulated table plus ``b`` raw bits.

``selection="trellis"`` (the default profile's coder) replaces steps 2–5 by one search over a
trellis codebook: the ``C = round(rate_factor·KL / b)`` blocks are the *segments* of a path through
a trellis of ``S = 2^state_bits`` states (``b = chunk_bits`` path bits per segment,
``M = S·2^b`` pool rows). From state ``σ`` the branch ``y ∈ [0, 2^b)`` of segment ``c`` is
candidate ``n = σ·2^b + y`` (pool row ``(n + r) mod M`` on that segment's columns, as above) and
leads to state ``(σ·2^b + y) mod S``; paths start in state 0. Every path is an i.i.d. ``N(0, I)``
vector (its segments use disjoint columns), so the codebook holds ``2^(C·b)`` draws from ``p``
while the encoder finds the path with the largest ``log q/p`` exactly by dynamic programming
(Viterbi) in ``O(M·D)`` — the cost of one pass over the pool. The ``C·b`` path bits are sent flat.
Why: any scheme that sends an index into a codebook of ``p`` draws pays about
``log2(sqrt(2π)·‖Δ‖/σ)`` bits beyond the information it delivers *per independent selection*
(≈ 3 bits per chunk here: 20–30% of a 10–14-bit chunk); one selection per step over an
exponentially large but searchable codebook pays it once per step instead (measured: 7–9%
at ``S = 2^10, b = 4``). The selected sample is not distributed as ``q`` (it is the codebook's
best match, less noisy along the segments' directions of ``Δ``); what counts is what the rest
of the chain then costs, which ``benchmarks/codec.py`` measures end to end.

``reuse_bits = k`` multiplies the states by ``K = 2^k`` without a larger pool: the states fall into
``K`` groups of ``M/2^b``, and group ``h`` reads the pool rotated by ``h·shift_j`` at segment ``j``
(:func:`.layout.reuse_shift`), so candidate ``n < K·M`` of segment ``j`` is pool row
``(n mod M + r + (n div M)·shift_j) mod M``. The search costs ``K`` times the Viterbi recursion
but no more of the pool pass (the dominant cost), and memory stays that of the ``M``-row pool.
Measured on the toy chain of ``benchmarks/rcc.py`` (2^14 rows, 110 %): excess 0.476 ± 0.008
bits/dim with ``k = 2``, the same as a 4× larger pool (2^16 rows, 0.476 ± 0.009), against 0.570 ±
0.008 with ``k = 0``: sharing rows between states costs nothing measurable.
"""

from __future__ import annotations

# Names are imported on first use: reading a file's header (``ddpm-codec info``) needs only the
# configuration, not the encoder's search and its torch / numba imports.
_LAZY = {
    "index_bucket_probs": "bitstream", "read_step": "bitstream", "write_step": "bitstream",
    "RCCConfig": "layout", "StepCode": "layout", "decode_step": "layout", "expected_chunks": "layout",
    "kl_bits": "layout", "num_chunks_for": "layout", "trellis_path": "layout", "trellis_states": "layout",
    "StepReport": "search", "encode_step": "search", "snap_chunks": "search",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
