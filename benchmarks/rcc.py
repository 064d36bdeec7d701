"""Reverse channel coding on this CPU: rate, sample quality and time, printed as markdown.

    python benchmarks/rcc.py [pool] [grid] [mrc] [chain] [budget] [--quick]

pool    candidate-pool build seconds vs torch.randn of the same size (side by side).
grid    D = 3072, var_p/var_q ∈ {1, 1.3}, step KL ∈ {20, 300, 3000} bits, chunk_bits × slack:
        real bits / KL (write_step, C coded around an exact prediction), the selected ε·û
        along Δ (mean and variance, both relative to q's), encode / decode ms per step (B = 1).
mrc     PFR vs minimal random coding (index sent flat) at equal candidate counts.
chain   A Gaussian toy diffusion (data N(0, I), exact reverse model, var_p > var_q), 50 steps
        coded with RCC, then x_0 from x_τ: total bits vs the ideal −log2 p(x_0), split into
        coding overhead (real bits − Σ KL of the realised chain) and sample-quality penalty
        (Σ KL + final cost − ideal): what imperfect samples cost later in the chain. PFR per
        chunk against the trellis coder (one Viterbi search per step) at equal pool sizes.
budget  RCC seconds of one 50-step chain of one 3072-dim image (B = 1).
viterbi The trellis recursion per segment: compiled (coding.viterbi) against torch, side by side on
        the same random scores (2^14 pool rows, 4 path bits, reuse 3 / 6 / 7), and whether both
        pick the same path.

Timings are noisy on a shared 2-core machine: compare rows measured side by side.
"""

from __future__ import annotations

import argparse
import math
import time

import constriction
import numpy as np
import torch

from ddpm_codec.coding import prng, rcc
from ddpm_codec.coding.rcc import layout, search

D = 3072
LN2 = math.log(2)


def _pair(b, dim, kl_bits, ratio, var_q=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    var_p = var_q * ratio
    const = 0.5 * dim * (1 / ratio - 1 + math.log(ratio)) / LN2
    need = max(kl_bits - const, 0.0)
    mu_p = torch.randn(b, dim, generator=g, dtype=torch.float64)
    d = torch.randn(b, dim, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True) * math.sqrt(2 * need * LN2 * var_p)
    return mu_p + d, mu_p, var_q, var_p


def _bits(code, cfg, pred):
    enc = constriction.stream.queue.RangeEncoder()
    rcc.write_step(enc, code, cfg, pred)
    return enc.num_bits()


def bench_pool(ls=(12, 13, 14)):
    print("\n### Candidate pool build (D = 3072)\n")
    print("| log2 M | normals | pool build s | torch.randn same size s | ratio |")
    print("|---|---|---|---|---|")
    for L in ls:
        prng.candidate_pool_t.cache_clear()
        t0 = time.perf_counter()
        prng.candidate_pool_t(D, 1 << L)
        tp = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.randn(1 << L, D)
        tr = time.perf_counter() - t0
        print(f"| {L} | {(1 << L) * D / 1e6:.0f}M | {tp:.2f} | {tr:.2f} | {tp / tr:.1f} |")
        prng.candidate_pool_t.cache_clear()
        search._pool_on.cache_clear()


def _chunk_stats(code, eps, mu_q, mu_p, vq, vp, cfg, seed, step):
    """Per-chunk projections of ε on û_c (Δ restricted to the chunk): regression slope of the
    projection on q's mean, and the residual variance relative to q's (var_q/var_p)."""
    proj, target = [], []
    delta = (mu_q - mu_p).numpy()
    e = eps.double().numpy()
    for b in range(code.batch):
        c = int(code.num_chunks[b])
        if c == 0:
            continue
        perm, _, _ = layout.item_layout(seed, step, b, D, cfg.num_candidates)
        bounds = layout.block_bounds(D, c)[:-1]
        d, x = delta[b, perm], e[b, perm]
        norm = np.sqrt(np.add.reduceat(d * d, bounds))
        proj.append(np.add.reduceat(d * x, bounds) / norm)
        target.append(norm / math.sqrt(vp))
    proj, target = np.concatenate(proj), np.concatenate(target)
    slope = (proj * target).sum() / (target * target).sum()
    var = np.mean((proj - slope * target) ** 2) / (vq / vp)
    return slope, var


def _grid_cell(k, L, ratio, kl, items, selection="pfr"):
    """``kl``: the Δ part of the step KL (the variance mismatch adds its own, ~70 bits at 1.3)."""
    cfg = rcc.RCCConfig(chunk_bits=k, log2_candidates=L, selection=selection)
    const = 0.5 * D * (1 / ratio - 1 + math.log(ratio)) / LN2
    mu_q, mu_p, vq, vp = _pair(items, D, kl + const, ratio, seed=int(kl) + L)
    gen = torch.Generator().manual_seed(0)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=1, step=L, cfg=cfg, generator=gen)
    klsum = rep.kl_bits.sum()
    pred = rcc.expected_chunks(float(klsum / items), D, cfg)
    bits = _bits(code, cfg, pred)
    z = rep.proj / rep.proj_target_mean
    _, var_ratio = _chunk_stats(code, eps, mu_q, mu_p, vq, vp, cfg, 1, L)
    # timing at B = 1 (warm pool)
    q1, p1 = mu_q[:1], mu_p[:1]
    t0 = time.perf_counter()
    c1, _, _ = rcc.encode_step(q1, p1, vq, vp, seed=2, step=L, cfg=cfg, generator=gen)
    te = time.perf_counter() - t0
    t0 = time.perf_counter()
    rcc.decode_step(c1, dim=D, seed=2, step=L, cfg=cfg)
    td = time.perf_counter() - t0
    delivered = rep.selected_log_w_bits.sum()
    return dict(bits_per_kl=bits / klsum, chunks=int(code.num_chunks.sum()), mean=float(z.mean()),
                delivered=delivered / klsum, excess=(bits - delivered) / klsum, kl=klsum / items,
                var=float(var_ratio), enc_ms=te * 1e3, dec_ms=td * 1e3,
                bits_per_chunk=bits / max(1, code.num_chunks.sum()))


