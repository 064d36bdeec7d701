"""The encoder's search for one RCC step (only the sender runs this; the decoder never loads it).

Scores ``log q/p`` of every pool row for every block in one pass over the shared candidate pool
(:func:`_block_scores`) and picks the path through the trellis codebook with the largest total by
Viterbi (:class:`Viterbi`: the compiled recursion of :mod:`ddpm_codec.coding.viterbi` on a CPU, a
torch recursion elsewhere). Whatever path it picks decodes exactly, so nothing here needs to be
bit-reproducible across machines. PFR and MRC selection (profiles 1-2) live in :mod:`.legacy`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from .. import viterbi
from ..prng import candidate_pool_t
from .bitstream import index_code_bits
from .layout import (LN2, RCCConfig, StepCode, block_bounds, check_vars, epsilon, item_layout, num_chunks_for,
                     per_dim_kl_bits, reuse_shift)

Kernel = Literal["auto", "torch"]   # "torch": the torch code paths on a CPU too (tests, benchmarks)


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


def snap_chunks(nchunks: np.ndarray, predicted_chunks, cfg: RCCConfig, dim: int) -> np.ndarray:
    """The encoder's counts moved to the decoder's centre ``c0 = round(prediction)`` when close.

    Under a count model with mass ``count_spike`` at ``c0`` (see :func:`.bitstream.chunk_count_probs`) a
    count equal to ``c0`` costs ``-log2(count_spike)`` bits (0.32 at 0.8) instead of ~2.5, so the
    encoder sends ``c0`` whenever ``nc ≥ 1``, ``c0 ≥ 1`` and ``c0`` lies within
    ``[nc − max(snap_abs, snap_down·nc), nc + max(snap_abs, snap_up·nc)]``: a few per cent more
    path bits cost little (the rate optimum is flat above ~105 %), fewer cost more (100 % was
    0.03 bits/dim worse than 105 %), hence the asymmetric window. A free step (``nc = 0``: KL below
    ``min_step_bits``) is sent with ``c0`` segments when ``1 <= c0 <= snap_free``: ``c0·b`` path bits
    and 0.32 count bits instead of the ~3.7 bits that coding 0 costs where the decoder predicted 1, and a
    sample of q instead of a draw from p. Encoder policy only; the decoder reads whatever count was sent.
    """
    nc = np.asarray(nchunks, dtype=np.int64)
    c0 = np.floor(np.broadcast_to(np.asarray(predicted_chunks, dtype=np.float64), nc.shape) + 0.5).astype(np.int64)
    d = c0 - nc
    up = np.maximum(cfg.snap_abs, cfg.snap_up * nc)
    down = np.maximum(cfg.snap_abs, cfg.snap_down * nc)
    near = (nc > 0) & (c0 > 0) & (c0 <= dim) & (d <= up) & (-d <= down)
    near |= (nc == 0) & (c0 >= 1) & (c0 <= min(cfg.snap_free, dim))
    return np.where(near, c0, nc)


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


def prepare(dim: int, cfg: RCCConfig, device: str = "cpu") -> None:
    """Build what every encoder step of ``dim``-dim items shares (the candidate pool and its squared-norm
    prefix), once: before several threads would each start building it."""
    _pool_on(dim, cfg.num_candidates, str(device))
    _sqnorm_prefix(dim, cfg.num_candidates, str(device))


def selection_rng(generator: torch.Generator) -> np.random.Generator:
    """The encoder's private numpy generator for one step, seeded from ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return np.random.default_rng(seed)


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


