"""The bitstream of an RCC step: how chunk counts and indices are range-coded (both sides).

:func:`write_step` / :func:`read_step` append / read one step's code on a
``constriction.stream.queue.RangeEncoder`` / ``RangeDecoder``. Counts are coded with a two-sided
geometric model around the caller's prediction (:func:`chunk_count_probs`; Elias-gamma-like
without one); indices flat (trellis path bits, MRC) or, for PFR, as a bucket
``floor(log2(n+1))`` under a simulated table (``index_tables.json``, written by
``python -m ddpm_codec.coding.rcc.legacy --write-tables``) plus raw bits.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..entropy import read_raw_bits, write_raw_bits
from .layout import RCCConfig, StepCode, trellis_path, trellis_states

INDEX_TABLES_PATH = Path(__file__).with_name("index_tables.json")


@lru_cache(maxsize=1)
def index_tables() -> dict[str, tuple[int, ...]]:
    """The committed PFR bucket tables: integer counts per ``"chunk_bits,log2_candidates"`` key."""
    return {k: tuple(v) for k, v in json.loads(INDEX_TABLES_PATH.read_text()).items()}


def _fallback_bucket_weights(log2_candidates: int) -> list[float]:
    """Bucket model for configs without a simulated table: flat over buckets 0..L−1 (the
    simulated tables are within a factor ~2.5 of flat; flat costs ≈0.1 bit/chunk more), and
    2^-8 for bucket L (the single index M−1)."""
    L = int(log2_candidates)
    return [1.0] * L + [2.0**-8]


def table_key(chunk_bits: float, log2_candidates: int) -> str:
    return f"{float(chunk_bits):g},{int(log2_candidates)}"



def index_bucket_probs(cfg: RCCConfig) -> np.ndarray:
    """P(bucket b), b = floor(log2(n*+1)) ∈ [0, L], float64 (exact copy of the committed
    integer counts, or the fallback shape), the same on both sides."""
    L = int(cfg.log2_candidates)
    tab = index_tables().get(table_key(cfg.chunk_bits, L))
    w = np.array(tab if tab is not None else _fallback_bucket_weights(L), dtype=np.float64)
    if len(w) != L + 1:
        raise ValueError(f"bucket table for {cfg} has {len(w)} entries, expected {L + 1}")
    return w / w.sum()



def index_code_bits(idx: np.ndarray, cfg: RCCConfig) -> float:
    """Model code length of one item's indices (bucket −log2 P plus raw offset bits)."""
    if len(idx) == 0:
        return 0.0
    L = int(cfg.log2_candidates)
    if cfg.selection == "mrc":
        return float(L * len(idx))
    if cfg.selection == "trellis":
        return float(int(cfg.chunk_bits) * len(idx))
    b = bucket(idx)
    p = index_bucket_probs(cfg)
    raw = np.where(b < L, b, 0)
    return float((-np.log2(p[b]) + raw).sum())


