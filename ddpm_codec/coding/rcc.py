"""Reverse channel coding of one Gaussian coding step (Ho et al. 2020, Sec. 4.3, Algs. 3–4).

Transmits a sample of ``q = N(μ_q, var_q·I)`` to a decoder that knows only
``p = N(μ_p, var_p·I)``, for ``B`` independent items of ``D`` dims. Knows nothing of
diffusion: the caller computes ``x = μ_p + sqrt(var_p)·ε`` from the returned ``ε`` (which
is bit-identical on both sides).

Per item and step (all shared randomness from :mod:`ddpm_codec.coding.prng`):

1. ``KL(q‖p)`` in bits (closed form). Below ``cfg.min_step_bits`` the step is *free*:
   ``C = 0``, nothing is sent, both sides use ``ε = normals_at(derive_key(seed, step, item,
   "free"), arange(D))`` (a draw from ``p``; the report counts the mismatch).
2. Otherwise ``C = min(D, ceil(KL / chunk_bits))`` chunks: the pool columns ``0..D-1`` are
   cut into ``C`` near-equal contiguous blocks; pool column ``k`` carries image dim
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
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

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
]

LN2 = math.log(2.0)
Selection = Literal["pfr", "mrc"]
_TABLE_PATH = Path(__file__).with_name("rcc_index_tables.json")
_MAX_LOG2_CANDIDATES = 20  # 2^20 × D pool floats is already far beyond any CPU budget


@dataclass(frozen=True)
class RCCConfig:
    """Reverse-channel-coding parameters (the decoder must use the same values).

    chunk_bits: target KL per chunk, bits (``C = ceil(KL / chunk_bits)``).
    log2_candidates: ``M = 2^log2_candidates`` candidates per chunk (the pool's rows).
    min_step_bits: steps with KL below this are free (``C = 0``, no bits, ε drawn from p).
    selection: ``"pfr"`` (Poisson functional representation) or ``"mrc"`` (minimal random
        coding with importance weights; index sent flat, for comparison only).
    chunks_rel_scale: scale of the two-sided geometric model of ``C`` around
        ``predicted_chunks``, relative to the prediction (plus 0.1 absolute).
    """

    chunk_bits: float = 8.0
    log2_candidates: int = 12
    min_step_bits: float = 1.0
    selection: Selection = "pfr"
    chunks_rel_scale: float = 0.25

    def __post_init__(self):
        if not (self.chunk_bits > 0 and math.isfinite(self.chunk_bits)):
            raise ValueError(f"chunk_bits must be positive, got {self.chunk_bits}")
        if not (1 <= int(self.log2_candidates) <= _MAX_LOG2_CANDIDATES):
            raise ValueError(f"log2_candidates must be in [1, {_MAX_LOG2_CANDIDATES}], got {self.log2_candidates}")
        if not (self.min_step_bits >= 0 and math.isfinite(self.min_step_bits)):
            raise ValueError(f"min_step_bits must be >= 0, got {self.min_step_bits}")
        if self.selection not in ("pfr", "mrc"):
            raise ValueError(f"unknown selection mode {self.selection!r} (expected 'pfr' or 'mrc')")
        if not (self.chunks_rel_scale >= 0 and math.isfinite(self.chunks_rel_scale)):
            raise ValueError(f"chunks_rel_scale must be >= 0, got {self.chunks_rel_scale}")

    @property
    def num_candidates(self) -> int:
        return 1 << int(self.log2_candidates)


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
    """The encoder's rule: 0 if KL < min_step_bits, else min(D, max(1, ceil(KL/chunk_bits)))."""
    if not math.isfinite(kl):
        raise ValueError(f"non-finite KL {kl}")
    if kl < cfg.min_step_bits:
        return 0
    return int(min(dim, max(1, math.ceil(kl / cfg.chunk_bits))))


def expected_chunks(expected_kl_bits: float, dim: int, cfg: RCCConfig) -> float:
    """A ``predicted_chunks`` for :func:`write_step` from a predicted step KL (bits)."""
    if expected_kl_bits < cfg.min_step_bits:
        return 0.0
    return float(min(dim, max(1.0, expected_kl_bits / cfg.chunk_bits + 0.5)))


# ----------------------------------------------------------------------------- shared layout


def _block_bounds(dim: int, c: int) -> np.ndarray:
    """Start offsets of ``c`` near-equal contiguous blocks of ``dim`` columns, plus ``dim``.

    The first ``dim % c`` blocks have ``dim // c + 1`` columns, the rest ``dim // c``.
    """
    q, r = divmod(dim, c)
    sizes = np.full(c, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _item_layout(seed: int, step: int, item: int, dim: int, m: int):
    """Permutation (pool column k -> image dim perm[k]), signs s_k, row offset r."""
    ar = np.arange(dim, dtype=np.uint64)
    perm = np.argsort(hash64(derive_key(seed, step, item, "perm"), ar), kind="stable")
    sign_bits = hash64(derive_key(seed, step, item, "sign"), ar) >> np.uint64(63)
    signs = (1.0 - 2.0 * sign_bits.astype(np.float32)).astype(np.float32)
    r = derive_key(seed, step, item, "offset") % m
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
    rows_per_col = np.repeat((np.asarray(idx, dtype=np.int64) + r) % m, np.diff(bounds))
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


def _selection_rng(generator: torch.Generator) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return np.random.default_rng(seed)


def _select(scores: torch.Tensor, r: int, cfg: RCCConfig, rng: np.random.Generator,
            tgen: torch.Generator | None) -> np.ndarray:
    """argmin_n [log T_n − s_{(n + r) mod M}] per row of ``scores`` ``[C, M]`` (pool-row order).

    PFR: T = cumsum of Exp(1) (Poisson arrivals). MRC: T = Exp(1) (Gumbel-max, n ~ w_n).
    Returns candidate indices n* (not pool rows), int64 ``[C]``.
    """
    c, m = scores.shape
    if scores.device.type == "cpu":
        s = scores.numpy()
        e = rng.standard_exponential((c, m), dtype=np.float32)
        if cfg.selection == "pfr":
            torch.from_numpy(e).cumsum_(1)
        np.log(e, out=e)
    else:
        e_t = torch.empty((c, m), device=scores.device).exponential_(generator=tgen)
        if cfg.selection == "pfr":
            e_t = e_t.cumsum_(1)
        e = e_t.log_()
        s = scores
    # candidate n sits on pool row (n + r) mod M: compare T_n with s[(n + r) mod M]
    first = e[:, : m - r] - s[:, r:]
    if r:
        second = e[:, m - r :] - s[:, :r]
        if scores.device.type == "cpu":
            i1 = first.argmin(1)
            i2 = second.argmin(1)
            v1 = np.take_along_axis(first, i1[:, None], 1)[:, 0]
            v2 = np.take_along_axis(second, i2[:, None], 1)[:, 0]
            return np.where(v2 < v1, i2 + (m - r), i1).astype(np.int64)
        i1 = first.argmin(1)
        i2 = second.argmin(1)
        v1 = first.gather(1, i1[:, None])[:, 0]
        v2 = second.gather(1, i2[:, None])[:, 0]
        return torch.where(v2 < v1, i2 + (m - r), i1).cpu().numpy().astype(np.int64)
    if scores.device.type == "cpu":
        return first.argmin(1).astype(np.int64)
    return first.argmin(1).cpu().numpy().astype(np.int64)


def _block_scores(pool: torch.Tensor, a: torch.Tensor, bounds: np.ndarray, b0: int, b1: int) -> torch.Tensor:
    """Σ_{k in block} P[n, k]·a[g, k] for blocks ``b0..b1-1``: ``[G, D] -> [b1-b0, G, M]``.

    Blocks come in two runs of equal size, each one batched matmul over a contiguous view of
    the column-major pool (no copy of the pool, one pass over its rows).
    """
    g = a.shape[0]
    m = pool.shape[1]
    sizes = np.diff(bounds)
    out = []
    c = b0
    while c < b1:
        size = int(sizes[c])
        e = c
        while e < b1 and sizes[e] == size:
            e += 1
        lo, hi = int(bounds[c]), int(bounds[e])
        pv = pool[lo:hi].view(e - c, size, m)
        av = a[:, lo:hi].reshape(g, e - c, size).transpose(0, 1)  # [nb, G, size]
        out.append(torch.bmm(av, pv))
        c = e
    return out[0] if len(out) == 1 else torch.cat(out)


def encode_step(mu_q: torch.Tensor, mu_p: torch.Tensor, var_q: float, var_p: float, *, seed: int, step: int,
                cfg: RCCConfig, generator: torch.Generator) -> tuple[StepCode, torch.Tensor, StepReport]:
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
    indices: list[np.ndarray] = [np.zeros(0, np.int64)] * bsz
    chunk_kl: list[np.ndarray] = [np.zeros(0)] * bsz
    rng = _selection_rng(generator)
    tgen = None
    if device.type != "cpu":
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
            perm_t = torch.from_numpy(perm).to(device)
            a_rows[j] = u[b, perm_t] * torch.from_numpy(signs).to(device)
            bounds = _block_bounds(dim, int(nchunks[b]))
            pk = per_dim[b, perm_t].cpu().numpy()
            cs = np.concatenate([[0.0], np.cumsum(pk)])
            chunk_kl[b] = cs[bounds[1:]] - cs[bounds[:-1]]
        # items with equal C share block structure: score them together
        for c in np.unique(nchunks[active]):
            members = active[nchunks[active] == c]
            bounds = _block_bounds(dim, int(c))
            sq = None
            if beta != 0.0:
                sqp = _sqnorm_prefix(dim, m, str(device))
            # bound the [blocks, G, M] score tensor to ~2^23 floats
            g_max = max(1, (1 << 23) // (m * min(int(c), 64)))
            for g0 in range(0, len(members), g_max):
                grp = members[g0 : g0 + g_max]
                rows = torch.as_tensor(np.searchsorted(active, grp), device=device)
                a = a_rows[rows]
                nb_max = max(1, (1 << 23) // (m * len(grp)))
                sel = np.empty((len(grp), int(c)), np.int64)
                for b0 in range(0, int(c), nb_max):
                    b1 = min(int(c), b0 + nb_max)
                    s = _block_scores(pool, a, bounds, b0, b1)  # [nb, G, M]
                    if beta != 0.0:
                        lo = torch.as_tensor(bounds[b0:b1], device=device)
                        hi = torch.as_tensor(bounds[b0 + 1 : b1 + 1], device=device)
                        sq = sqp[hi] - sqp[lo]  # [nb, M]
                        s = s - beta * sq[:, None, :]
                    for gi, b in enumerate(grp):
                        sel[gi, b0:b1] = _select(s[:, gi, :].contiguous(), layouts[int(b)][1], cfg, rng, tgen)
                for gi, b in enumerate(grp):
                    indices[int(b)] = sel[gi]
    code = StepCode(num_chunks=nchunks, indices=indices, dim=dim)
    eps = torch.from_numpy(_epsilon(code, seed, step, cfg)).to(device)

    dnorm = delta.double().norm(dim=1)
    uhat = delta.double() / dnorm.clamp_min(1e-300)[:, None]
    proj = (eps.double() * uhat).sum(1).cpu().numpy()
    est = np.array([_index_code_bits(indices[b], cfg) for b in range(bsz)])
    report = StepReport(
        kl_bits=kl,
        chunk_kl_bits=chunk_kl,
        est_index_bits=est,
        free_bits=np.where(nchunks == 0, kl, 0.0),
        proj=proj,
        proj_target_mean=(dnorm / math.sqrt(var_p)).cpu().numpy(),
        encode_seconds=time.perf_counter() - t0,
    )
    return code, eps, report


def decode_step(code: StepCode, *, dim: int, seed: int, step: int, cfg: RCCConfig, device=None) -> torch.Tensor:
    """ε ``[B, D]`` float32 from the code alone (bit-identical to the encoder's)."""
    if dim != code.dim:
        raise ValueError(f"code is for dim {code.dim}, asked for {dim}")
    m = cfg.num_candidates
    for b, idx in enumerate(code.indices):
        if len(idx) != int(code.num_chunks[b]) or (len(idx) and (idx.min() < 0 or idx.max() >= m)):
            raise ValueError(f"item {b}: indices inconsistent with C={code.num_chunks[b]} and M={m}")
    return torch.from_numpy(_epsilon(code, seed, step, cfg)).to(device or "cpu")


# ----------------------------------------------------------------------------- entropy models


def _fallback_bucket_weights(chunk_bits: float, log2_candidates: int) -> list[float]:
    """Shape of the PFR bucket distribution when no simulated table exists (basic arithmetic
    only, so identical on every platform): flat to ~chunk_bits−3, geometric tails."""
    L = int(log2_candidates)
    peak = min(float(L), max(0.0, chunk_bits - 3.0))
    w = []
    for b in range(L + 1):
        dist = peak - b if b < peak else (b - peak) * 0.5
        wt = 1.0
        for _ in range(int(dist)):
            wt *= 0.6
        w.append(wt)
    return w


@lru_cache(maxsize=1)
def _load_tables() -> dict:
    if _TABLE_PATH.exists():
        with open(_TABLE_PATH) as f:
            return json.load(f)
    return {"tables": {}}


def _table_key(chunk_bits: float, log2_candidates: int) -> str:
    return f"{float(chunk_bits):g},{int(log2_candidates)}"


def index_bucket_probs(cfg: RCCConfig) -> np.ndarray:
    """P(bucket b), b = floor(log2(n*+1)) ∈ [0, L], float64 (exact copy of the committed
    integer counts, or the fallback shape), the same on both sides."""
    L = int(cfg.log2_candidates)
    tab = _load_tables()["tables"].get(_table_key(cfg.chunk_bits, L))
    w = np.array(tab, dtype=np.float64) if tab is not None else np.array(_fallback_bucket_weights(cfg.chunk_bits, L))
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


def _chunk_count_probs(pred: float, dim: int, cfg: RCCConfig) -> np.ndarray:
    """Two-sided geometric over C ∈ [0, D] around round(pred); basic arithmetic only."""
    c0 = int(min(dim, max(0, math.floor(pred + 0.5))))
    scale = 0.1 + cfg.chunks_rel_scale * c0
    rho = scale / (scale + 1.0)
    n_up = dim - c0
    up = np.cumprod(np.full(n_up, rho))  # rho^1..rho^(D-c0), sequential IEEE products
    down = np.cumprod(np.full(c0, rho))
    p = np.concatenate([down[::-1], [1.0], up])
    return np.maximum(p, 1e-300)


def _coders():
    import constriction

    return constriction


def write_step(encoder, code: StepCode, cfg: RCCConfig, predicted_chunks: float | None = None) -> None:
    """Append one step's code to a ``constriction.stream.queue.RangeEncoder``.

    Order: all ``C_b`` (B symbols), then per item its buckets, then its raw offsets.
    ``predicted_chunks``: the caller's prediction of ``C`` (e.g. :func:`expected_chunks` of a
    KL predicted from model statistics; must be identical on both sides), or None.
    """
    cn = _coders()
    model = cn.stream.model
    nc = np.asarray(code.num_chunks, dtype=np.int64)
    if nc.min(initial=0) < 0 or nc.max(initial=0) > code.dim:
        raise ValueError("num_chunks out of range")
    _write_counts(encoder, nc, code.dim, cfg, predicted_chunks)
    L = int(cfg.log2_candidates)
    m = cfg.num_candidates
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
        if cat is None:
            cat = model.Categorical(index_bucket_probs(cfg), perfect=False)
        bk = _bucket(idx)
        encoder.encode(bk.astype(np.int32), cat)
        inner = (bk >= 1) & (bk < L)  # bucket 0 is n=0; bucket L is n=M-1 only
        _write_raw(encoder, idx[inner] + 1 - (1 << bk[inner]), bk[inner])


def read_step(decoder, batch: int, dim: int, cfg: RCCConfig, predicted_chunks: float | None = None) -> StepCode:
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


def _write_counts(encoder, nc: np.ndarray, dim: int, cfg: RCCConfig, pred: float | None) -> None:
    cn = _coders()
    if len(nc) == 0:
        return
    if pred is not None:
        if not math.isfinite(pred) or pred < 0:
            raise ValueError(f"predicted_chunks must be finite and >= 0, got {pred}")
        cat = cn.stream.model.Categorical(_chunk_count_probs(pred, dim, cfg), perfect=False)
        encoder.encode(nc.astype(np.int32), cat)
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
        if not math.isfinite(pred) or pred < 0:
            raise ValueError(f"predicted_chunks must be finite and >= 0, got {pred}")
        cat = cn.stream.model.Categorical(_chunk_count_probs(pred, dim, cfg), perfect=False)
        nc = np.asarray(decoder.decode(cat, batch), dtype=np.int64)
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
                     path: Path | None = _TABLE_PATH, total: int = 1 << 16) -> dict:
    """Regenerate the committed bucket tables by simulation (run offline; slow).

    For equal variances a chunk's PFR index depends on its KL κ only (the score is 1-D along
    Δ), so each chunk is simulated in 1-D. Steps have KL log-uniform on [min_step_bits..,
    3000] bits; chunk KLs come from a random equal partition of ``dim`` dims whose per-dim
    KLs are χ²₁ shares (Gaussian Δ). Counts are scaled to sum to ``total`` with every bucket
    ≥ 1, stored as integers so that both sides build the same model.
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
    out = {"doc": "PFR index bucket counts, key 'chunk_bits,log2_candidates'; regenerate with "
                  "ddpm_codec.coding.rcc.fit_index_tables()", "tables": tables}
    if path is not None:
        merged = _load_tables() if Path(path).exists() else {"tables": {}}
        merged = {"doc": out["doc"], "tables": {**merged.get("tables", {}), **tables}}
        with open(path, "w") as f:
            json.dump(merged, f, indent=0, sort_keys=True)
        _load_tables.cache_clear()
    return out


def _simulate_chunk_kls(chunk_bits: float, dim: int, n_chunks: int, rng: np.random.Generator,
                        kl_range=(1.0, 3000.0)) -> np.ndarray:
    out = []
    total = 0
    while total < n_chunks:
        kl = math.exp(rng.uniform(math.log(kl_range[0]), math.log(kl_range[1])))
        c = int(min(dim, max(1, math.ceil(kl / chunk_bits))))
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
