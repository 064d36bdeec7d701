"""Does the trellis lose bits because its equal-size blocks carry unequal KL? (issue 28, "the large steps")

    python benchmarks/block_balance.py 3             # shared CIFAR-10 test images by index

A real default encode of each image is recorded step by step (the arguments of every ``rcc.encode_step``). Each
large step (KL > 100 bits) is then coded twice more with the same chunk-count rule (no snapping to the
prediction): as recorded, and with the same per-dimension deltas μ_q − μ_p re-assigned to the dimensions so that
every block of the encoder's layout (its permutation, equal-size blocks) carries the same KL (greedy: the largest
deltas first, each to the block with the least KL so far). Prints, summed over those steps, the path bits, log2
q/p at the sample sent, and their ratio for both: equal ratios mean the trellis moves rate between neighbouring
segments at no cost. Measured 2026-12-07 on test image 3: 1.0449 as recorded, 1.0527 balanced (the same
counts: 1,420 segments).
"""
from __future__ import annotations

import argparse
import heapq
from pathlib import Path

import numpy as np
import torch
from ddpm_codec.models.registry import resolve_model

from ddpm_codec import codec
from ddpm_codec.codec import api
from ddpm_codec.coding.rcc import layout, search

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def balanced(delta: np.ndarray, perm: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The values of ``delta`` re-assigned to dimensions so that each block (pool columns ``bounds[j]`` ..
    ``bounds[j+1]-1``, column k being dimension ``perm[k]``) holds about the same sum of squares."""
    c = len(bounds) - 1
    free = [int(bounds[j + 1] - bounds[j]) for j in range(c)]
    heap = [(0.0, j) for j in range(c)]
    out = np.zeros_like(delta)
    for d in np.argsort(-np.abs(delta)):
        while True:
            s, j = heapq.heappop(heap)
            if free[j]:
                break
        col = int(bounds[j + 1]) - free[j]
        free[j] -= 1
        out[perm[col]] = delta[d]
        heapq.heappush(heap, (s + float(delta[d]) ** 2, j))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=int)
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(None)
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"]
    original = search.encode_step
    for i in a.images:
        rec = []

        def spy(mu_q, mu_p, var_q, var_p, _rec=rec, **kw):
            _rec.append((mu_q.clone(), mu_p.clone(), var_q, var_p, dict(kw)))
            return original(mu_q, mu_p, var_q, var_p, **kw)
        api.rcc.encode_step = spy
        try:
            codec.encode(imgs[i], model, metrics=False)
        finally:
            api.rcc.encode_step = original
        tot = {"as recorded": np.zeros(2), "balanced": np.zeros(2)}
        for mu_q, mu_p, var_q, var_p, kw in rec:
            kw = dict(kw, predicted_chunks=None, generator=torch.Generator().manual_seed(1))
            delta = (mu_q - mu_p).flatten(1)[0].double().numpy()
            code, _, rep = original(mu_q, mu_p, var_q, var_p, **kw)
            c = int(code.num_chunks[0])
            if rep.kl_bits[0] < 100 or c == 0:
                continue
            perm, _, _ = layout.item_layout(kw["seed"], kw["step"], 0, delta.size, kw["cfg"].num_candidates)
            nd = balanced(delta, perm, layout.block_bounds(delta.size, c))
            mu_q2 = (mu_p.flatten(1)[0].double() + torch.from_numpy(nd)).float().view_as(mu_q)
            code2, _, rep2 = original(mu_q2, mu_p, var_q, var_p, **kw)
            bits = int(kw["cfg"].chunk_bits)
            tot["as recorded"] += (c * bits, rep.selected_log_w_bits[0])
            tot["balanced"] += (int(code2.num_chunks[0]) * bits, rep2.selected_log_w_bits[0])
        for k, (b, w) in tot.items():
            print(f"image {i}, {k}: {b:.0f} path bits, log2 q/p {w:.1f}, ratio {b / w:.4f}")


if __name__ == "__main__":
    main()
