"""Issue 16 experiment: a learned context model for x_0 given x_tau (``ddpm_codec.models.x0_context``)
against today's x_0 model, as ideal code lengths on held-out CIFAR-10 test images.

    python benchmarks/x0_context.py features --tau 1 --draws 2 --out ~/x0ctx/feat-t1.npz   # ~3 min CPU
    python benchmarks/x0_context.py train --feat ~/x0ctx/feat-t1.npz --run ~/x0ctx/run1 --minutes 45
    python benchmarks/x0_context.py export --run ~/x0ctx/run1 --out ctx.safetensors          # fp16 weights
    python benchmarks/x0_context.py eval --feat ~/x0ctx/feat-t1.npz --run ~/x0ctx/run1 [--exact]
    python benchmarks/x0_context.py eval --feat ~/x0ctx/feat-t1.npz --weights models/weights/x0-context/cifar10-cpu-small-tau1.safetensors --exact
    python benchmarks/x0_context.py eval-chain --weights models/weights/x0-context/cifar10-cpu-small-tau1.safetensors -n 40

``features``: for the train images (``--draws`` noise draws each) and test images 0..199, x_tau =
sqrt(abar) x_0 + sqrt(1 - abar) eps, the shipped model's x_hat_0 at tau, and Eq. 13's fitted scale.
``train``: AdamW, batch 64, one random pass per image, random horizontal flips, cosine learning
rate over ``--minutes`` (resumes from ``RUN/ck.pt``; the rate schedule follows elapsed time), test
code length after every epoch. ``eval``: bits per image of the test images under (a) Eq. 13 alone,
(b) profile 9's x_0 model (Eq. 13 + its per-tile side information, 67 bits included, chosen by the
encoder's own policy), (c) the context model (float, or ``--exact``; both with the bits it adds).
All figures are ideal code lengths (-log2 P summed), not file sizes; x_tau here is a fresh draw
from q(x_tau | x_0), not a reverse-channel-coded chain state. Data: ../shared/data (read only).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import constriction
import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-subset.npz"


def features(args) -> None:
    import ddpm_codec as dc

    model = dc.load_model()
    d = model.diffusion
    data = np.load(DATA)
    g = torch.Generator().manual_seed(1234 + args.tau)
    out = {}
    for split, n, draws in (("train", None, args.draws), ("test", args.test, 1)):
        imgs = data[f"{split}_images"][:n]
        x0 = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        xs, hs = [], []
        for _ in range(draws):
            for i in range(0, len(x0), 64):
                b = x0[i:i + 64]
                xt = d.q_sample(b, torch.full((len(b),), args.tau), torch.randn(b.shape, generator=g)).float()
                with torch.no_grad():
                    eps = model.eps(xt, args.tau)
                xs.append(xt.numpy())
                hs.append(d.predict_x0(xt, args.tau, eps).float().numpy())
        out[f"{split}_xt"], out[f"{split}_xhat"] = np.concatenate(xs), np.concatenate(hs)
        out[f"{split}_x0"] = np.tile(imgs.transpose(0, 3, 1, 2), (draws, 1, 1, 1))
        print(split, out[f"{split}_xt"].shape, flush=True)
    out["scale"] = np.array(float(d.decoder_scale(args.tau, "fitted", torch.zeros(1))))
    out["tau"] = np.array(args.tau)
    np.savez(Path(args.out).expanduser(), **out)


def _load(feat: str):
    f = np.load(Path(feat).expanduser())
    tr = [torch.from_numpy(f[f"train_{k}"]) for k in ("x0", "xt", "xhat")]
    te = [torch.from_numpy(f[f"test_{k}"]) for k in ("x0", "xt", "xhat")]
    return f, tr, te


def train(args) -> None:
    from ddpm_codec.models.x0_context import (
        NUM_PASSES,
        ContextConfig,
        ContextX0Net,
        code_length_bits,
        discretized_gaussian_bits,
        pass_masks,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    f, tr, te = _load(args.feat)
    run = Path(args.run).expanduser()
    run.mkdir(parents=True, exist_ok=True)
    net = ContextX0Net(ContextConfig(args.channels, args.blocks, float(f["scale"]), int(f.get("tau", 1))))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ck = run / "ck.pt"
    step, used = 0, 0.0
    if ck.exists():
        s = torch.load(ck)
        net.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        step, used = s["step"], s["t"]
    print("parameters", sum(p.numel() for p in net.parameters()), flush=True)
    t0 = time.time() - used
    limit = args.minutes * 60
    n = len(tr[0])
    while time.time() - t0 < limit:
        perm = torch.randperm(n)
        for i in range(0, n - args.bs + 1, args.bs):
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - t0) / limit)))
            x0, xt, xh = (t[perm[i:i + args.bs]] for t in tr)
            if torch.rand(()) < 0.5:
                x0, xt, xh = x0.flip(3), xt.flip(3), xh.flip(3)
            known, target = pass_masks(torch.randint(0, NUM_PASSES, (len(x0),)), 32, 32)
            mean, scale = net(x0, xt, xh, known, target)
            loss = (discretized_gaussian_bits(x0, mean, scale) * target).sum() / target.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if time.time() - t0 >= limit:
                break
        net.eval()
        with torch.no_grad():
            bits = float(code_length_bits(net, *te).mean())
        net.train()
        print(f"step {step} {time.time() - t0:.0f} s: test {bits:.1f} bits/img", flush=True)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, "t": time.time() - t0,
                    "config": net.config.to_dict()}, ck)


def evaluate(args) -> None:
    from ddpm_codec.models.x0_context import (
        ContextConfig,
        ContextX0Net,
        ExactContextX0,
        code_length_bits,
        load_weights,
    )

    from ddpm_codec import codec
    from ddpm_codec.codec.x0 import X0Side
    from ddpm_codec.coding import entropy

    torch.set_num_threads(args.threads)
    f, _, (x0, xt, xh) = _load(args.feat)
    n = len(x0)
    s9 = codec.settings_with(9)
    means = xh.double().numpy()
    scales = np.full_like(means, float(f["scale"]))
    mask = np.ones(means.shape, bool)
    eq13 = side = 0.0
    for i in range(n):
        sl = slice(i, i + 1)
        pix = x0[sl].numpy()
        eq13 += entropy.ideal_bits(pix.ravel(), means[sl].ravel(), scales[sl].ravel())
        sd = X0Side.choose(s9, pix, means[sl], scales[sl], mask[sl])
        em, es = sd.apply(means[sl], scales[sl], pix, mask[sl])
        side += entropy.ideal_bits(pix.ravel(), em.ravel(), es.ravel()) + sd.num_bits()
    if args.weights:   # the fp16 export
        net, steps = load_weights(Path(args.weights).expanduser()), "fp16 weights"
    else:
        s = torch.load(Path(args.run).expanduser() / "ck.pt")
        net = ContextX0Net(ContextConfig(**s["config"]))
        net.load_state_dict(s["model"])
        net.eval()
        steps = f"{s['step']} steps"
    t = time.perf_counter()
    with torch.no_grad():
        ctx = code_length_bits(net, x0, xt, xh)
    tf = time.perf_counter() - t
    print(f"tau {int(f.get('tau', 1))}, CIFAR-10 test images 0..{n - 1}, ideal bits per image of x_0:")
    print("| model | bits/img | bits/dim of the image | vs profile 9's x_0 model |\n|---|---|---|---|")
    for name, b in (("Eq. 13 (x_hat_0, fitted scale)", eq13 / n), ("profile 9 (Eq. 13 + 67 bits side information)", side / n),
                    (f"context model, float ({steps})", float(ctx.mean()))):
        print(f"| {name} | {b:.1f} | {b / 3072:.4f} | {b - side / n:+.1f} |")
    print(f"context model: {sum(p.numel() for p in net.parameters())} parameters; float 12 passes {tf / n * 1e3:.1f} ms/img "
          f"({torch.get_num_threads()} threads)")
    if args.exact:
        ex = ExactContextX0(net)
        t = time.perf_counter()
        with torch.no_grad():
            e = code_length_bits(ex, x0, xt.double(), xh.double())
        te = time.perf_counter() - t
        print(f"exact: {float(e.mean()):.1f} bits/img (max |exact - float| {float((e - ctx).abs().max()):.3f} bits/img), "
              f"{te / n * 1e3:.1f} ms/img; worst sum bound 2^{max(ex.ctx.bounds.values()):.1f}")
        import ddpm_codec as dc

        model, one = dc.load_model(), [t[:1] for t in (x0, xt, xh)]
        unet, exact12 = [], []
        for _ in range(5):   # interleaved: one float U-Net call (profile 9's decoder makes 48) vs 12 exact passes
            t = time.perf_counter()
            with torch.no_grad():
                model.eps(one[1], 1)
            unet.append(time.perf_counter() - t)
            t = time.perf_counter()
            code_length_bits(ex, one[0], one[1].double(), one[2].double())
            exact12.append(time.perf_counter() - t)
        print(f"one image: 12 exact passes {min(exact12) * 1e3:.1f} ms = {min(exact12) / min(unet):.2f} float U-Net calls "
              f"at batch 1 ({min(unet) * 1e3:.1f} ms; profile 9's decoder makes 48)")


def eval_chain(args) -> None:
    """The context model on the chain's real x_tau: encode test images with the default profile (its x_0
    stage's actual bits in the file), capture the chain state the x_0 stage sees, and code x_0 under the
    context model from that state (ideal bits, exact arithmetic)."""
    from ddpm_codec.models.x0_context import (
        ExactContextX0,
        code_length_bits,
        load_weights,
    )

    import ddpm_codec as dc
    from ddpm_codec import codec
    from ddpm_codec.codec import api
    from ddpm_codec.codec.x0 import read_pixels_context, write_pixels_context

    torch.set_num_threads(args.threads)
    model = dc.load_model()
    net = load_weights(Path(args.weights).expanduser())
    ex = ExactContextX0(net)
    imgs = np.load(DATA)["test_images"][args.start:args.start + args.n]
    seen = {}
    inner = api.x0_model

    def spy(diffusion, x, tau, eps, variance):
        means, scales = inner(diffusion, x, tau, eps, variance)
        seen["x"], seen["xhat"], seen["tau"] = x.clone(), means.copy(), tau
        return means, scales

    api.x0_model = spy
    rows, times = [], []
    try:
        for img in imgs:
            e = codec.encode(img, model)
            pix = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
            xt, xhat = seen["x"].double(), torch.from_numpy(seen["xhat"])
            bits = float(code_length_bits(ex, pix, xt, xhat)[0])
            mask = np.ones(pix.shape, bool)
            t0 = time.perf_counter()
            enc = constriction.stream.queue.RangeEncoder()
            write_pixels_context(enc, ex, pix.numpy(), xt, xhat, mask)
            words = enc.get_compressed()
            t1 = time.perf_counter()
            back = read_pixels_context(constriction.stream.queue.RangeDecoder(words), ex, xt, xhat, mask)
            t2 = time.perf_counter()
            assert np.array_equal(back, pix.numpy()), "context coder round trip failed"
            rows.append((e.x0_bits, e.x0_ideal_bits + e.x0_side_bits, bits, 32 * len(words), 8 * len(e.data)))
            times.append((t1 - t0, t2 - t1, e.network_seconds / len(e.steps)))
    finally:
        api.x0_model = inner
    r, tm = np.array(rows), np.array(times)
    d = r[:, 3] - r[:, 0]
    print(f"default profile, CIFAR-10 test images {args.start}..{args.start + len(r) - 1}, tau {seen['tau']} (the chain's own "
          "x_tau), x_0 bits per image:")
    print("| x_0 stage | bits/img |\n|---|---|")
    print(f"| profile 9: actual bits in the files (incl. 67 side bits) | {r[:, 0].mean():.1f} |")
    print(f"| profile 9: ideal, with its side information | {r[:, 1].mean():.1f} |")
    print(f"| context model (exact): ideal | {r[:, 2].mean():.1f} |")
    print(f"| context model (exact): coded by the pass-by-pass coder, decoded back exactly | {r[:, 3].mean():.1f} |")
    print(f"coded context - profile 9 actual: {d.mean():+.1f} ± {d.std(ddof=1) / math.sqrt(len(d)):.1f} bits/img "
          f"({d.mean() / 3072:+.4f} bits/dim); profile 9 files {r[:, 4].mean() / 3072:.4f} bits/dim; with the context "
          f"model's x_0 stage instead ≈ {(r[:, 4] + d).mean() / 3072:.4f} (estimate: coded in a separate stream here, not a file)")
    print(f"time per image: context encode {tm[:, 0].mean():.3f} s, decode {tm[:, 1].mean():.3f} s = "
          f"{tm[:, 1].mean() / tm[:, 2].mean():.1f} float U-Net calls of the same encodes (profile 9 decodes with "
          f"{len(e.steps)})")


def export(args) -> None:
    from ddpm_codec.models.x0_context import ContextConfig, ContextX0Net, save_weights

    s = torch.load(Path(args.run).expanduser() / "ck.pt")
    net = ContextX0Net(ContextConfig(**s["config"]))
    net.load_state_dict(s["model"])
    if args.attach:   # ship it with a saved model: weights beside it, config names them with their hash
        from ddpm_codec.models.checkpoint import add_x0_context

        print(f"{add_x0_context(args.attach, net)}: step {s['step']}, fp16, named by {args.attach}")
        return
    if not args.out:
        raise SystemExit("export: give --out or --attach")
    save_weights(net, Path(args.out).expanduser())
    print(f"{args.out}: step {s['step']}, fp16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("features")
    a.add_argument("--tau", type=int, default=1)
    a.add_argument("--draws", type=int, default=2)
    a.add_argument("--test", type=int, default=200)
    a.add_argument("--out", required=True)
    a = sub.add_parser("train")
    a.add_argument("--feat", required=True)
    a.add_argument("--run", required=True)
    a.add_argument("--minutes", type=float, default=45)
    a.add_argument("--channels", type=int, default=48)
    a.add_argument("--blocks", type=int, default=4)
    a.add_argument("--bs", type=int, default=64)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = sub.add_parser("eval-chain")
    a.add_argument("--weights", required=True)
    a.add_argument("-n", type=int, default=20)
    a.add_argument("--start", type=int, default=0)
    a.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("export")
    a.add_argument("--run", required=True)
    a.add_argument("--out", help="write the fp16 weights here")
    a.add_argument("--attach", help="or ship them with this saved model (e.g. models/weights/cifar10-cpu-small)")
    a = sub.add_parser("eval")
    a.add_argument("--feat", required=True)
    a.add_argument("--run")
    a.add_argument("--weights", help="an exported fp16 .safetensors instead of RUN/ck.pt")
    a.add_argument("--exact", action="store_true")
    a.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"features": features, "train": train, "export": export, "eval": evaluate, "eval-chain": eval_chain}[args.cmd](args)


if __name__ == "__main__":
    main()
