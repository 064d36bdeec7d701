"""Reverse channel coding of one Gaussian coding step (Ho et al. 2020, Sec. 4.3, Algs. 3–4).

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
(:func:`_reuse_shift`), so candidate ``n < K·M`` of segment ``j`` is pool row
``(n mod M + r + (n div M)·shift_j) mod M``. The search costs ``K`` times the Viterbi recursion
but no more of the pool pass (the dominant cost), and memory stays that of the ``M``-row pool.
Measured on the toy chain of ``benchmarks/rcc.py`` (2^14 rows, 110 %): excess 0.476 ± 0.008
bits/dim with ``k = 2``, the same as a 4× larger pool (2^16 rows, 0.476 ± 0.009), against 0.570 ±
0.008 with ``k = 0``: sharing rows between states costs nothing measurable.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from . import viterbi
from .prng import POOL_KEY, candidate_pool_t, derive_key, hash64, normals_at

__all__ = [
    "RCCConfig",
    "StepCode",
    "StepReport",
    "kl_bits",
    "num_chunks_for",
    "expected_chunks",
    "encode_step",
    "decode_step",
    "write_step",
    "read_step",
    "index_bucket_probs",
    "fit_index_tables",
    "trellis_states",
]

LN2 = math.log(2.0)
Selection = Literal["pfr", "mrc", "trellis"]
_MAX_LOG2_CANDIDATES = 20  # 2^20 × D pool floats is already far beyond any CPU budget


@dataclass(frozen=True)
class RCCConfig:
    """Reverse-channel-coding parameters (the decoder must use the same values).

    chunk_bits: target KL per chunk, bits (``C = round(rate_factor·KL / chunk_bits)``, at least 1);
        for ``"trellis"``: the path bits per segment ``b`` (an integer, 1..16).
    log2_candidates: ``M = 2^log2_candidates`` candidates per chunk (the pool's rows); for
        ``"trellis"``: ``state_bits + b`` with ``S = 2^state_bits`` trellis states.
    min_step_bits: steps with KL below this are free (``C = 0``, no bits, ε drawn from p).
    selection: ``"pfr"`` (Poisson functional representation), ``"mrc"`` (minimal random
        coding with importance weights; index sent flat, for comparison only) or ``"trellis"``
        (Viterbi search of a trellis codebook, see the module docstring).
    rate_factor: bits sent per bit of KL (``C·b ≈ rate_factor·KL`` for the trellis; 1 for PFR).
    chunks_rel_scale, chunks_abs_scale: mean absolute deviation of the two-sided geometric model
        of ``C`` around ``c0 = round(predicted_chunks)`` is ``chunks_abs_scale + chunks_rel_scale·c0``.
    count_spike: extra probability mass of ``C = c0`` in that model (0: none). With it, the encoder
        moves its ``C`` to ``c0`` when within the window ``snap_up``, ``snap_down`` (relative) /
        ``snap_abs`` (segments) of :func:`snap_chunks`; those three are encoder policy, not format.

    Defaults (12, 13, 3.0): lowest measured end-to-end excess within ~2 s of RCC time per
    50-step 3072-dim chain on the 2-core CPU (benchmarks/rcc.py, "chain" and "budget").
    """

    chunk_bits: float = 12.0
    log2_candidates: int = 13
    min_step_bits: float = 3.0
    selection: Selection = "pfr"
    chunks_rel_scale: float = 0.25
    rate_factor: float = 1.0
    chunks_abs_scale: float = 0.01
    count_spike: float = 0.0
    snap_up: float = 0.12
    snap_down: float = 0.04
    snap_abs: float = 2.0
    reuse_bits: int = 0

    def __post_init__(self):
        if not (self.chunk_bits > 0 and math.isfinite(self.chunk_bits)):
            raise ValueError(f"chunk_bits must be positive, got {self.chunk_bits}")
        if not (1 <= int(self.log2_candidates) <= _MAX_LOG2_CANDIDATES):
            raise ValueError(f"log2_candidates must be in [1, {_MAX_LOG2_CANDIDATES}], got {self.log2_candidates}")
        if not (self.min_step_bits >= 0 and math.isfinite(self.min_step_bits)):
            raise ValueError(f"min_step_bits must be >= 0, got {self.min_step_bits}")
        if self.selection not in ("pfr", "mrc", "trellis"):
            raise ValueError(f"unknown selection mode {self.selection!r} (expected 'pfr', 'mrc' or 'trellis')")
        if not (0.25 <= self.rate_factor <= 4.0 and math.isfinite(self.rate_factor)):
            raise ValueError(f"rate_factor must be in [0.25, 4], got {self.rate_factor}")
        if self.selection == "trellis":
            b = self.chunk_bits
            if b != int(b) or not 1 <= b <= 16:
                raise ValueError(f"trellis: chunk_bits (path bits per segment) must be an integer in [1, 16], got {b}")
            sb = int(self.log2_candidates) - int(b)
            if sb < 0 or (0 < sb < b):
                raise ValueError(f"trellis: log2_candidates - chunk_bits (state bits) must be 0 or >= chunk_bits, "
                                 f"got {self.log2_candidates} - {int(b)}")
        if not 0 <= int(self.reuse_bits) <= 8 or (self.reuse_bits and (
                self.selection != "trellis" or int(self.log2_candidates) - int(self.chunk_bits) < int(self.chunk_bits))):
            raise ValueError(f"reuse_bits must be in [0, 8], and nonzero only for a trellis with >= 2^chunk_bits "
                             f"states, got {self.reuse_bits}")
        if not (self.chunks_rel_scale >= 0 and math.isfinite(self.chunks_rel_scale)):
            raise ValueError(f"chunks_rel_scale must be >= 0, got {self.chunks_rel_scale}")
        if not (self.chunks_abs_scale > 0 and math.isfinite(self.chunks_abs_scale)):
            raise ValueError(f"chunks_abs_scale must be > 0, got {self.chunks_abs_scale}")
        if not 0.0 <= self.count_spike < 1.0:
            raise ValueError(f"count_spike must be in [0, 1), got {self.count_spike}")
        for name in ("snap_up", "snap_down", "snap_abs"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")

    @property
    def num_candidates(self) -> int:
        return 1 << int(self.log2_candidates)

    @property
    def state_bits(self) -> int:
        """Trellis: log2 of the number of states (0 for the other selections)."""
        if self.selection != "trellis":
            return 0
        return int(self.log2_candidates) - int(self.chunk_bits) + int(self.reuse_bits)

    @property
    def num_indices(self) -> int:
        """Range of a chunk's index: the pool rows, times ``2^reuse_bits`` for the trellis."""
        return self.num_candidates << int(self.reuse_bits)


def _reuse_shift(j: int, m: int) -> int:
    """Trellis with ``reuse_bits``: index ``n`` of segment ``j`` sits on pool row
    ``(n mod M + r + (n div M)·shift_j) mod M``; shift_j is a fixed odd pseudo-random number."""
    return ((j + 1) * 0x9E3779B97F4A7C15 >> 13) % m | 1


@dataclass
class StepCode:
    """What is transmitted for one step: chunk counts and the chosen candidate indices."""

    num_chunks: np.ndarray  # [B] int64, 0 = free step
    indices: list[np.ndarray]  # per item, [C_b] int64 in [0, M)
    dim: int  # D (needed to code C ≤ D; the decoder knows it)

    @property
    def batch(self) -> int:
        return len(self.num_chunks)


@dataclass
class StepReport:
    """Encoder-side diagnostics for one step (nothing here is transmitted)."""

    kl_bits: np.ndarray  # [B] KL(q‖p), bits
    chunk_kl_bits: list[np.ndarray]  # per item, [C_b] KL of each chunk, bits
    est_index_bits: np.ndarray  # [B] model code length of the indices (buckets + raw bits)
    free_bits: np.ndarray  # [B] KL of steps sent free (a draw from p instead of q); else 0
    proj: np.ndarray  # [B] selected ε · û, û = Δ/‖Δ‖ (Δ = μ_q − μ_p)
    proj_target_mean: np.ndarray  # [B] q's mean of ε · û: ‖Δ‖/sqrt(var_p) (its var: var_q/var_p)
    # [B] log2 q(z)/p(z) at the selected z. Its mean over z ~ q is kl_bits; with an exact model
    # the rest of the chain costs exactly this much less, pointwise, so bits sent − this is the
    # step's true excess (see benchmarks/rcc.py, "chain").
    selected_log_w_bits: np.ndarray
    encode_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- closed forms


def kl_bits(mu_q: torch.Tensor, mu_p: torch.Tensor, var_q: float, var_p: float) -> torch.Tensor:
    """KL(N(μ_q, var_q I) ‖ N(μ_p, var_p I)) per item, in bits, float64: ``[B, ...] -> [B]``.

    ½ Σ_i [var_q/var_p − 1 − ln(var_q/var_p) + (μ_q,i − μ_p,i)²/var_p] / ln 2.
    """
    _check_vars(var_q, var_p)
    d = (mu_q.double() - mu_p.double()).flatten(1)
    ratio = var_q / var_p
    const = 0.5 * (ratio - 1.0 - math.log(ratio)) * d.shape[1]
    return (0.5 * d.square().sum(1) / var_p + const) / LN2


def _per_dim_kl_bits(delta: torch.Tensor, var_q: float, var_p: float) -> torch.Tensor:
    ratio = var_q / var_p
    return (0.5 * (ratio - 1.0 - math.log(ratio)) + 0.5 * delta.double().square() / var_p) / LN2


def _check_vars(var_q: float, var_p: float) -> None:
    if not (var_q > 0 and var_p > 0 and math.isfinite(var_q) and math.isfinite(var_p)):
        raise ValueError(f"variances must be positive and finite, got var_q={var_q}, var_p={var_p}")


def num_chunks_for(kl: float, dim: int, cfg: RCCConfig) -> int:
    """The encoder's rule: 0 if KL < min_step_bits, else min(D, max(1, round(f·KL/chunk_bits))),
    f = ``rate_factor``.

    (ceil, round and floor measure within 0.01 of each other in bits/KL; round was lowest.)
    """
    if not math.isfinite(kl):
        raise ValueError(f"non-finite KL {kl}")
    if kl < cfg.min_step_bits:
        return 0
    return int(min(dim, max(1, math.floor(cfg.rate_factor * kl / cfg.chunk_bits + 0.5))))


def snap_chunks(nchunks: np.ndarray, predicted_chunks, cfg: RCCConfig, dim: int) -> np.ndarray:
    """The encoder's counts moved to the decoder's centre ``c0 = round(prediction)`` when close.

    Under a count model with mass ``count_spike`` at ``c0`` (see :func:`_chunk_count_probs`) a
    count equal to ``c0`` costs ``-log2(count_spike)`` bits (0.32 at 0.8) instead of ~2.5, so the
    encoder sends ``c0`` whenever ``nc ≥ 1``, ``c0 ≥ 1`` and ``c0`` lies within
    ``[nc − max(snap_abs, snap_down·nc), nc + max(snap_abs, snap_up·nc)]``: a few per cent more
    path bits cost little (the rate optimum is flat above ~105 %), fewer cost more (100 % was
    0.03 bits/dim worse than 105 %), hence the asymmetric window. Encoder policy only; the decoder
    reads whatever count was sent.
    """
    nc = np.asarray(nchunks, dtype=np.int64)
    c0 = np.floor(np.broadcast_to(np.asarray(predicted_chunks, dtype=np.float64), nc.shape) + 0.5).astype(np.int64)
    d = c0 - nc
    up = np.maximum(cfg.snap_abs, cfg.snap_up * nc)
    down = np.maximum(cfg.snap_abs, cfg.snap_down * nc)
    near = (nc > 0) & (c0 > 0) & (c0 <= dim) & (d <= up) & (-d <= down)
    return np.where(near, c0, nc)


def expected_chunks(expected_kl_bits: float, dim: int, cfg: RCCConfig) -> float:
    """A ``predicted_chunks`` for :func:`write_step` from a predicted step KL (bits)."""
    if expected_kl_bits < cfg.min_step_bits:
        return 0.0
    return float(min(dim, max(1.0, cfg.rate_factor * expected_kl_bits / cfg.chunk_bits)))


# ----------------------------------------------------------------------------- shared layout


def _block_bounds(dim: int, c: int) -> np.ndarray:
    """Start offsets of ``c`` near-equal contiguous blocks of ``dim`` columns, plus ``dim``.

    The first ``dim % c`` blocks have ``dim // c + 1`` columns, the rest ``dim // c``.
    """
    q, r = divmod(dim, c)
    sizes = np.full(c, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


@lru_cache(maxsize=256)
def _item_layout(seed: int, step: int, item: int, dim: int, m: int):
    """Permutation (pool column k -> image dim perm[k]), signs s_k, row offset r (read-only)."""
    ar = np.arange(dim, dtype=np.uint64)
    perm = np.argsort(hash64(derive_key(seed, step, item, "perm"), ar), kind="stable")
    sign_bits = hash64(derive_key(seed, step, item, "sign"), ar) >> np.uint64(63)
    signs = (1.0 - 2.0 * sign_bits.astype(np.float32)).astype(np.float32)
    r = derive_key(seed, step, item, "offset") % m
    perm.setflags(write=False)
    signs.setflags(write=False)
    return perm, signs, r


def _free_epsilon(seed: int, step: int, item: int, dim: int) -> np.ndarray:
    return normals_at(derive_key(seed, step, item, "free"), np.arange(dim, dtype=np.uint64))


def _item_epsilon(seed: int, step: int, item: int, dim: int, m: int, idx: np.ndarray) -> np.ndarray:
    """ε of one item from its chunk indices (decoder side; the encoder calls it too)."""
    c = len(idx)
    if c == 0:
        return _free_epsilon(seed, step, item, dim)
    perm, signs, r = _item_layout(seed, step, item, dim, m)
    bounds = _block_bounds(dim, c)
    idx = np.asarray(idx, dtype=np.int64)
    hi = idx // m
    if np.any(hi):
        shifts = np.array([_reuse_shift(j, m) for j in range(c)], dtype=np.int64)
        rows = (idx % m + r + hi * shifts) % m
    else:
        rows = (idx + r) % m
    rows_per_col = np.repeat(rows, np.diff(bounds))
    counters = rows_per_col.astype(np.uint64) * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
    vals = normals_at(POOL_KEY, counters) * signs  # sign flip: exact
    eps = np.empty(dim, dtype=np.float32)
    eps[perm] = vals
    return eps


def _epsilon(code: StepCode, seed: int, step: int, cfg: RCCConfig) -> np.ndarray:
    m = cfg.num_candidates
    return np.stack([_item_epsilon(seed, step, b, code.dim, m, code.indices[b]) for b in range(code.batch)])


# ----------------------------------------------------------------------------- pool caches


@lru_cache(maxsize=4)
def _pool_on(dim: int, m: int, device: str) -> torch.Tensor:
    """Pool ``[D, M]`` (column k = pool column k over all rows), cached per device."""
    return candidate_pool_t(dim, m).to(device)


@lru_cache(maxsize=2)
def _sqnorm_prefix(dim: int, m: int, device: str) -> torch.Tensor:
    """``S[k, n] = Σ_{j<k} P[n, j]²`` (``[D+1, M]`` float32, accumulated in float64)."""
    pt = candidate_pool_t(dim, m)
    out = torch.empty(dim + 1, m, dtype=torch.float32)
    acc = torch.zeros(m, dtype=torch.float64)
    out[0] = 0
    for k in range(dim):
        acc += pt[k].double().square()
        out[k + 1] = acc
    return out.to(device)


# ----------------------------------------------------------------------------- encoder


_FORCE_TORCH_SELECTION = False  # tests: run the GPU selection code path on CPU
_FORCE_TORCH_VITERBI = False  # tests/benchmarks: the torch Viterbi recursion on CPU instead of coding.viterbi


class _Buffers(threading.local):
    """Per-thread scratch tensors reused across steps: fresh multi-MB allocations page-fault
    on every step (measured: as slow as the pool pass itself)."""

    def __init__(self):
        self.store: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, str(device))
        buf = self.store.get(key)
        if buf is None or buf.numel() < n:
            buf = self.store[key] = torch.empty(max(n, 1 << 16), dtype=torch.float32, device=device)
        return buf[:n].view(shape)


_BUFFERS = _Buffers()


def _selection_rng(generator: torch.Generator) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return np.random.default_rng(seed)


def _select(scores: torch.Tensor, r: int, cfg: RCCConfig, rng: np.random.Generator,
            tgen: torch.Generator | None) -> np.ndarray:
    """argmin_n [log T_n − s_{(n + r) mod M}] per row of ``scores`` ``[C, M]`` (pool-row order).

    PFR: T_n = cumsum of Exp(1) (Poisson arrival times). MRC: T_n = Exp(1) i.i.d., i.e.
    Gumbel-max, n* ~ w_n. Returns candidate indices n* (not pool rows), int64 ``[C]``.
    """
    c, m = scores.shape
    if scores.device.type == "cpu" and tgen is None:
        s = scores.numpy()
        e = _BUFFERS.get("arrivals", (c, m), "cpu").numpy()
        rng.random(out=e, dtype=np.float32)  # U ∈ [0, 1)
        np.subtract(np.float32(1.0), e, out=e)
        np.log(e, out=e)  # log(1 − U) = −Exp(1)
        if cfg.selection == "pfr":
            torch.from_numpy(e).cumsum_(1)  # −T_n
        np.negative(e, out=e)
        with np.errstate(divide="ignore"):  # T = 0 (U = 0, p = 2^-24): that candidate wins,
            np.log(e, out=e)  # as a continuous T this small would (almost surely) too
        # candidate n sits on pool row (n + r) mod M
        e[:, : m - r] -= s[:, r:]
        e[:, m - r :] -= s[:, :r]
        return e.argmin(1).astype(np.int64)
    e_t = torch.empty((c, m), device=scores.device).exponential_(generator=tgen)
    if cfg.selection == "pfr":
        e_t = e_t.cumsum_(1)
    e_t = e_t.log_()
    e_t[:, : m - r] -= scores[:, r:]
    e_t[:, m - r :] -= scores[:, :r]
    return e_t.argmin(1).cpu().numpy().astype(np.int64)


class _Viterbi:
    """Exact best path through the trellis codebook for ``G`` items with ``C`` segments each.

    Branch ``y`` from state ``σ`` is candidate ``n = σ·B + y`` (``B = 2^b``) and leads to state
    ``(σ·B + y) mod S``; paths start in state 0. Fed the segments' scores in order (pool-row
    order, ``[nb, G, M]``), it keeps the best score per state and a back pointer per (segment,
    state); :meth:`best_paths` traces the best final state back to candidate indices. Scores
    accumulate in float32: only the encoder searches, and whichever path it picks decodes exactly.
    """

    def __init__(self, g: int, c: int, cfg: RCCConfig, device):
        self.S = 1 << cfg.state_bits
        self.K = 1 << int(cfg.reuse_bits)   # groups of S/K states, each on the pool rotated by its own shift
        self.B = 1 << int(cfg.chunk_bits)
        self.H = max(1, self.S // self.B)
        self.c = c
        self.j = 0
        # CPU: one compiled pass per segment (coding.viterbi); GPU, one-state trellises or no numba: torch
        self.compiled = (viterbi.HAVE_KERNEL and torch.device(device).type == "cpu" and self.S > 1
                         and self.B <= 128 and not _FORCE_TORCH_VITERBI)
        if self.compiled:
            self.score = np.full((g, self.S), -np.inf, dtype=np.float32)
            self.score[:, 0] = 0.0
            self.back = np.empty((c, g, self.S), dtype=np.int8)
            return
        self.score = torch.full((g, self.S), -math.inf, dtype=torch.float32, device=device)
        self.score[:, 0] = 0.0
        back_dtype = torch.int16 if self.B <= 1 << 15 else torch.int32
        self.back = torch.empty((c, g, self.S), dtype=back_dtype, device=device)
        self.k_index = torch.arange(self.B, dtype=back_dtype, device=device).view(1, self.B, 1)

    def feed(self, s: torch.Tensor, offsets: list[int]) -> None:
        g = s.shape[1]
        S, B, H = self.S, self.B, self.H
        rs = [int(r) for r in offsets]
        if self.compiled:
            m = s.shape[2]
            shifts = np.array([_reuse_shift(j, m) for j in range(self.j, self.j + s.shape[0])], dtype=np.int64)
            viterbi.feed_kernel(s.contiguous().numpy(), np.array(rs, dtype=np.int64), shifts, self.score,
                                self.back, self.j, B)
            self.j += s.shape[0]
            return
        for k in range(s.shape[0]):
            # candidate n sits on pool row (n + r) mod M: rotate each item's rows into candidate order
            # (per segment: rotating the whole [nb, G, M] block at once costs more than the search)
            if self.K > 1:  # group h of S/K states reads the pool rotated by r + h·shift_j
                m = s.shape[2]
                sh = _reuse_shift(self.j, m)
                s2 = torch.cat((s[k], s[k]), dim=1)  # rotations are slices of the doubled row
                br = torch.stack([torch.cat([s2[gi, o: o + m] for o in ((rs[gi] + h * sh) % m for h in range(self.K))])
                                  for gi in range(g)]).view(g, S, B)
            elif g == 1:
                row = s[k, 0]
                br = torch.cat((row[rs[0]:], row[: rs[0]])).view(1, S, B)
            else:
                br = torch.stack([torch.cat((s[k, gi, rs[gi]:], s[k, gi, : rs[gi]])) for gi in range(g)]).view(g, S, B)
            cand = br.add_(self.score[:, :, None])  # [G, S, B]
            if S == 1:
                best, arg = cand.view(g, B).max(1)
                self.score = best[:, None]
                self.back[self.j] = arg[:, None]
            else:  # σ = k·H + h --y--> h·B + y: the B predecessors of a state differ in k
                c4 = cand.view(g, B, S)
                best = c4.amax(1)  # max and argmax apart: 2x faster than max(dim) with indices on CPU
                self.score = best
                self.back[self.j] = ((c4 == best[:, None, :]) * self.k_index).amax(1)
            self.j += 1

    def best_paths(self) -> np.ndarray:
        if self.j != self.c:
            raise RuntimeError(f"Viterbi fed {self.j} of {self.c} segments")
        back = self.back if self.compiled else self.back.cpu().numpy()
        state = self.score.argmax(1) if self.compiled else self.score.argmax(1).cpu().numpy()
        g = len(state)
        out = np.empty((g, self.c), np.int64)
        S, B, H = self.S, self.B, self.H
        for gi in range(g):
            sig = int(state[gi])
            for j in range(self.c - 1, -1, -1):
                if S == 1:
                    out[gi, j] = back[j, gi, 0]
                    continue
                y, h = sig % B, sig // B
                prev = int(back[j, gi, sig]) * H + h
                out[gi, j] = prev * B + y
                sig = prev
        return out


def trellis_path(branches: np.ndarray, cfg: RCCConfig) -> np.ndarray:
    """Candidate indices ``n_j = σ_j·B + y_j`` of the path with branch symbols ``y_j`` (from state 0)."""
    S, bb = 1 << cfg.state_bits, int(cfg.chunk_bits)
    idx = np.empty(len(branches), np.int64)
    sig = 0
    for j, y in enumerate(branches):
        idx[j] = (sig << bb) + int(y)
        sig = int(idx[j]) % S
    return idx


def trellis_states(indices: np.ndarray, cfg: RCCConfig) -> np.ndarray:
    """The state each segment starts from, given candidate indices ``n_j = σ_j·B + y_j``."""
    S, B = 1 << cfg.state_bits, 1 << int(cfg.chunk_bits)
    idx = np.asarray(indices, dtype=np.int64)
    states = np.zeros(len(idx), np.int64)
    sig = 0
    for j, n in enumerate(idx):
        states[j] = sig
        sig = int(n) % S  # (σ·B + y) mod S
    return states


def _block_scores(pool: torch.Tensor, a: torch.Tensor, bounds: np.ndarray, b0: int, b1: int,
                  sqp: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """log w up to a constant for blocks ``b0..b1-1``: ``[G, D] -> [b1-b0, G, M]``.

    ``Σ_{k in block} P[n, k]·a[g, k] − β Σ_{k in block} P[n, k]²``. Blocks come in (at most
    two) runs of equal size: one batched matmul over a contiguous view of the column-major
    pool per run (no copy, one pass over the pool), and the ‖ε‖² term as differences of
    rows of the prefix table ``sqp`` taken as strided views (rows ``lo, lo+size, ...``).
    """
    g = a.shape[0]
    m = pool.shape[1]
    sizes = np.diff(bounds)
    out = _BUFFERS.get("scores", (b1 - b0, g, m), pool.device)
    c = b0
    while c < b1:
        size = int(sizes[c])
        e = c
        while e < b1 and sizes[e] == size:
            e += 1
        lo, hi = int(bounds[c]), int(bounds[e])
        pv = pool[lo:hi].view(e - c, size, m)
        av = a[:, lo:hi].reshape(g, e - c, size).transpose(0, 1)  # [nb, G, size]
        o = out[c - b0 : e - b0]
        torch.bmm(av, pv, out=o)
        if sqp is not None and beta != 0.0:
            sq = _BUFFERS.get("sqnorm", (e - c, m), pool.device)
            torch.sub(sqp[lo + size : hi + 1 : size], sqp[lo:hi:size], out=sq)
            for gi in range(g):  # per item: broadcasting over G is ~10x slower in torch CPU
                o[:, gi].sub_(sq, alpha=beta)
        c = e
    return out


def encode_step(mu_q: torch.Tensor, mu_p: torch.Tensor, var_q: float, var_p: float, *, seed: int, step: int,
                cfg: RCCConfig, generator: torch.Generator,
                predicted_chunks=None) -> tuple[StepCode, torch.Tensor, StepReport]:
    """Select, per item, a sample of ``N(μ_q, var_q I)`` coded against ``N(μ_p, var_p I)``.

    ``mu_q``, ``mu_p``: ``[B, ...]`` (flattened to ``[B, D]``), on CPU or GPU.
    ``generator``: the encoder's private randomness (arrival times; never needed to decode).
    Returns the code, ``ε [B, D]`` float32 on μ's device (bit-identical to
    :func:`decode_step`; the caller forms ``μ_p + sqrt(var_p)·ε``), and a report.
    """
    t0 = time.perf_counter()
    _check_vars(var_q, var_p)
    if mu_q.shape != mu_p.shape or mu_q.dim() < 2:
        raise ValueError(f"mu_q {tuple(mu_q.shape)} and mu_p {tuple(mu_p.shape)} must be equal [B, ...] shapes")
    device = mu_q.device
    bsz = mu_q.shape[0]
    delta = (mu_q - mu_p).flatten(1).float()
    dim = delta.shape[1]
    m = cfg.num_candidates
    per_dim = _per_dim_kl_bits(delta, var_q, var_p)  # [B, D] float64
    kl = per_dim.sum(1).cpu().numpy()
    nchunks = np.array([num_chunks_for(float(k), dim, cfg) for k in kl], dtype=np.int64)
    if cfg.count_spike > 0 and predicted_chunks is not None:
        nchunks = snap_chunks(nchunks, predicted_chunks, cfg, dim)
    indices: list[np.ndarray] = [np.zeros(0, np.int64)] * bsz
    chunk_kl: list[np.ndarray] = [np.zeros(0)] * bsz
    rng = _selection_rng(generator)
    tgen = None  # numpy arrival times on CPU (torch's exponential_/log are ~5x slower there)
    if device.type != "cpu" or _FORCE_TORCH_SELECTION:
        tgen = torch.Generator(device=device)
        tgen.manual_seed(int(rng.integers(0, 2**62)))

    active = np.nonzero(nchunks > 0)[0]
    if len(active):
        pool = _pool_on(dim, m, str(device))
        u = delta * (math.sqrt(var_p) / var_q)  # log w = ε·u − β‖ε‖² + const
        beta = 0.5 * (var_p / var_q - 1.0)
        layouts = {}
        a_rows = torch.empty(len(active), dim, device=device)
        for j, b in enumerate(active):
            perm, signs, r = _item_layout(seed, step, int(b), dim, m)
            layouts[int(b)] = (perm, r)
            perm_t = torch.tensor(perm, device=device)
            # (u[b, perm_t] is ~1000x slower than index_select on CPU in torch 2.x)
            a_rows[j] = u[b].index_select(0, perm_t) * torch.tensor(signs, device=device)
            bounds = _block_bounds(dim, int(nchunks[b]))
            pk = per_dim[b].index_select(0, perm_t).cpu().numpy()
            cs = np.concatenate([[0.0], np.cumsum(pk)])
            chunk_kl[b] = cs[bounds[1:]] - cs[bounds[:-1]]
        # items with equal C share block structure: score them together
        for c in np.unique(nchunks[active]):
            members = active[nchunks[active] == c]
            bounds = _block_bounds(dim, int(c))
            sqp = _sqnorm_prefix(dim, m, str(device)) if beta != 0.0 else None
            # bound the [blocks, G, M] score tensor to ~2^23 floats
            g_max = max(1, (1 << 23) // (m * min(int(c), 64)))
            if cfg.selection == "trellis":  # and the Viterbi's back pointers [C, G, S] to ~2^28 bytes
                g_max = max(1, min(g_max, (1 << 28) // (int(c) << cfg.state_bits)))
            for g0 in range(0, len(members), g_max):
                grp = members[g0 : g0 + g_max]
                rows = torch.as_tensor(np.searchsorted(active, grp), device=device)
                a = a_rows.index_select(0, rows)
                nb_max = max(1, (1 << 23) // (m * len(grp)))
                sel = np.empty((len(grp), int(c)), np.int64)
                offsets = [layouts[int(b)][1] for b in grp]
                vit = _Viterbi(len(grp), int(c), cfg, device) if cfg.selection == "trellis" else None
                for b0 in range(0, int(c), nb_max):
                    b1 = min(int(c), b0 + nb_max)
                    s = _block_scores(pool, a, bounds, b0, b1, sqp, beta)  # [nb, G, M]
                    if vit is not None:
                        vit.feed(s, offsets)
                        continue
                    for gi in range(len(grp)):
                        sel[gi, b0:b1] = _select(s[:, gi, :].contiguous(), offsets[gi], cfg, rng, tgen)
                if vit is not None:
                    sel = vit.best_paths()
                for gi, b in enumerate(grp):
                    indices[int(b)] = sel[gi]
    code = StepCode(num_chunks=nchunks, indices=indices, dim=dim)
    eps = torch.from_numpy(_epsilon(code, seed, step, cfg)).to(device)

    dnorm = delta.double().norm(dim=1)
    uhat = delta.double() / dnorm.clamp_min(1e-300)[:, None]
    proj = (eps.double() * uhat).sum(1).cpu().numpy()
    # log2 q(z)/p(z) at the realised z = μ_p + sqrt(var_p)·ε (what the step really delivered)
    e64 = eps.double()
    resid = math.sqrt(var_p) * e64 - delta.double()
    log_w = (-0.5 * resid.square().sum(1) / var_q + 0.5 * e64.square().sum(1)
             + 0.5 * dim * math.log(var_p / var_q)) / LN2
    est = np.array([_index_code_bits(indices[b], cfg) for b in range(bsz)])
    report = StepReport(
        kl_bits=kl,
        chunk_kl_bits=chunk_kl,
        est_index_bits=est,
        free_bits=np.where(nchunks == 0, kl, 0.0),
        proj=proj,
        proj_target_mean=(dnorm / math.sqrt(var_p)).cpu().numpy(),
        selected_log_w_bits=log_w.cpu().numpy(),
        encode_seconds=time.perf_counter() - t0,
    )
    return code, eps, report


def decode_step(code: StepCode, *, dim: int, seed: int, step: int, cfg: RCCConfig, device=None) -> torch.Tensor:
    """ε ``[B, D]`` float32 from the code alone (bit-identical to the encoder's)."""
    if dim != code.dim:
        raise ValueError(f"code is for dim {code.dim}, asked for {dim}")
    m = cfg.num_indices
    for b, idx in enumerate(code.indices):
        if len(idx) != int(code.num_chunks[b]) or (len(idx) and (idx.min() < 0 or idx.max() >= m)):
            raise ValueError(f"item {b}: indices inconsistent with C={code.num_chunks[b]} and M={m}")
        if cfg.selection == "trellis" and np.any(np.asarray(idx) >> int(cfg.chunk_bits) != trellis_states(idx, cfg)):
            raise ValueError(f"item {b}: indices are not a path through the trellis")
    return torch.from_numpy(_epsilon(code, seed, step, cfg)).to(device or "cpu")


# ----------------------------------------------------------------------------- entropy models


def _fallback_bucket_weights(log2_candidates: int) -> list[float]:
    """Bucket model for configs without a simulated table: flat over buckets 0..L−1 (the
    simulated tables are within a factor ~2.5 of flat; flat costs ≈0.1 bit/chunk more), and
    2^-8 for bucket L (the single index M−1)."""
    L = int(log2_candidates)
    return [1.0] * L + [2.0**-8]


def _table_key(chunk_bits: float, log2_candidates: int) -> str:
    return f"{float(chunk_bits):g},{int(log2_candidates)}"


def index_bucket_probs(cfg: RCCConfig) -> np.ndarray:
    """P(bucket b), b = floor(log2(n*+1)) ∈ [0, L], float64 (exact copy of the committed
    integer counts, or the fallback shape), the same on both sides."""
    L = int(cfg.log2_candidates)
    tab = _INDEX_TABLES.get(_table_key(cfg.chunk_bits, L))
    w = np.array(tab if tab is not None else _fallback_bucket_weights(L), dtype=np.float64)
    if len(w) != L + 1:
        raise ValueError(f"bucket table for {cfg} has {len(w)} entries, expected {L + 1}")
    return w / w.sum()


def _index_code_bits(idx: np.ndarray, cfg: RCCConfig) -> float:
    """Model code length of one item's indices (bucket −log2 P plus raw offset bits)."""
    if len(idx) == 0:
        return 0.0
    L = int(cfg.log2_candidates)
    if cfg.selection == "mrc":
        return float(L * len(idx))
    if cfg.selection == "trellis":
        return float(int(cfg.chunk_bits) * len(idx))
    b = _bucket(idx)
    p = index_bucket_probs(cfg)
    raw = np.where(b < L, b, 0)
    return float((-np.log2(p[b]) + raw).sum())


def _bucket(idx: np.ndarray) -> np.ndarray:
    """floor(log2(n+1)) for int64 n ≥ 0 (exact, via bit length)."""
    v = np.asarray(idx, dtype=np.int64) + 1
    b = np.zeros(v.shape, np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        b += big * s
        v = np.where(big, v >> s, v)
    return b


_COUNT_FLOOR = 2.0**-10  # mass spread uniformly over [0, D]: caps a misprediction at ~10 + log2(D+1) bits


def _chunk_count_probs(pred: float, dim: int, cfg: RCCConfig) -> np.ndarray:
    """P(C) over [0, D]: two-sided geometric around c0 = round(pred) with mean absolute
    deviation ``chunks_abs_scale + chunks_rel_scale·c0``, mixed with a uniform floor of mass 2^-10.
    With ``count_spike > 0``: mass ``count_spike`` at ``c0`` itself, the geometric (without its
    centre) renormalised to ``1 − count_spike − 2^-10`` (the encoder snaps counts to ``c0``).

    Only IEEE basic arithmetic (no exp/pow), so both sides build identical float inputs; only
    round(pred) matters. ``pred = 0`` makes a free step cost ~0.014 bits.
    """
    c0 = int(min(dim, max(0, math.floor(pred + 0.5))))
    scale = cfg.chunks_abs_scale + cfg.chunks_rel_scale * c0
    rho = scale / (scale + 1.0)  # geometric ratio with mean deviation `scale`
    up = np.cumprod(np.full(dim - c0, rho))  # rho^1..rho^(D-c0), sequential IEEE products
    down = np.cumprod(np.full(c0, rho))
    if cfg.count_spike > 0:
        g = np.concatenate([down[::-1], [0.0], up])
        p = (1.0 - _COUNT_FLOOR - cfg.count_spike) * (g / g.sum()) + _COUNT_FLOOR / (dim + 1)
        p[c0] += cfg.count_spike
        return p
    g = np.concatenate([down[::-1], [1.0], up])
    return (1.0 - _COUNT_FLOOR) * (g / g.sum()) + _COUNT_FLOOR / (dim + 1)


def _coders():
    import constriction

    return constriction


def write_step(encoder, code: StepCode, cfg: RCCConfig, predicted_chunks=None) -> None:
    """Append one step's code to a ``constriction.stream.queue.RangeEncoder``.

    Order: all ``C_b`` (B symbols), then per item its buckets, then its raw offsets.
    ``predicted_chunks``: the caller's prediction of ``C`` (e.g. :func:`expected_chunks` of a
    KL predicted from model statistics; must be identical on both sides), one float or one per
    item, or None. Items are coded in groups of equal ``round(prediction)``, in order.
    """
    cn = _coders()
    model = cn.stream.model
    nc = np.asarray(code.num_chunks, dtype=np.int64)
    if nc.min(initial=0) < 0 or nc.max(initial=0) > code.dim:
        raise ValueError("num_chunks out of range")
    _write_counts(encoder, nc, code.dim, cfg, predicted_chunks)
    L = int(cfg.log2_candidates)
    m = cfg.num_indices
    cat = None
    for b in range(code.batch):
        idx = np.asarray(code.indices[b], dtype=np.int64)
        if len(idx) != nc[b] or (len(idx) and (idx.min() < 0 or idx.max() >= m)):
            raise ValueError(f"item {b}: indices inconsistent with C={nc[b]} and M={m}")
        if len(idx) == 0:
            continue
        if cfg.selection == "mrc":
            _write_raw(encoder, idx, np.full(len(idx), L, np.int64))
            continue
        if cfg.selection == "trellis":
            bb = int(cfg.chunk_bits)
            if np.any(idx >> bb != trellis_states(idx, cfg)):
                raise ValueError(f"item {b}: indices are not a path through the trellis")
            _write_raw(encoder, idx & ((1 << bb) - 1), np.full(len(idx), bb, np.int64))
            continue
        if cat is None:
            cat = model.Categorical(index_bucket_probs(cfg), perfect=False)
        bk = _bucket(idx)
        encoder.encode(bk.astype(np.int32), cat)
        inner = (bk >= 1) & (bk < L)  # bucket 0 is n=0; bucket L is n=M-1 only
        _write_raw(encoder, idx[inner] + 1 - (1 << bk[inner]), bk[inner])


def read_step(decoder, batch: int, dim: int, cfg: RCCConfig, predicted_chunks=None) -> StepCode:
    """Inverse of :func:`write_step`. Raises ValueError on data that cannot be a step code."""
    cn = _coders()
    model = cn.stream.model
    if batch < 0 or dim < 1:
        raise ValueError("bad batch/dim")
    try:
        nc = _read_counts(decoder, batch, dim, cfg, predicted_chunks)
        L = int(cfg.log2_candidates)
        indices = []
        cat = None
        for b in range(batch):
            c = int(nc[b])
            if c == 0:
                indices.append(np.zeros(0, np.int64))
                continue
            if cfg.selection == "mrc":
                indices.append(_read_raw(decoder, np.full(c, L, np.int64)))
                continue
            if cfg.selection == "trellis":
                indices.append(trellis_path(_read_raw(decoder, np.full(c, int(cfg.chunk_bits), np.int64)), cfg))
                continue
            if cat is None:
                cat = model.Categorical(index_bucket_probs(cfg), perfect=False)
            bk = np.asarray(decoder.decode(cat, c), dtype=np.int64)
            if bk.min() < 0 or bk.max() > L:
                raise ValueError("bucket out of range")
            idx = np.where(bk == L, (1 << L) - 1, (1 << bk) - 1).astype(np.int64)
            inner = (bk >= 1) & (bk < L)
            idx[inner] += _read_raw(decoder, bk[inner])
            indices.append(idx)
    except ValueError:
        raise
    except Exception as exc:  # constriction raises its own errors on corrupt streams
        raise ValueError(f"corrupt RCC step code: {exc}") from exc
    return StepCode(num_chunks=nc, indices=indices, dim=dim)


def _write_raw(encoder, values: np.ndarray, nbits: np.ndarray) -> None:
    """values[i] < 2^nbits[i] as raw bits, in pieces of ≤ 16 bits (Uniform models)."""
    cn = _coders()
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


def _read_raw(decoder, nbits: np.ndarray) -> np.ndarray:
    cn = _coders()
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


def _count_groups(pred, batch: int) -> list[tuple[float, np.ndarray]]:
    """Items sharing a prediction, in order of first appearance: [(prediction, item indices)].

    ``pred`` is one float for all items or one per item (the codec's per-tile predictions)."""
    p = np.broadcast_to(np.asarray(pred, dtype=np.float64), (batch,))
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"predicted_chunks must be finite and >= 0, got {pred}")
    c0 = np.floor(p + 0.5)
    groups: dict[float, list[int]] = {}
    for i, c in enumerate(c0):
        groups.setdefault(float(c), []).append(i)
    return [(c, np.array(m, np.int64)) for c, m in groups.items()]


def _write_counts(encoder, nc: np.ndarray, dim: int, cfg: RCCConfig, pred: float | None) -> None:
    cn = _coders()
    if len(nc) == 0:
        return
    if pred is not None:
        for centre, members in _count_groups(pred, len(nc)):
            cat = cn.stream.model.Categorical(_chunk_count_probs(centre, dim, cfg), perfect=False)
            encoder.encode(nc[members].astype(np.int32), cat)
        return
    # Elias-gamma-like default: g = bit length of C (uniform over 0..bitlen(D)), then g-1 bits
    gmax = int(dim).bit_length()
    g = np.array([int(c).bit_length() for c in nc], dtype=np.int64)
    encoder.encode(g.astype(np.int32), cn.stream.model.Categorical(np.ones(gmax + 1), perfect=False))
    big = g >= 2
    _write_raw(encoder, nc[big] - (1 << (g[big] - 1)), g[big] - 1)


def _read_counts(decoder, batch: int, dim: int, cfg: RCCConfig, pred: float | None) -> np.ndarray:
    cn = _coders()
    if batch == 0:
        return np.zeros(0, np.int64)
    if pred is not None:
        nc = np.zeros(batch, np.int64)
        for centre, members in _count_groups(pred, batch):
            cat = cn.stream.model.Categorical(_chunk_count_probs(centre, dim, cfg), perfect=False)
            nc[members] = np.asarray(decoder.decode(cat, len(members)), dtype=np.int64)
    else:
        gmax = int(dim).bit_length()
        g = np.asarray(decoder.decode(cn.stream.model.Categorical(np.ones(gmax + 1), perfect=False), batch),
                       dtype=np.int64)
        nc = np.where(g >= 1, 1 << np.maximum(g - 1, 0), 0).astype(np.int64)
        big = g >= 2
        nc[big] += _read_raw(decoder, g[big] - 1)
    if nc.min() < 0 or nc.max() > dim:
        raise ValueError(f"decoded chunk count out of range [0, {dim}]")
    return nc


# ----------------------------------------------------------------------------- table fitting


def fit_index_tables(configs=None, *, dim: int = 3072, chunks_per_config: int = 6000, seed: int = 0,
                     write: bool = False, total: int = 1 << 16) -> dict[str, list[int]]:
    """Regenerate the committed bucket tables by simulation (run offline; slow).

    For equal variances a chunk's PFR index depends on its KL κ only (the score is 1-D along
    Δ), so each chunk is simulated in 1-D. Steps have KL log-uniform on [3, 3000] bits; chunk
    KLs come from a random equal partition of ``dim`` dims whose per-dim KLs are χ²₁ shares
    (Gaussian Δ). Counts are scaled to sum to ``total`` with every bucket ≥ 1, stored as
    integers so that both sides build the same model. ``write=True`` rewrites the
    ``_INDEX_TABLES`` literal at the end of this file (a format change: update the pinned
    bytes in tests/test_coding_rcc.py on purpose).
    """
    if configs is None:
        configs = [(k, k + a) for k in range(6, 15) for a in (1, 2, 3, 4, 5, 6) if k + a <= 16]
    rng = np.random.default_rng(seed)
    tables = {}
    for k, L in configs:
        kap = _simulate_chunk_kls(float(k), dim, chunks_per_config, rng)
        n = _simulate_pfr_1d(kap, int(L), rng)
        counts = np.bincount(_bucket(n), minlength=int(L) + 1).astype(np.float64)
        counts = counts + 0.5
        scaled = np.maximum(1, np.floor(counts / counts.sum() * total)).astype(np.int64)
        tables[_table_key(k, L)] = [int(v) for v in scaled]
    if write:
        merged = {**_INDEX_TABLES, **tables}
        keys = sorted(merged, key=lambda k: tuple(float(v) for v in k.split(",")))
        lit = "\n".join(f"    {json.dumps(k)}: {json.dumps(merged[k])}," for k in keys)
        src = Path(__file__).read_text()
        head, rest = src.split(_BEGIN_MARK, 1)
        _, tail = rest.split(_END_MARK, 1)
        block = f"{_BEGIN_MARK}\n_INDEX_TABLES: dict[str, list[int]] = {{\n{lit}\n}}\n{_END_MARK}"
        Path(__file__).write_text(head + block + tail)
        _INDEX_TABLES.clear()
        _INDEX_TABLES.update(merged)
    return tables


# (markers built by concatenation so that they occur only once, in the block itself)
_BEGIN_MARK = "# BEGIN " + "INDEX TABLES (generated by fit_index_tables(); do not edit by hand)"
_END_MARK = "# END " + "INDEX TABLES"


def _simulate_chunk_kls(chunk_bits: float, dim: int, n_chunks: int, rng: np.random.Generator,
                        kl_range=(3.0, 3000.0)) -> np.ndarray:
    out = []
    total = 0
    while total < n_chunks:
        kl = math.exp(rng.uniform(math.log(kl_range[0]), math.log(kl_range[1])))
        c = int(min(dim, max(1, math.floor(kl / chunk_bits + 0.5))))
        w = rng.standard_normal(dim) ** 2
        w *= kl / w.sum()
        bounds = _block_bounds(dim, c)
        cs = np.concatenate([[0.0], np.cumsum(w[rng.permutation(dim)])])
        out.append(cs[bounds[1:]] - cs[bounds[:-1]])
        total += c
    return np.concatenate(out)[:n_chunks]


def _simulate_pfr_1d(kappa_bits: np.ndarray, log2_candidates: int, rng: np.random.Generator,
                     batch: int = 256) -> np.ndarray:
    m = 1 << log2_candidates
    out = np.empty(len(kappa_bits), np.int64)
    for s in range(0, len(kappa_bits), batch):
        k = kappa_bits[s : s + batch]
        u = np.sqrt(2.0 * k * LN2).astype(np.float32)[:, None]
        x = rng.standard_normal((len(k), m), dtype=np.float32)
        t = rng.standard_exponential((len(k), m), dtype=np.float32)
        np.cumsum(t, axis=1, out=t)
        np.log(t, out=t)
        t -= u * x
        out[s : s + len(k)] = np.argmin(t, axis=1)
    return out


# BEGIN INDEX TABLES (generated by fit_index_tables(); do not edit by hand)
_INDEX_TABLES: dict[str, list[int]] = {
    "6,7": [11051, 8988, 8497, 8901, 9403, 9239, 9349, 103],
    "6,8": [10024, 7885, 7874, 8256, 7929, 8562, 7372, 7558, 70],
    "6,9": [10220, 7601, 7219, 6957, 7077, 7164, 7099, 6029, 6117, 49],
    "6,10": [9575, 7196, 6585, 6771, 6694, 6553, 6356, 5614, 5418, 4763, 5],
    "6,11": [9149, 7141, 6159, 6825, 6399, 6214, 5952, 5013, 4762, 4261, 3639, 16],
    "6,12": [9050, 7501, 6737, 6704, 5635, 5646, 5242, 4904, 4511, 3977, 2984, 2634, 5],
    "7,8": [8922, 7405, 7329, 7536, 7874, 8409, 8562, 9424, 70],
    "7,9": [8452, 7044, 6411, 7142, 7710, 7088, 7546, 7317, 6782, 38],
    "7,10": [7895, 6553, 5931, 6203, 7044, 6520, 7044, 6411, 6411, 5505, 16],
    "7,11": [7643, 5952, 5657, 6050, 6094, 6607, 6159, 5777, 5875, 5112, 4599, 5],
    "7,12": [7566, 5777, 5700, 5668, 5777, 5646, 6006, 5504, 5199, 4522, 4424, 3736, 5],
    "7,13": [7347, 6409, 5711, 5460, 5384, 5754, 5264, 5318, 4620, 4456, 3507, 3202, 3092, 5],
    "8,9": [6826, 6007, 5811, 6553, 7186, 7568, 8234, 8758, 8561, 27],
    "8,10": [6716, 5745, 5516, 6312, 5996, 6574, 6531, 6858, 7829, 7436, 16],
    "8,11": [6476, 5319, 5526, 5352, 6116, 6061, 6497, 6072, 5941, 6356, 5810, 5],
    "8,12": [6180, 4991, 4937, 5439, 5548, 5635, 6442, 5897, 5624, 5526, 4817, 4489, 5],
    "8,13": [6071, 4740, 4958, 5034, 5514, 5634, 5154, 5558, 5536, 5013, 4838, 3769, 3703, 5],
    "8,14": [6049, 5045, 4892, 4729, 4925, 5165, 5459, 4772, 4914, 4827, 4118, 4096, 3649, 2885, 5],
    "9,10": [5800, 4556, 4828, 5450, 5898, 6793, 7622, 8015, 7808, 8735, 27],
    "9,11": [5646, 4686, 4893, 4959, 5635, 6236, 6356, 6999, 6519, 6770, 6825, 5],
    "9,12": [5340, 4326, 4337, 4358, 5188, 5984, 5668, 5766, 6333, 6453, 5919, 5842, 16],
    "9,13": [5209, 4009, 4325, 4794, 4773, 5264, 5689, 5514, 5602, 5438, 5242, 4827, 4838, 5],
    "9,14": [4881, 4129, 4063, 4150, 4467, 5176, 5176, 5394, 5405, 4783, 4816, 5012, 4249, 3823, 5],
    "9,15": [4957, 4390, 4074, 4357, 4074, 4750, 4892, 4935, 5219, 4630, 4761, 4172, 3605, 3441, 3266, 5],
    "10,11": [4326, 4086, 3922, 4522, 5526, 6334, 6508, 6967, 7316, 7796, 8222, 5],
    "10,12": [4249, 4129, 3911, 4533, 4478, 5362, 6224, 5864, 6421, 6661, 7261, 6431, 5],
    "10,13": [4827, 3965, 3758, 3834, 4554, 4456, 5602, 5602, 5951, 6125, 5558, 5569, 5722, 5],
    "10,14": [4085, 3518, 3561, 4096, 4499, 4739, 4990, 5198, 5427, 5656, 5350, 5536, 4652, 4205, 16],
    "10,15": [4390, 3452, 3528, 3561, 4521, 4477, 4466, 5034, 5055, 4761, 4761, 4761, 4357, 4717, 3681, 5],
    "10,16": [4117, 3212, 3223, 3528, 4302, 4662, 4662, 4455, 4804, 5011, 4531, 4717, 4030, 3801, 3343, 3124, 5],
    "11,12": [4053, 3365, 3540, 3616, 4129, 5482, 5810, 5853, 6912, 7293, 7664, 7806, 5],
    "11,13": [3485, 3136, 3518, 3900, 4020, 4489, 4991, 5733, 6093, 6475, 6671, 6649, 6365, 5],
    "11,14": [3845, 3245, 2929, 3419, 3954, 4478, 4456, 5481, 5438, 5732, 5776, 5569, 6038, 5165, 5],
    "11,15": [3365, 2852, 3136, 3354, 3605, 4237, 4728, 4619, 5295, 5503, 5132, 5143, 5295, 4957, 4303, 5],
    "11,16": [3484, 2612, 2666, 3386, 3637, 3779, 4586, 4553, 4815, 5055, 4859, 4346, 4902, 4466, 4444, 3932, 5],
    "12,13": [2994, 2700, 2787, 3311, 3736, 4456, 4969, 5427, 6529, 6169, 7086, 7282, 8078, 5],
    "12,14": [3474, 2798, 2689, 3070, 3747, 3954, 4499, 4969, 5449, 5481, 6016, 6550, 6343, 6485, 5],
    "12,15": [2983, 2688, 2372, 2950, 3266, 3736, 4685, 4455, 4903, 5764, 5775, 5710, 5568, 5263, 5404, 5],
    "12,16": [2797, 2339, 2786, 2710, 2874, 3441, 3997, 4586, 5044, 4771, 5186, 5339, 4990, 4771, 4891, 5000, 5],
    "13,14": [2547, 2416, 2536, 3114, 3398, 3834, 4325, 5165, 5252, 6310, 6343, 6169, 6965, 7150, 5],
    "13,15": [2699, 2230, 1979, 2623, 2874, 3365, 4128, 4292, 5055, 5295, 5884, 5994, 6473, 6124, 6506, 5],
    "13,16": [2459, 2165, 2317, 2405, 2928, 3146, 3583, 4302, 4771, 4913, 5131, 4782, 5960, 5524, 5415, 5720, 5],
    "14,15": [2350, 1859, 2165, 2699, 3059, 3474, 4085, 3954, 4597, 5208, 5775, 6135, 6408, 6790, 6964, 5],
    "14,16": [2252, 1761, 2088, 2306, 2732, 3190, 3375, 3692, 4608, 5011, 5066, 5720, 5797, 6037, 6058, 5829, 5],
}
# END INDEX TABLES
