"""Fit a chunk-count model's parameters to recorded counts (how count model 2 was chosen, issue 28).

    python benchmarks/rcc_excess.py -n 80 --start 100 --counts counts.json   # record the counts (profile 12/13)
    python benchmarks/count_fit.py counts.json                               # grid search, best first

Each recorded step holds the count the encoder sent and the decoder's prediction (its centre c0 =
round(prediction)); the prior step has none (count model 1 codes it with an Elias-gamma code, 2 against a
prediction of 0). For each parameter set (spike on c0, the geometric's deviation abs + rel·c0, and where
c0 = 1 the masses on 0 and 1) the mean code length per image under
:func:`ddpm_codec.coding.rcc.bitstream.chunk_count_probs` itself, against count model 1's.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import Counter

import numpy as np

from ddpm_codec.coding.rcc import bitstream
from ddpm_codec.coding.rcc.layout import RCCConfig

DIM = 3072   # one 32x32 RGB tile


def code_length(counts: Counter, cfg: RCCConfig, prior_centre: float | None) -> float:
    """Total bits of every (centre, count) pair; centre -1 is the prior step."""
    probs = {}
    total = 0.0
    for (c0, nc), k in counts.items():
        if c0 < 0 and prior_centre is None:   # count model 1: Elias-gamma (uniform over the bit lengths)
            total += k * math.log2(DIM.bit_length() + 1)
            continue
        c = prior_centre if c0 < 0 else c0
        if c not in probs:
            probs[c] = bitstream.chunk_count_probs(c, DIM, cfg)
        total += k * -math.log2(probs[c][nc])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("counts")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    images = json.loads(open(a.counts).read())
    counts = Counter()
    for im in images:
        for st in im["steps"]:
            c0 = -1 if st["pred"] is None else int(math.floor(st["pred"][0] + 0.5))
            counts[(c0, st["nc"][0])] += 1
    n = len(images)
    base = RCCConfig(chunk_bits=4, log2_candidates=14, selection="trellis")
    model1 = RCCConfig(**{**base.__dict__, "chunks_abs_scale": 0.6, "chunks_rel_scale": 0.03, "count_spike": 0.8})
    print(f"{n} images; count model 1: {code_length(counts, model1, None) / n:.1f} bits per image")
    grid = itertools.product([0.8, 0.85, 0.9, 0.95], [0.6, 1.5, 2.0, 3.0], [0.01, 0.03, 0.05, 0.1],
                             [(0.5, 0.45), (0.55, 0.43), (0.45, 0.45)])
    rows = []
    for spike, ab, rel, (zero, one) in grid:
        cfg = RCCConfig(**{**base.__dict__, "chunks_abs_scale": ab, "chunks_rel_scale": rel, "count_spike": spike,
                           "unit_zero": zero, "unit_spike": one})
        rows.append((code_length(counts, cfg, 0.0) / n, spike, ab, rel, zero, one))
    rows.sort()
    for bits, *p in rows[:a.top]:
        print(f"{bits:.1f} bits per image: spike {p[0]}, deviation {p[1]} + {p[2]}·c0, where c0 = 1: {p[3]} on 0, "
              f"{p[4]} on 1")
    want = next(r for r in rows if r[1:] == (0.85, 2.0, 0.05, 0.5, 0.45))
    print(f"count model 2 as shipped: {want[0]:.1f} bits per image")


if __name__ == "__main__":
    main()
