"""What an RCC step code means — the part both sides share (see :mod:`ddpm_codec.coding.rcc`).

The configuration, the code itself, the closed forms both sides evaluate, and the layout that
turns chunk indices into ``ε``: permutation, signs and row offset per item, the blocks of a step,
the trellis's states and the pool rows that ``reuse_bits`` rotates. Changing anything here changes
what existing files mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:   # torch is imported where a function needs it: reading headers must not load it
    import torch

from ...arithmetic import FLOAT, Arithmetic
from ..prng import POOL_KEY, derive_key, hash64, normals_at

LN2 = math.log(2.0)
Selection = Literal["pfr", "mrc", "trellis"]
MAX_LOG2_CANDIDATES = 20  # 2^20 × D pool floats is already far beyond any CPU budget


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
        ``snap_abs`` (segments) of :func:`snap_chunks`, and a free step (``C = 0``) to ``c0`` when
        ``c0 <= snap_free``; those four are encoder policy, not format.
    unit_zero, unit_spike: with ``unit_zero > 0`` (count model 2), where ``c0 = 1`` the model puts mass
        ``unit_zero`` on ``C = 0`` and ``unit_spike`` on ``C = 1`` instead of ``count_spike`` on ``C = 1``:
        steps predicted to need one segment are free about as often as not, so a free one costs ~1 bit
        there instead of ~3.7.
    arithmetic: the file's :class:`~ddpm_codec.arithmetic.Arithmetic`; the count model's normalising
        sums are its :meth:`~ddpm_codec.arithmetic.Arithmetic.sum` (exact: correctly rounded, the same
        on any machine and numpy; float: numpy's pairwise ``sum``).
    search_threads: threads of the trellis search (encoder policy, not format: any path decodes).

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
    snap_free: int = 0
    unit_zero: float = 0.0
    unit_spike: float = 0.0
    reuse_bits: int = 0
    arithmetic: Arithmetic = FLOAT
    search_threads: int = 1

    def __post_init__(self):
        if not (self.chunk_bits > 0 and math.isfinite(self.chunk_bits)):
            raise ValueError(f"chunk_bits must be positive, got {self.chunk_bits}")
        if not (1 <= int(self.log2_candidates) <= MAX_LOG2_CANDIDATES):
            raise ValueError(f"log2_candidates must be in [1, {MAX_LOG2_CANDIDATES}], got {self.log2_candidates}")
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
        if not (0.0 <= self.unit_zero and 0.0 <= self.unit_spike and self.unit_zero + self.unit_spike < 0.999):
            raise ValueError(f"unit_zero and unit_spike must be >= 0 with a sum below 0.999, got "
                             f"{self.unit_zero}, {self.unit_spike}")
        if not (isinstance(self.search_threads, int) and self.search_threads >= 1):
            raise ValueError(f"search_threads must be an integer >= 1, got {self.search_threads!r}")
        if not (isinstance(self.snap_free, int) and self.snap_free >= 0):
            raise ValueError(f"snap_free must be an integer >= 0, got {self.snap_free!r}")
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


def reuse_shift(j: int, m: int) -> int:
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



# ----------------------------------------------------------------------------- closed forms


def kl_bits(mu_q: torch.Tensor, mu_p: torch.Tensor, var_q: float, var_p: float) -> torch.Tensor:
    """KL(N(μ_q, var_q I) ‖ N(μ_p, var_p I)) per item, in bits, float64: ``[B, ...] -> [B]``.

    ½ Σ_i [var_q/var_p − 1 − ln(var_q/var_p) + (μ_q,i − μ_p,i)²/var_p] / ln 2.
    """
    check_vars(var_q, var_p)
    d = (mu_q.double() - mu_p.double()).flatten(1)
    ratio = var_q / var_p
    const = 0.5 * (ratio - 1.0 - math.log(ratio)) * d.shape[1]
    return (0.5 * d.square().sum(1) / var_p + const) / LN2


def per_dim_kl_bits(delta: torch.Tensor, var_q: float, var_p: float) -> torch.Tensor:
    ratio = var_q / var_p
    return (0.5 * (ratio - 1.0 - math.log(ratio)) + 0.5 * delta.double().square() / var_p) / LN2


def check_vars(var_q: float, var_p: float) -> None:
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



def expected_chunks(expected_kl_bits: float, dim: int, cfg: RCCConfig) -> float:
    """A ``predicted_chunks`` for :func:`write_step` from a predicted step KL (bits)."""
    if expected_kl_bits < cfg.min_step_bits:
        return 0.0
    return float(min(dim, max(1.0, cfg.rate_factor * expected_kl_bits / cfg.chunk_bits)))


# ----------------------------------------------------------------------------- shared layout


def block_bounds(dim: int, c: int) -> np.ndarray:
    """Start offsets of ``c`` near-equal contiguous blocks of ``dim`` columns, plus ``dim``.

    The first ``dim % c`` blocks have ``dim // c + 1`` columns, the rest ``dim // c``.
    """
    q, r = divmod(dim, c)
    sizes = np.full(c, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


@lru_cache(maxsize=256)
def item_layout(seed: int, step: int, item: int, dim: int, m: int):
    """Permutation (pool column k -> image dim perm[k]), signs s_k, row offset r (read-only)."""
    ar = np.arange(dim, dtype=np.uint64)
    perm = np.argsort(hash64(derive_key(seed, step, item, "perm"), ar), kind="stable")
    sign_bits = hash64(derive_key(seed, step, item, "sign"), ar) >> np.uint64(63)
    signs = (1.0 - 2.0 * sign_bits.astype(np.float32)).astype(np.float32)
    r = derive_key(seed, step, item, "offset") % m
    perm.setflags(write=False)
    signs.setflags(write=False)
    return perm, signs, r


def free_epsilon(seed: int, step: int, item: int, dim: int) -> np.ndarray:
    return normals_at(derive_key(seed, step, item, "free"), np.arange(dim, dtype=np.uint64))


def item_epsilon(seed: int, step: int, item: int, dim: int, m: int, idx: np.ndarray) -> np.ndarray:
    """ε of one item from its chunk indices (decoder side; the encoder calls it too)."""
    c = len(idx)
    if c == 0:
        return free_epsilon(seed, step, item, dim)
    perm, signs, r = item_layout(seed, step, item, dim, m)
    bounds = block_bounds(dim, c)
    idx = np.asarray(idx, dtype=np.int64)
    hi = idx // m
    if np.any(hi):
        shifts = np.array([reuse_shift(j, m) for j in range(c)], dtype=np.int64)
        rows = (idx % m + r + hi * shifts) % m
    else:
        rows = (idx + r) % m
    rows_per_col = np.repeat(rows, np.diff(bounds))
    counters = rows_per_col.astype(np.uint64) * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
    vals = normals_at(POOL_KEY, counters) * signs  # sign flip: exact
    eps = np.empty(dim, dtype=np.float32)
    eps[perm] = vals
    return eps


def epsilon(code: StepCode, seed: int, step: int, cfg: RCCConfig) -> np.ndarray:
    m = cfg.num_candidates
    return np.stack([item_epsilon(seed, step, b, code.dim, m, code.indices[b]) for b in range(code.batch)])


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
    S = 1 << cfg.state_bits
    idx = np.asarray(indices, dtype=np.int64)
    states = np.zeros(len(idx), np.int64)
    sig = 0
    for j, n in enumerate(idx):
        states[j] = sig
        sig = int(n) % S  # (σ·B + y) mod S
    return states


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
    import torch

    return torch.from_numpy(epsilon(code, seed, step, cfg)).to(device or "cpu")
