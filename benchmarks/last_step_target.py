"""What the chain's last step could gain from another target than q (issue 28: "a better tie between the rate
margin and the sample's quality, measured by x_0's cost").

    python benchmarks/last_step_target.py -n 8 -k 16

The last coding step sends x_1 ~ q(x_1 | x_2, x_0) against p_θ(x_1 | x_2); x_0 then costs L0(x_1) =
-log2 P(x_0 | x_1) under the x_0 context model. Sending a sample of a target r costs about KL(r‖p), so the two
stages cost E_r[log2 r/p + L0] together; the best r is the model's own posterior p(x_1 | x_2) 2^-L0(x_1) / Z, whose
cost is -log2 P(x_0 | x_2), and q's excess over it is the step's ELBO gap KL(q ‖ posterior).

For each shared CIFAR-10 test image (x_2 drawn from q(x_2 | x_0); the float network and context model, with the
teacher-forced 12 passes) this prints, from K draws of each target:
  * the gap: at least log-mean-exp(w) - mean(log w) (an importance-weighted bound with K draws) and, if log w
    were Gaussian, var(log w)·ln2/2;
  * the two stages' expected cost under Gaussian targets other than q, against q's (paired, bits): q's mean moved
    by -c·var_q·∇L0 (the gradient at q's mean, nats), q's variance times k, and p(x_1 | x_2) times
    N(x_1; sqrt(ᾱ_1) x_0, λ(1 - ᾱ_1)) (the model's prior step instead of x_2's Gaussian).
Measured 2026-12-07 (docs/results/file-overhead.md): the gap is real (>= 40-50 bits an image) but every such
Gaussian target costs more than q; the gap lies in L0's shape, which only the networks evaluated at each
candidate would capture.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from ddpm_codec.models.registry import resolve_model
from ddpm_codec.models.x0_context import NUM_PASSES, discretized_gaussian_bits, pass_masks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-k", type=int, default=16, help="draws of each target")
    ap.add_argument("--shift", default="0.25,0.5", help="c: q's mean moved by -c var_q grad L0")
    ap.add_argument("--var", default="0.8,1.25", help="k: q's variance times k")
    ap.add_argument("--prior", default="1,2", help="lambda: p(x_1|x_2) N(x_1; sqrt(abar_1) x_0, lambda (1 - abar_1))")
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = resolve_model(None)
    d, K = model.diffusion, a.k
    cnet = model.x0_context.float().eval()
    for prm in list(cnet.parameters()) + list(model.net.parameters()):
        prm.requires_grad_(False)
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][:a.n]
    g = torch.Generator().manual_seed(1)

    def l0_bits(pix, x1):   # -log2 P(x_0 | x_1) under the context model, the 12 passes teacher-forced
        e1 = model.net(x1.float(), torch.ones(x1.shape[0], dtype=torch.int64))
        xhat = d.predict_x0(x1.float(), 1, e1)
        tot = 0.0
        for q in range(NUM_PASSES):
            known, target = (m.expand(pix.shape[0], -1, -1, -1) for m in pass_masks(q, 32, 32))
            mean, scale = cnet(pix, x1.float(), xhat.float(), known, target)
            tot = tot + discretized_gaussian_bits(pix[target], mean[target], scale[target]).reshape(pix.shape[0], -1).sum(1)
        return tot

    def draws(pix, mu, var, p, vp):   # log2 p/r and L0 at K draws of r = N(mu, var)
        var = torch.as_tensor(var, dtype=torch.float64)
        x1 = (mu + var.sqrt() * torch.randn((K,) + tuple(mu.shape[1:]), generator=g, dtype=torch.float64)).float().double()
        lp = (-(x1 - p.mean) ** 2 / (2 * vp) - 0.5 * math.log(2 * math.pi * vp)).sum((1, 2, 3))
        lr = (-(x1 - mu) ** 2 / (2 * var) - 0.5 * torch.log(2 * math.pi * var)).sum((1, 2, 3))
        with torch.no_grad():
            L = l0_bits(pix.expand(K, -1, -1, -1).contiguous(), x1).double()
        return (lp - lr) / math.log(2), L

    rows: dict[str, list[float]] = {}
    gaps = []
    for img in imgs:
        pix = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
        x0 = pix.double() / 127.5 - 1
        ab2, ab1 = float(d.alphas_cumprod[2]), float(d.alphas_cumprod[1])
        x2 = (math.sqrt(ab2) * x0 + math.sqrt(1 - ab2) * torch.randn(x0.shape, generator=g, dtype=torch.float64)).float().double()
        with torch.no_grad():
            eps = model.eps(x2.float(), 2).double()
        p = d.p_mean_variance(x2, 2, eps, 1, "fitted")
        vp = float(p.variance)
        q = d.q_posterior(x0, x2, 2, 1)
        vq = float(q.variance)
        logw, L = draws(pix, q.mean, vq, p, vp)
        lw = logw - L
        base = float((-lw).mean())
        iw = float(torch.logsumexp(lw * math.log(2), 0) / math.log(2) - math.log2(K))
        gaps.append((iw - float(lw.mean()), float(lw.var()) * math.log(2) / 2))
        xm = q.mean.float().clone().requires_grad_(True)
        grad = torch.autograd.grad(l0_bits(pix, xm).sum() * math.log(2), xm)[0].double()
        targets = [(f"shift c={c}", q.mean - float(c) * vq * grad, vq) for c in a.shift.split(",") if c]
        targets += [(f"var k={k}", q.mean, float(k) * vq) for k in a.var.split(",") if k]
        for lam in (float(v) for v in a.prior.split(",") if v):
            prec = 1 / vp + 1 / (lam * (1 - ab1))
            targets.append((f"prior lambda={lam:g}", (p.mean / vp + math.sqrt(ab1) * x0 / (lam * (1 - ab1))) / prec, 1 / prec))
        line = [f"q: {base:7.1f} bits (KL {float(-logw.mean()):6.1f} + L0 {float(L.mean()):6.1f}); gap >= {gaps[-1][0]:5.1f}, "
                f"Gaussian {gaps[-1][1]:5.1f}"]
        for name, mu, var in targets:
            lr, Lr = draws(pix, mu, var, p, vp)
            diff = float((Lr - lr).mean()) - base
            rows.setdefault(name, []).append(diff)
            line.append(f"{name}: {diff:+6.1f}")
        print(" | ".join(line), flush=True)
    gi, gg = np.array(gaps).T
    print(f"\nlast step's ELBO gap, mean over {len(imgs)} images: >= {gi.mean():.1f} bits (K = {K}); "
          f"{gg.mean():.1f} if log w were Gaussian")
    for name, v in rows.items():
        v = np.array(v)
        print(f"{name:>18}: {v.mean():+7.1f} ± {v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0:.1f} bits against q")


if __name__ == "__main__":
    main()