def bench_grid(quick=False):
    ks = (6, 8, 10, 12, 14) if not quick else (8, 10)
    slacks = (1, 2, 3, 4) if not quick else (2, 4)
    kls = (20, 300, 3000)
    print("\n### Grid: D = 3072, real bits / KL and selected ε·û along Δ (relative to q: 1 = exact)\n")
    print("mean = E[ε·û]/(‖Δ‖/σ_p) over items (û: the step's Δ direction); var: per chunk, variance of ε·û_c")
    print("around (slope × q's mean), over var_q/var_p (1 = q's). delivered = E[log2 q/p at the")
    print("selected z]/KL (1 for exact samples); excess = (bits − delivered)/KL: with an exact model the rest of")
    print("the chain pays exactly `delivered` less, so excess is the step's true overhead. enc/dec ms: B = 1.\n")
    print("| var_p/var_q | KL bits | chunk_bits | log2 M | chunks | bits/KL | bits/chunk | mean | var | delivered | excess | enc ms | dec ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ratio in (1.0, 1.3):
        for kl in kls:
            for k in ks:
                for a in slacks:
                    L = k + a
                    if L > 16:
                        continue
                    items = {20: 128, 300: 16}.get(kl, 6)
                    r = _grid_cell(k, L, ratio, kl, items)
                    print(f"| {ratio} | {r['kl']:.0f} | {k} | {L} | {r['chunks']} | {r['bits_per_kl']:.3f} | "
                          f"{r['bits_per_chunk']:.2f} | {r['mean']:.3f} | {r['var']:.3f} | {r['delivered']:.3f} | "
                          f"{r['excess']:.3f} | {r['enc_ms']:.0f} | "
                          f"{r['dec_ms']:.1f} |", flush=True)
            search._pool_on.cache_clear()
            search._sqnorm_prefix.cache_clear()
            prng.candidate_pool_t.cache_clear()


def bench_mrc(quick=False):
    print("\n### PFR vs minimal random coding (same candidates; D = 3072, KL 300 bits, equal variances)\n")
    print("| chunk_bits | log2 M | selection | bits/KL | mean | var | delivered | excess |")
    print("|---|---|---|---|---|---|---|---|")
    for k, L in ((8, 10), (8, 12), (8, 14), (10, 12), (10, 14)) if not quick else ((8, 12),):
        for sel in ("pfr", "mrc"):
            r = _grid_cell(k, L, 1.0, 300, 32, selection=sel)
            print(f"| {k} | {L} | {sel} | {r['bits_per_kl']:.3f} | {r['mean']:.3f} | {r['var']:.3f} | "
                  f"{r['delivered']:.3f} | {r['excess']:.3f} |", flush=True)


# ----------------------------------------------------------------------------- toy chain


def _toy_schedule(T=1000, steps=50, t_end=2):
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = np.concatenate([[1.0], np.cumprod(1 - betas)])  # abar[t], t = 0..T
    ts = sorted({int(round(t_end + (T - t_end) * (i / steps) ** 2)) for i in range(steps + 1)}, reverse=True)
    return abar, ts


def toy_chain(cfg, images=4, steps=50, seed=0, dim=D, keep_codes=False):
    """Code `images` toy images through the chain; returns dict of per-image bit totals."""
    abar, ts = _toy_schedule(steps=steps)
    g = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(images, dim, generator=g, dtype=torch.float64)  # data ~ N(0, I): −log p exact
    ideal = (0.5 * x0.square() + 0.5 * math.log(2 * math.pi)).sum(1) / LN2
    T = ts[0]
    a_T = math.sqrt(abar[T])
    # prior step: x_T ~ q(x_T | x_0) sent with p(x_T) = N(0, I) (exact marginal)
    mu_q, var_q, mu_p, var_p = a_T * x0, 1 - abar[T], torch.zeros_like(x0), 1.0
    real = np.zeros(images)
    klsum = np.zeros(images)
    codes = []
    secs = 0.0
    enc = constriction.stream.queue.RangeEncoder()
    chain = [(None, T)] + list(zip(ts[:-1], ts[1:]))
    x = None
    for i, (t, s) in enumerate(chain):
        if i > 0:
            ab_t, ab_s = abar[t], abar[s]
            a_ts = ab_t / ab_s
            c1 = math.sqrt(ab_s) * (1 - a_ts) / (1 - ab_t)
            c2 = math.sqrt(a_ts) * (1 - ab_s) / (1 - ab_t)
            var_q = (1 - ab_s) * (1 - a_ts) / (1 - ab_t)
            x0_mean, x0_var = math.sqrt(ab_t) * x, 1 - ab_t  # exact posterior of x_0 (prior N(0,1))
            mu_q = c1 * x0 + c2 * x
            mu_p = c1 * x0_mean + c2 * x
            var_p = var_q + c1 * c1 * x0_var
        t0 = time.perf_counter()
        code, eps, rep = rcc.encode_step(mu_q, mu_p, var_q, var_p, seed=seed, step=s, cfg=cfg, generator=gen)
        secs += time.perf_counter() - t0
        if keep_codes:
            codes.append((s, code))
        # prediction = the exact expected chunk count (the toy knows its statistics)
        for b in range(images):
            sub = rcc.StepCode(num_chunks=code.num_chunks[b : b + 1], indices=[code.indices[b]], dim=dim)
            before = enc.num_bits()
            pred = rcc.expected_chunks(float(rep.kl_bits.mean()), dim, cfg)
            rcc.write_step(enc, sub, cfg, pred)
            real[b] += enc.num_bits() - before
        klsum += rep.kl_bits
        x = mu_p + math.sqrt(var_p) * eps.double()
    tau = ts[-1]
    fin_var = 1 - abar[tau]
    final = (0.5 * (x0 - math.sqrt(abar[tau]) * x).square() / fin_var + 0.5 * math.log(2 * math.pi * fin_var)).sum(1)
    final = final.numpy() / LN2
    ideal = ideal.numpy()
    return dict(real=real, kl=klsum, final=final, ideal=ideal, secs=secs, codes=codes)


def bench_chain(quick=False, selections=("pfr", "mrc", "trellis")):
    print("\n### Toy chain (D = 3072, 50 steps, exact model): what the RCC layer costs end to end\n")
    print("Per image, bits/dim: ideal = −log2 p(x_0); overhead = (real − Σ KL)/D; quality = (Σ KL + final − ideal)/D;")
    print("total excess = (real + final − ideal)/D, relative to the coded part Σ KL.\n")
    print("| chunk_bits | log2 M | selection | rate % | real/ΣKL | overhead bpd | quality bpd | total excess bpd | excess / ideal ΣKL | RCC s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    configs = [(6, 12, "pfr", 100), (8, 12, "pfr", 100), (10, 12, "pfr", 100), (11, 12, "pfr", 100),
               (10, 12, "mrc", 100), (10, 13, "pfr", 100), (11, 13, "pfr", 100), (12, 13, "pfr", 100),
               (12, 13, "mrc", 100), (8, 14, "pfr", 100), (10, 14, "pfr", 100), (12, 14, "pfr", 100),
               (13, 14, "pfr", 100), (14, 15, "pfr", 100),
               (4, 12, "trellis", 110), (4, 14, "trellis", 100), (4, 14, "trellis", 110), (4, 14, "trellis", 120),
               (2, 14, "trellis", 110), (4, 16, "trellis", 110)]
    if quick:
        configs = [(8, 12, "pfr", 100), (12, 13, "pfr", 100), (4, 12, "trellis", 110)]
    configs = [c for c in configs if c[2] in selections]
    ideal_kl = None
    for k, L, sel, rate in configs:
        cfg = rcc.RCCConfig(chunk_bits=k, log2_candidates=L, selection=sel, rate_factor=rate / 100)
        r = toy_chain(cfg, images=6 if not quick else 2)
        over = (r["real"] - r["kl"]) / D
        qual = (r["kl"] + r["final"] - r["ideal"]) / D
        tot = (r["real"] + r["final"] - r["ideal"]) / D
        se = tot.std(ddof=1) / math.sqrt(len(tot)) if len(tot) > 1 else float("nan")
        # Σ KL of an exactly sampled chain of the same images = ideal − final (in expectation)
        ideal_kl = (r["ideal"] - r["final"]).mean() if ideal_kl is None else ideal_kl
        print(f"| {k} | {L} | {sel} | {rate} | {(r['real'] / r['kl']).mean():.3f} | {over.mean():.3f} | {qual.mean():.3f} ± "
              f"{qual.std(ddof=1) / math.sqrt(len(qual)):.3f} | {tot.mean():.3f} ± {se:.3f} | "
              f"{tot.mean() * D / ideal_kl:.3f} | {r['secs'] / len(tot):.2f} |", flush=True)
    print("\n(exact sampling from q, same images: overhead = quality = 0 up to ±0.03 bpd, checked separately)")


def bench_budget(configs=((10, 12), (11, 12), (12, 13), (12, 14), (13, 14))):
    print("\n### RCC time of one 50-step chain of one image (toy model, B = 1)\n")
    print("Encode: wall and process CPU seconds of the 50 encode_step calls (CPU ≈ wall means this process got")
    print("about one core: the machine is shared). Pool: first-use build of the pool (+ ‖ε‖² prefix table).\n")
    print("| chunk_bits | log2 M | RCC encode wall s | encode CPU s | decode s (50 steps) | pool build s | torch.randn(pool size) s |")
    print("|---|---|---|---|---|---|---|")
    for k, L in configs:
        cfg = rcc.RCCConfig(chunk_bits=k, log2_candidates=L)
        prng.candidate_pool_t.cache_clear()
        search._pool_on.cache_clear()
        search._sqnorm_prefix.cache_clear()
        t0 = time.perf_counter()
        search._pool_on(D, 1 << L, "cpu")
        search._sqnorm_prefix(D, 1 << L, "cpu")
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.randn(1 << L, D)
        rnd = time.perf_counter() - t0
        c0 = time.process_time()
        r = toy_chain(cfg, images=1, seed=3, keep_codes=True)
        cpu = time.process_time() - c0
        t0 = time.perf_counter()
        for s, code in r["codes"]:
            rcc.decode_step(code, dim=D, seed=3, step=s, cfg=cfg)
        dec = time.perf_counter() - t0
        print(f"| {k} | {L} | {r['secs']:.2f} | {cpu:.2f} | {dec:.2f} | {build:.2f} | {rnd:.2f} |",
              flush=True)


def bench_viterbi(reuses=(3, 6, 7), segments=32):
    print("\n### Viterbi recursion per segment (2^14 pool rows, 4 path bits, one item)\n")
    print("| reuse_bits | states | torch ms/segment | compiled ms/segment | ratio | compiled ns per state-branch | same path |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for k in reuses:
        cfg = rcc.RCCConfig(chunk_bits=4, log2_candidates=14, selection="trellis", reuse_bits=k)
        s = torch.from_numpy(rng.standard_normal((segments, 1, cfg.num_candidates)).astype(np.float32))
        offs = [int(rng.integers(cfg.num_candidates))]
        out = {}
        for force in (True, False, False):   # torch; compiled twice (the first run compiles / loads)
            v = search.Viterbi(1, segments, cfg, "cpu", kernel="torch" if force else "auto")
            t0 = time.perf_counter()
            v.feed(s.clone(), offs)
            out[force] = (time.perf_counter() - t0, v.best_paths())
        (tt, pt), (tk, pk) = out[True], out[False]
        S = 1 << cfg.state_bits
        print(f"| {k} | 2^{cfg.state_bits} | {tt / segments * 1e3:.2f} | {tk / segments * 1e3:.2f} | {tt / tk:.1f} | "
              f"{tk / segments / (S * 16) * 1e9:.2f} | {np.array_equal(pt, pk)} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["pool", "grid", "mrc", "chain", "budget"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--selection", nargs="*", default=["pfr", "mrc", "trellis"], help="chain: coders to run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")
    for w in args.what:
        {"pool": bench_pool, "grid": lambda: bench_grid(args.quick), "mrc": lambda: bench_mrc(args.quick),
         "chain": lambda: bench_chain(args.quick, args.selection), "budget": bench_budget,
         "viterbi": bench_viterbi}[w]()


if __name__ == "__main__":
    main()
