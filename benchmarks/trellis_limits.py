"""How close the trellis coder gets to the KL on one large step, against its state count and path bits per
segment (issue 28: "more states where the step is large"), on synthetic steps.

    python benchmarks/trellis_limits.py --kl 1000 --reps 5 --configs 4/14/3,4/14/5,4/14/7,4/14/8,3/13/7,5/15/7,6/16/7

A step of D = 3072 dimensions with q = N(δ, σ²I) and p = N(0, σ²I), δ drawn isotropic and scaled so that
KL(q‖p) is ``--kl`` bits (``--spread s``: per-dimension scales lognormal(0, s) instead), coded by
``rcc.encode_step`` with the default profile's coder except for each ``b/log2_candidates/reuse_bits`` config
(2^(log2_candidates − b + reuse) states, b path bits per segment) and no count snapping. Prints, summed over
``--reps`` steps (each its own seed and δ), the path bits sent per bit of log2 q/p at the sample sent: an ideal
random codebook of the same size would reach about 1.001 at the default 105 % rate; the default (4/14/7)
measures ~1.05, the same as real large steps (`benchmarks/rcc_excess.py`). Then a table with the search's
seconds as a ratio to the default config's (one thread, after one warm-up step per config).

``--tree 16384,131072``: also a random *tree* code on the same steps and pool (each branch's pool row hashed
from the whole path, so no two paths merge, unlike the trellis's states) searched by the M-algorithm (keep the
best L partial paths per segment), for each beam width L; numpy, for the code length only (no decoder).

    python benchmarks/trellis_limits.py --kl 1000 --reps 3 --configs 4/14/7 --tree 16384,65536,131072,262144,524288
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
import torch

from ddpm_codec import codec
from ddpm_codec.coding.rcc import search
from ddpm_codec.coding.rcc.layout import block_bounds, num_chunks_for
from ddpm_codec.models.registry import resolve_model


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tree_best(s: np.ndarray, beam: int, b: int) -> float:
    """The M-algorithm on a random tree code: ``s [C, M]`` the segments' pool-row scores; branch ``y`` of a
    path with hash ``h`` at segment ``j`` reads row ``mix(h·2^b + y + key_j) mod M`` and its hash becomes that
    value. Keeps the ``beam`` best partial paths per segment; returns the best total score."""
    m = s.shape[1]
    score, h = np.zeros(1), np.zeros(1, np.uint64)
    ys = np.arange(1 << b, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(s.shape[0]):
            key = np.uint64(((j + 1) * 0x9E3779B97F4A7C15) % (1 << 64))
            hh = _mix(h[:, None] * np.uint64(1 << b) + ys[None, :] + key).ravel()
            cand = np.repeat(score, 1 << b) + s[j][(hh % np.uint64(m)).astype(np.int64)]
            keep = np.argpartition(cand, -beam)[-beam:] if cand.size > beam else slice(None)
            score, h = cand[keep], hh[keep]
    return float(score.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kl", type=float, default=1000.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--spread", type=float, default=0.0)
    ap.add_argument("--rate", type=float, default=None, help="rate_factor (default: the profile's 1.05)")
    ap.add_argument("--configs", default="4/14/3,4/14/5,4/14/7,4/14/8,3/13/7,5/15/7,6/16/7")
    ap.add_argument("--tree", default="", help="beam widths of a random tree code searched by the M-algorithm")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg0 = codec.default_settings(resolve_model(None)).rcc_config()
    dim, var = 3072, 1e-4
    rows = []
    for spec in a.configs.split(","):
        b, lc, reuse = (int(x) for x in spec.split("/"))
        cfg = replace(cfg0, chunk_bits=b, log2_candidates=lc, reuse_bits=reuse, count_spike=0.0,
                      rate_factor=a.rate or cfg0.rate_factor)
        rng = np.random.default_rng(0)
        bits = logw = secs = 0.0
        search.prepare(dim, cfg, "cpu")   # the candidate pool, built before the clock starts, and a warm-up step
        search.encode_step(torch.ones(1, dim) * 1e-3, torch.zeros(1, dim), var, var, seed=99, step=5, cfg=cfg,
                           generator=torch.Generator().manual_seed(99))
        for rep in range(a.reps):
            d = rng.normal(size=dim) * rng.lognormal(0.0, a.spread, dim)
            d *= math.sqrt(a.kl * 2 * math.log(2) * var / (d ** 2).sum())   # KL = |δ|² / (2σ²) nats
            t0 = time.perf_counter()
            code, _, rep_ = search.encode_step(torch.from_numpy(d).float()[None], torch.zeros(1, dim), var, var,
                                               seed=rep, step=5, cfg=cfg, generator=torch.Generator().manual_seed(rep))
            secs += time.perf_counter() - t0
            bits += int(code.num_chunks[0]) * b
            logw += float(rep_.selected_log_w_bits[0])
        rows.append((spec, f"{b} path bits, 2^{lc} pool rows, reuse {reuse}: 2^{cfg.state_bits} states", bits / logw,
                     secs))
        r = bits / (a.reps * a.kl)   # bits per bit of KL; an ideal codebook delivers (2·sqrt(r) - 1)·KL
        print(f"{rows[-1][1]}: bits / log2 q/p {bits / logw:.4f}; log2 q/p per bit sent {logw / bits:.3f} "
              f"(ideal {(2 * math.sqrt(r) - 1) / r:.3f})", flush=True)
    base = next((r[3] for r in rows if r[0] == "4/14/7"), rows[0][3])
    if a.tree:
        tree(a, cfg0, dim, var, base / a.reps)
    for _, name, ratio, secs in rows:
        print(f"| {name} | {ratio:.4f} | {secs / base:.2f}x |")


def tree(a, cfg0, dim: int, var: float, trellis_secs: float) -> None:
    """The tree code on the same δs as the trellis configs (rng seed 0), the default pool and path bits;
    ``trellis_secs``: the first trellis config's search time per step, for the time ratio."""
    beams = [int(x) for x in a.tree.split(",")]
    b, m = int(cfg0.chunk_bits), cfg0.num_candidates
    cfg = replace(cfg0, count_spike=0.0, rate_factor=a.rate or cfg0.rate_factor)
    search.prepare(dim, cfg, "cpu")
    pool = search._pool_on(dim, m, "cpu")
    rng = np.random.default_rng(0)
    bits, logw, secs = 0.0, np.zeros(len(beams)), np.zeros(len(beams))
    for _ in range(a.reps):
        d = rng.normal(size=dim) * rng.lognormal(0.0, a.spread, dim)
        d *= math.sqrt(a.kl * 2 * math.log(2) * var / (d ** 2).sum())
        c = num_chunks_for(a.kl, dim, cfg)
        u = torch.from_numpy(d / math.sqrt(var)).float()[None]   # log w = ε·u − |u|²/2 nats (equal variances)
        s = search._block_scores(pool, u, block_bounds(dim, c), 0, c)[:, 0, :].numpy().copy()
        bits += c * b
        for i, beam in enumerate(beams):
            t0 = time.perf_counter()
            logw[i] += (tree_best(s, beam, b) - float(u.double().square().sum()) / 2) / math.log(2)
            secs[i] += time.perf_counter() - t0
    for i, beam in enumerate(beams):
        print(f"tree code, M-algorithm beam {beam}: bits / log2 q/p {bits / logw[i]:.4f} "
              f"(search {secs[i] / a.reps / trellis_secs:.1f}x the trellis's per step; numpy against compiled)",
              flush=True)


if __name__ == "__main__":
    main()