class Viterbi:
    """Exact best path through the trellis codebook for ``G`` items with ``C`` segments each.

    Branch ``y`` from state ``σ`` is candidate ``n = σ·B + y`` (``B = 2^b``) and leads to state
    ``(σ·B + y) mod S``; paths start in state 0. Fed the segments' scores in order (pool-row
    order, ``[nb, G, M]``), it keeps the best score per state and a back pointer per (segment,
    state); :meth:`best_paths` traces the best final state back to candidate indices. Scores
    accumulate in float32: only the encoder searches, and whichever path it picks decodes exactly.
    """

    def __init__(self, g: int, c: int, cfg: RCCConfig, device, kernel: Kernel = "auto"):
        self.S = 1 << cfg.state_bits
        self.K = 1 << int(cfg.reuse_bits)   # groups of S/K states, each on the pool rotated by its own shift
        self.B = 1 << int(cfg.chunk_bits)
        self.H = max(1, self.S // self.B)
        self.c = c
        self.j = 0
        self.threads = cfg.search_threads
        # CPU: one compiled pass per segment (coding.viterbi); GPU, one-state trellises or no numba: torch
        self.compiled = (viterbi.HAVE_KERNEL and torch.device(device).type == "cpu" and self.S > 1
                         and self.B <= 128 and kernel != "torch")
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
        S, B = self.S, self.B
        rs = [int(r) for r in offsets]
        if self.compiled:
            m = s.shape[2]
            shifts = np.array([reuse_shift(j, m) for j in range(self.j, self.j + s.shape[0])], dtype=np.int64)
            viterbi.feed_kernel(s.contiguous().numpy(), np.array(rs, dtype=np.int64), shifts, self.score,
                                self.back, self.j, B, threads=self.threads)
            self.j += s.shape[0]
            return
        for k in range(s.shape[0]):
            # candidate n sits on pool row (n + r) mod M: rotate each item's rows into candidate order
            # (per segment: rotating the whole [nb, G, M] block at once costs more than the search)
            if self.K > 1:  # group h of S/K states reads the pool rotated by r + h·shift_j
                m = s.shape[2]
                sh = reuse_shift(self.j, m)
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
                predicted_chunks=None, kernel: Kernel = "auto") -> tuple[StepCode, torch.Tensor, StepReport]:
    """Select, per item, a sample of ``N(μ_q, var_q I)`` coded against ``N(μ_p, var_p I)``.

    ``mu_q``, ``mu_p``: ``[B, ...]`` (flattened to ``[B, D]``), on CPU or GPU.
    ``generator``: the encoder's private randomness (arrival times; never needed to decode).
    ``kernel="torch"``: the torch selection and Viterbi code paths (those a GPU runs) on a CPU too.
    Returns the code, ``ε [B, D]`` float32 on μ's device (bit-identical to
    :func:`decode_step`; the caller forms ``μ_p + sqrt(var_p)·ε``), and a report.
    """
    t0 = time.perf_counter()
    check_vars(var_q, var_p)
    if mu_q.shape != mu_p.shape or mu_q.dim() < 2:
        raise ValueError(f"mu_q {tuple(mu_q.shape)} and mu_p {tuple(mu_p.shape)} must be equal [B, ...] shapes")
    device = mu_q.device
    bsz = mu_q.shape[0]
    delta = (mu_q - mu_p).flatten(1).float()
    dim = delta.shape[1]
    m = cfg.num_candidates
    per_dim = per_dim_kl_bits(delta, var_q, var_p)  # [B, D] float64
    kl = per_dim.sum(1).cpu().numpy()
    nchunks = np.array([num_chunks_for(float(k), dim, cfg) for k in kl], dtype=np.int64)
    if cfg.count_spike > 0 and predicted_chunks is not None:
        nchunks = snap_chunks(nchunks, predicted_chunks, cfg, dim)
    indices: list[np.ndarray] = [np.zeros(0, np.int64)] * bsz
    chunk_kl: list[np.ndarray] = [np.zeros(0)] * bsz
    rng = selection_rng(generator)
    tgen = None  # numpy arrival times on CPU (torch's exponential_/log are ~5x slower there)
    if device.type != "cpu" or kernel == "torch":
        tgen = torch.Generator(device=device)
        tgen.manual_seed(int(rng.integers(0, 2**62)))

    if cfg.selection != "trellis":
        from . import legacy
    active = np.nonzero(nchunks > 0)[0]
    if len(active):
        pool = _pool_on(dim, m, str(device))
        u = delta * (math.sqrt(var_p) / var_q)  # log w = ε·u − β‖ε‖² + const
        beta = 0.5 * (var_p / var_q - 1.0)
        layouts = {}
        a_rows = torch.empty(len(active), dim, device=device)
        for j, b in enumerate(active):
            perm, signs, r = item_layout(seed, step, int(b), dim, m)
            layouts[int(b)] = (perm, r)
            perm_t = torch.tensor(perm, device=device)
            # (u[b, perm_t] is ~1000x slower than index_select on CPU in torch 2.x)
            a_rows[j] = u[b].index_select(0, perm_t) * torch.tensor(signs, device=device)
            bounds = block_bounds(dim, int(nchunks[b]))
            pk = per_dim[b].index_select(0, perm_t).cpu().numpy()
            cs = np.concatenate([[0.0], np.cumsum(pk)])
            chunk_kl[b] = cs[bounds[1:]] - cs[bounds[:-1]]
        # items with equal C share block structure: score them together
        for c in np.unique(nchunks[active]):
            members = active[nchunks[active] == c]
            bounds = block_bounds(dim, int(c))
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
                vit = Viterbi(len(grp), int(c), cfg, device, kernel) if cfg.selection == "trellis" else None
                for b0 in range(0, int(c), nb_max):
                    b1 = min(int(c), b0 + nb_max)
                    s = _block_scores(pool, a, bounds, b0, b1, sqp, beta)  # [nb, G, M]
                    if vit is not None:
                        vit.feed(s, offsets)
                        continue
                    for gi in range(len(grp)):
                        sel[gi, b0:b1] = legacy.select(s[:, gi, :].contiguous(), offsets[gi], cfg, rng, tgen)
                if vit is not None:
                    sel = vit.best_paths()
                for gi, b in enumerate(grp):
                    indices[int(b)] = sel[gi]
    code = StepCode(num_chunks=nchunks, indices=indices, dim=dim)
    eps = torch.from_numpy(epsilon(code, seed, step, cfg)).to(device)

    dnorm = delta.double().norm(dim=1)
    uhat = delta.double() / dnorm.clamp_min(1e-300)[:, None]
    proj = (eps.double() * uhat).sum(1).cpu().numpy()
    # log2 q(z)/p(z) at the realised z = μ_p + sqrt(var_p)·ε (what the step really delivered)
    e64 = eps.double()
    resid = math.sqrt(var_p) * e64 - delta.double()
    log_w = (-0.5 * resid.square().sum(1) / var_q + 0.5 * e64.square().sum(1)
             + 0.5 * dim * math.log(var_p / var_q)) / LN2
    est = np.array([index_code_bits(indices[b], cfg) for b in range(bsz)])
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
