"""PFR and MRC selection (profiles 1 and 2, and comparisons) and the fitting of their index tables.

Poisson functional representation (Li & El Gamal 2018) picks per chunk
``n* = argmin_n log T_n − log w_n`` with Poisson arrival times ``T_n`` from the encoder's private
generator; minimal random coding (``selection="mrc"``) draws ``n* ~ w_n`` (Gumbel-max). The PFR
index is coded as a bucket under a simulated table (:mod:`.bitstream`); :func:`fit_index_tables`
regenerates those tables by simulation and :func:`write_index_tables` writes them as data
(``python -m ddpm_codec.coding.rcc.legacy --write-tables``; a format change: update the pinned
bytes in tests/test_coding_rcc.py on purpose).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from .bitstream import INDEX_TABLES_PATH, bucket, index_tables, table_key
from .layout import LN2, RCCConfig, block_bounds
from .search import _BUFFERS


def select(scores: torch.Tensor, r: int, cfg: RCCConfig, rng: np.random.Generator,
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


def fit_index_tables(configs=None, *, dim: int = 3072, chunks_per_config: int = 6000, seed: int = 0,
                     total: int = 1 << 16) -> dict[str, list[int]]:
    """Regenerate the committed bucket tables by simulation (run offline; slow).

    For equal variances a chunk's PFR index depends on its KL κ only (the score is 1-D along
    Δ), so each chunk is simulated in 1-D. Steps have KL log-uniform on [3, 3000] bits; chunk
    KLs come from a random equal partition of ``dim`` dims whose per-dim KLs are χ²₁ shares
    (Gaussian Δ). Counts are scaled to sum to ``total`` with every bucket ≥ 1, stored as
    integers so that both sides build the same model. :func:`write_index_tables` stores them.
    """
    if configs is None:
        configs = [(k, k + a) for k in range(6, 15) for a in (1, 2, 3, 4, 5, 6) if k + a <= 16]
    rng = np.random.default_rng(seed)
    tables = {}
    for k, L in configs:
        kap = _simulate_chunk_kls(float(k), dim, chunks_per_config, rng)
        n = _simulate_pfr_1d(kap, int(L), rng)
        counts = np.bincount(bucket(n), minlength=int(L) + 1).astype(np.float64)
        counts = counts + 0.5
        scaled = np.maximum(1, np.floor(counts / counts.sum() * total)).astype(np.int64)
        tables[table_key(k, L)] = [int(v) for v in scaled]
    return tables


def _simulate_chunk_kls(chunk_bits: float, dim: int, n_chunks: int, rng: np.random.Generator,
                        kl_range=(3.0, 3000.0)) -> np.ndarray:
    out = []
    total = 0
    while total < n_chunks:
        kl = math.exp(rng.uniform(math.log(kl_range[0]), math.log(kl_range[1])))
        c = int(min(dim, max(1, math.floor(kl / chunk_bits + 0.5))))
        w = rng.standard_normal(dim) ** 2
        w *= kl / w.sum()
        bounds = block_bounds(dim, c)
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


def write_index_tables(tables: dict[str, list[int]], path: Path = INDEX_TABLES_PATH) -> None:
    """Merge ``tables`` into the committed table file (sorted by key). A format change for PFR files."""
    merged = {**{k: list(v) for k, v in index_tables().items()}, **tables} if path == INDEX_TABLES_PATH else dict(tables)
    keys = sorted(merged, key=lambda k: tuple(float(v) for v in k.split(",")))
    Path(path).write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(merged[k])}" for k in keys) + "\n}\n")
    index_tables.cache_clear()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Fit the PFR index bucket tables by simulation (slow).")
    ap.add_argument("--write-tables", action="store_true", help=f"merge the result into {INDEX_TABLES_PATH.name}")
    ap.add_argument("--chunks", type=int, default=6000, help="simulated chunks per configuration")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tables = fit_index_tables(chunks_per_config=args.chunks, seed=args.seed)
    if args.write_tables:
        write_index_tables(tables)
    print(json.dumps(tables))


if __name__ == "__main__":
    main()
