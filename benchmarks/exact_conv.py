"""The exact network's large convolutions: shifted-view GEMMs (``_QConv._shifted``) against
``conv2d``'s im2col, and both against the float network, on one 32x32 sample per call.

    python benchmarks/exact_conv.py                 # one thread: process CPU time (robust to other load)
    python benchmarks/exact_conv.py --threads 2     # wall time: run it on an idle machine

Rounds interleave the three variants; medians of ms per call. The bits are the same either way
(tests/test_models_exact.py), so only time is compared. State the ratios, not the times.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()

    from ddpm_codec.arithmetic import EXACT, FLOAT
    from ddpm_codec.codec.chain import Net
    from ddpm_codec.models import exact
    from ddpm_codec.models.registry import resolve_model

    clock = time.process_time if a.threads == 1 else time.perf_counter
    model = resolve_model()
    exact_net, float_net = Net(model, EXACT, a.threads), Net(model, FLOAT)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(4)]
    ts = list(range(20, 1000, 20))
    for t in ts[:10]:
        exact_net(xs[0], t)
        float_net(xs[0], t)

    def bench(net):
        t0 = clock()
        for i, t in enumerate(ts):
            net(xs[i % 4], t)
        return (clock() - t0) / len(ts) * 1e3

    res = {"float": [], "exact, conv2d only": [], "exact, shifted GEMMs (default)": []}
    default = exact.SHIFTED_MIN_PIXELS
    for _ in range(a.rounds):
        res["float"].append(bench(float_net))
        exact.SHIFTED_MIN_PIXELS = 10**9
        res["exact, conv2d only"].append(bench(exact_net))
        exact.SHIFTED_MIN_PIXELS = default
        res["exact, shifted GEMMs (default)"].append(bench(exact_net))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{a.threads} thread(s), {'process CPU' if a.threads == 1 else 'wall'} time, {a.rounds} rounds of {len(ts)} calls")
    print("| network | ms per call (median) | / float |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / med['float']:.3f} |")
    print(f"shifted / conv2d: {med['exact, shifted GEMMs (default)'] / med['exact, conv2d only']:.3f}")


if __name__ == "__main__":
    main()