def bucket(idx: np.ndarray) -> np.ndarray:
    """floor(log2(n+1)) for int64 n ≥ 0 (exact, via bit length)."""
    v = np.asarray(idx, dtype=np.int64) + 1
    b = np.zeros(v.shape, np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        b += big * s
        v = np.where(big, v >> s, v)
    return b


COUNT_FLOOR = 2.0**-10  # mass spread uniformly over [0, D]: caps a misprediction at ~10 + log2(D+1) bits


def chunk_count_probs(pred: float, dim: int, cfg: RCCConfig) -> np.ndarray:
    """P(C) over [0, D]: two-sided geometric around c0 = round(pred) with mean absolute
    deviation ``chunks_abs_scale + chunks_rel_scale·c0``, mixed with a uniform floor of mass 2^-10.
    With ``count_spike > 0``: mass ``count_spike`` at ``c0`` itself, the geometric (without its
    centre) renormalised to ``1 − count_spike − 2^-10`` (the encoder snaps counts to ``c0``). With
    ``unit_zero > 0`` too (count model 2) and ``c0 = 1``: mass ``unit_zero`` at 0 and ``unit_spike`` at 1,
    the geometric (without 0 and 1) renormalised to ``1 − unit_zero − unit_spike − 2^-10``.

    Only IEEE basic arithmetic (no exp/pow), so both sides build identical float inputs; only
    round(pred) matters. ``pred = 0`` makes a free step cost ~0.014 bits.
    """
    c0 = int(min(dim, max(0, math.floor(pred + 0.5))))
    scale = cfg.chunks_abs_scale + cfg.chunks_rel_scale * c0
    rho = scale / (scale + 1.0)  # geometric ratio with mean deviation `scale`
    up = np.cumprod(np.full(dim - c0, rho))  # rho^1..rho^(D-c0), sequential IEEE products
    down = np.cumprod(np.full(c0, rho))
    total = cfg.arithmetic.sum
    if cfg.count_spike > 0:
        g = np.concatenate([down[::-1], [0.0], up])
        spike, zero = cfg.count_spike, 0.0
        if c0 == 1 and cfg.unit_zero > 0:   # count model 2: mass on 0 and on 1 where one segment is predicted
            g[0] = 0.0
            spike, zero = cfg.unit_spike, cfg.unit_zero
        p = (1.0 - COUNT_FLOOR - spike - zero) * (g / total(g)) + COUNT_FLOOR / (dim + 1)
        p[c0] += spike
        p[0] += zero
        return p
    g = np.concatenate([down[::-1], [1.0], up])
    return (1.0 - COUNT_FLOOR) * (g / total(g)) + COUNT_FLOOR / (dim + 1)


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
    write_counts(encoder, nc, code.dim, cfg, predicted_chunks)
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
            write_raw_bits(encoder, idx, np.full(len(idx), L, np.int64))
            continue
        if cfg.selection == "trellis":
            bb = int(cfg.chunk_bits)
            if np.any(idx >> bb != trellis_states(idx, cfg)):
                raise ValueError(f"item {b}: indices are not a path through the trellis")
            write_raw_bits(encoder, idx & ((1 << bb) - 1), np.full(len(idx), bb, np.int64))
            continue
        if cat is None:
            cat = model.Categorical(index_bucket_probs(cfg), perfect=False)
        bk = bucket(idx)
        encoder.encode(bk.astype(np.int32), cat)
        inner = (bk >= 1) & (bk < L)  # bucket 0 is n=0; bucket L is n=M-1 only
        write_raw_bits(encoder, idx[inner] + 1 - (1 << bk[inner]), bk[inner])


def read_step(decoder, batch: int, dim: int, cfg: RCCConfig, predicted_chunks=None) -> StepCode:
    """Inverse of :func:`write_step`. Raises ValueError on data that cannot be a step code."""
    cn = _coders()
    model = cn.stream.model
    if batch < 0 or dim < 1:
        raise ValueError("bad batch/dim")
    try:
        nc = read_counts(decoder, batch, dim, cfg, predicted_chunks)
        L = int(cfg.log2_candidates)
        indices = []
        cat = None
        for b in range(batch):
            c = int(nc[b])
            if c == 0:
                indices.append(np.zeros(0, np.int64))
                continue
            if cfg.selection == "mrc":
                indices.append(read_raw_bits(decoder, np.full(c, L, np.int64)))
                continue
            if cfg.selection == "trellis":
                indices.append(trellis_path(read_raw_bits(decoder, np.full(c, int(cfg.chunk_bits), np.int64)), cfg))
                continue
            if cat is None:
                cat = model.Categorical(index_bucket_probs(cfg), perfect=False)
            bk = np.asarray(decoder.decode(cat, c), dtype=np.int64)
            if bk.min() < 0 or bk.max() > L:
                raise ValueError("bucket out of range")
            idx = np.where(bk == L, (1 << L) - 1, (1 << bk) - 1).astype(np.int64)
            inner = (bk >= 1) & (bk < L)
            idx[inner] += read_raw_bits(decoder, bk[inner])
            indices.append(idx)
    except ValueError:
        raise
    except Exception as exc:  # constriction raises its own errors on corrupt streams
        raise ValueError(f"corrupt RCC step code: {exc}") from exc
    return StepCode(num_chunks=nc, indices=indices, dim=dim)



def count_groups(pred, batch: int) -> list[tuple[float, np.ndarray]]:
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


def count_code_bits(nc: np.ndarray, dim: int, cfg: RCCConfig, pred: float | None) -> float:
    """Model code length (bits, -log2 of the probabilities :func:`write_counts` codes with) of one
    step's chunk counts: what the counts cost apart from the range coder's rounding."""
    nc = np.asarray(nc, dtype=np.int64)
    if len(nc) == 0:
        return 0.0
    if pred is not None:
        return float(sum(-np.log2(chunk_count_probs(centre, dim, cfg)[nc[members]]).sum()
                         for centre, members in count_groups(pred, len(nc))))
    gmax = int(dim).bit_length()
    g = np.array([int(c).bit_length() for c in nc], dtype=np.int64)
    return float(len(nc) * math.log2(gmax + 1) + np.maximum(g - 1, 0).sum())


def write_counts(encoder, nc: np.ndarray, dim: int, cfg: RCCConfig, pred: float | None) -> None:
    cn = _coders()
    if len(nc) == 0:
        return
    if pred is not None:
        for centre, members in count_groups(pred, len(nc)):
            cat = cn.stream.model.Categorical(chunk_count_probs(centre, dim, cfg), perfect=False)
            encoder.encode(nc[members].astype(np.int32), cat)
        return
    # Elias-gamma-like default: g = bit length of C (uniform over 0..bitlen(D)), then g-1 bits
    gmax = int(dim).bit_length()
    g = np.array([int(c).bit_length() for c in nc], dtype=np.int64)
    encoder.encode(g.astype(np.int32), cn.stream.model.Categorical(np.ones(gmax + 1), perfect=False))
    big = g >= 2
    write_raw_bits(encoder, nc[big] - (1 << (g[big] - 1)), g[big] - 1)


def read_counts(decoder, batch: int, dim: int, cfg: RCCConfig, pred: float | None) -> np.ndarray:
    cn = _coders()
    if batch == 0:
        return np.zeros(0, np.int64)
    if pred is not None:
        nc = np.zeros(batch, np.int64)
        for centre, members in count_groups(pred, batch):
            cat = cn.stream.model.Categorical(chunk_count_probs(centre, dim, cfg), perfect=False)
            nc[members] = np.asarray(decoder.decode(cat, len(members)), dtype=np.int64)
    else:
        gmax = int(dim).bit_length()
        g = np.asarray(decoder.decode(cn.stream.model.Categorical(np.ones(gmax + 1), perfect=False), batch),
                       dtype=np.int64)
        nc = np.where(g >= 1, 1 << np.maximum(g - 1, 0), 0).astype(np.int64)
        big = g >= 2
        nc[big] += read_raw_bits(decoder, g[big] - 1)
    if nc.min() < 0 or nc.max() > dim:
        raise ValueError(f"decoded chunk count out of range [0, {dim}]")
    return nc
