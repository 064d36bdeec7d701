"""The exact-arithmetic U-Net (models/exact.py): close to the float net, own math functions,
the 2^53 bound, and bit-identical outputs across SIMD levels / thread counts (subprocesses)."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_codec.models.exact import (BoundError, ExactConfig, ExactUNet, check_sum_bound, exp, sigmoid, sin_cos,
                                     timestep_embedding_exact)
from ddpm_codec.models.unet import UNet, UNetConfig, timestep_embedding

SMALL = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32, dropout=0.0)
TIMES = (1, 10, 500, 1000)


def small_net() -> UNet:
    """A small U-Net whose weights come from numpy's default_rng(0) rounded to fp16 (not from
    torch's initialisers, which may change between torch versions), so the golden hash below
    depends only on the exact arithmetic."""
    net = UNet(SMALL).eval()
    g = np.random.default_rng(0)
    state = {}
    for name, p in sorted(net.state_dict().items()):
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight") \
                or name.endswith("norm_out.weight"):
            v = 1.0 + 0.1 * g.standard_normal(p.shape)
        elif name.endswith("bias"):
            v = 0.05 * g.standard_normal(p.shape)
        else:
            fan_in = int(np.prod(p.shape[1:]))
            v = g.standard_normal(p.shape) / math.sqrt(fan_in)
        state[name] = torch.from_numpy(v.astype(np.float16).astype(np.float32))
    net.load_state_dict(state)
    return net


def small_input() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))


def digest(ex: ExactUNet, x: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in TIMES:
        h.update(ex(x, t).numpy().tobytes())
    return h.hexdigest()


def _child_digest() -> str:                 # what the subprocesses run
    return digest(ExactUNet(small_net()), small_input())


@pytest.fixture(scope="module")
def net_and_exact():
    net = small_net()
    return net, ExactUNet(net)


def test_close_to_float(net_and_exact):
    """Every activation is rounded to 2^-16 (error ≤ 7.6e-6 each); through ~15 layers with
    gains ~O(1) the output differs from float32 by ~1e-5..1e-4 (measured: max ~2e-4 on this
    random model, outputs up to 3). Tolerance 2e-3 absolute (outputs here are O(1)) and 1e-4 RMS."""
    net, ex = net_and_exact
    x = small_input()
    for t in TIMES:
        with torch.no_grad():
            ref = net(x, torch.full((2,), t)).double()
        out = ex(x, t)
        assert out.dtype == torch.float64 and out.shape == ref.shape
        assert ref.abs().max() > 0.1                         # a non-trivial output
        assert (out - ref).abs().max() < 2e-3
        assert (out - ref).pow(2).mean().sqrt() < 1e-4


def test_own_functions_against_libm():
    xs = np.linspace(-700.0, 700.0, 200_001)
    got = exp(torch.from_numpy(xs)).numpy()
    ref = np.array([math.exp(v) for v in xs])
    assert np.max(np.abs(got - ref) / ref) < 1e-15          # a few ulp (measured ~4e-16)
    xs = np.linspace(-1000.0, 1000.0, 400_001)
    s, c = sin_cos(torch.from_numpy(xs))
    assert np.max(np.abs(s.numpy() - np.array([math.sin(v) for v in xs]))) < 1e-15
    assert np.max(np.abs(c.numpy() - np.array([math.cos(v) for v in xs]))) < 1e-15
    xs = np.linspace(-40.0, 40.0, 80_001)
    sg = sigmoid(torch.from_numpy(xs)).numpy()
    ref = np.array([1.0 / (1.0 + math.exp(-v)) for v in xs])
    assert np.max(np.abs(sg - ref) / ref) < 1e-15
    # the time embedding follows the float path (float32 args): within float32 rounding of it
    t = torch.tensor([1, 7, 500, 1000])
    assert (timestep_embedding_exact(t, 32) - timestep_embedding(t, 32).double()).abs().max() < 1e-6


def test_bound_check_rejects():
    w = torch.full((2, 64, 3, 3), 2.0**16)              # Σ|W| = 576 · 2^16 ≈ 2^25.2
    assert check_sum_bound("ok", w, 2.0**25) < 53
    with pytest.raises(BoundError):
        check_sum_bound("too-big", w, 2.0**28)
    with pytest.raises(BoundError):                     # 30-bit weights: sums can pass 2^53
        ExactUNet(small_net(), ExactConfig(weight_bits=30))


@pytest.mark.slow
@pytest.mark.subprocess
def test_same_bits_under_other_isa_and_threads(net_and_exact):
    _, ex = net_and_exact
    mine = digest(ex, small_input())
    code = ("import importlib.util, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            f"s = importlib.util.spec_from_file_location('tme', {str(Path(__file__))!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m._child_digest())")
    runs = [({"ATEN_CPU_CAPABILITY": "default"}, 1),
            ({"ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"}, 2),
            ({"NUMBA_CPU_NAME": "generic", "ATEN_CPU_CAPABILITY": "default"}, 2)]   # kernels without AVX
    procs = []
    for extra, threads in runs:
        env = dict(os.environ, **extra)
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(threads)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p, (extra, _) in zip(procs, runs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == mine, extra


def test_compiled_kernels_give_the_torch_paths_bits(net_and_exact):
    """The compiled elementwise loops (models/exact_kernels.py, the CPU default) and the torch
    code they replace give the same bits: inputs of ordinary size, and inputs 150x larger, which
    drive activations into the clamp and the SiLU's pass-through and zero ends."""
    net, ex = net_and_exact
    assert ex.ctx.kernels is not None
    ref = ExactUNet(net, kernels="torch")
    assert ref.ctx.kernels is None
    x = small_input()
    assert digest(ex, x) == digest(ref, x)
    big = x * 150.0
    assert ex.ctx.q(ex.grid(big)).abs().max() == ex.ctx.amax          # the input clamp is reached
    for t in (1, 1000):
        assert torch.equal(ex(big, t), ref(big, t))


def test_silu_and_softmax_kernels_against_the_torch_code():
    """Element by element on values chosen at the SiLU table's edges and node boundaries, and on
    attention rows with ties, large gaps (the -40 floor) and one dominant entry."""
    from ddpm_codec.models import exact_kernels as K
    from ddpm_codec.models.exact import _EXP_ARGS, _Ctx

    cfg = ExactConfig()
    fast, ref = _Ctx(cfg, torch.device("cpu"), "numba"), _Ctx(cfg, torch.device("cpu"), "torch")
    off, step = fast.silu_off, 2.0 ** (cfg.act_bits - cfg.silu_bits)
    g = np.random.default_rng(3)
    edges = np.array([-off - 1, -off, -off + 0.5, off - 1, off - 0.5, off, off + 0.25, 0.0, -0.0, step, -step,
                      step - 0.5, fast.amax, -fast.amax, fast.amax + 7])
    a = torch.from_numpy(np.concatenate([edges, g.uniform(-1.2 * off, 1.2 * off, 20000),
                                         np.round(g.uniform(-off, off, 20000))]))
    assert torch.equal(fast.silu(a), ref.silu_torch(a))
    rows = np.round(g.normal(0, 2**34, (6, 256)))
    rows[1] = 5.0                                  # all tied
    rows[2, 7] = 2**40                             # one dominant entry: the rest hit the floor
    rows[3, ::2] = -2**45
    s_ref = torch.from_numpy(rows * 0.5 ** 35)
    s_fast = s_ref.clone()
    K.softmax_weights(s_fast.numpy(), -40.0, 2.0**cfg.exp_bits, 2.0**cfg.prob_bits, *_EXP_ARGS)
    s_ref.sub_(s_ref.amax(-1, keepdim=True)).clamp_(min=-40.0)
    e = exp(s_ref).mul_(2.0**cfg.exp_bits).round_()
    z = e.sum(-1, keepdim=True)
    p = e.mul_(2.0**cfg.prob_bits).div_(z).round_()
    assert p[2, 7] == 2.0**cfg.prob_bits and p[1, 0] == 2.0**cfg.prob_bits / 256
    assert torch.equal(s_fast, p)


_FMA_CHILD = """
import json, re, sys, importlib.util
s = importlib.util.spec_from_file_location('tme', sys.argv[1]); m = importlib.util.module_from_spec(s)
s.loader.exec_module(m)
from ddpm_codec.models import exact_kernels as K
m.ExactUNet(m.small_net())(m.small_input(), 10)          # compiles every kernel the network uses
out = {}
for name in ("epilogue", "epilogue_wide", "silu", "silu_row", "gn_sums", "gn_params", "gn_apply", "gn_apply_pad",
             "softmax_weights"):
    asm = "".join(getattr(K, name).inspect_asm().values())
    out[name] = [len(re.findall(r"\\bmulsd|\\bvmulsd|\\bvmulpd|\\bmulpd|\\baddsd|\\bvaddsd|\\bvaddpd|\\bvpadd", asm)),
                 len(re.findall(r"\\bv?f(n)?m(add|sub)", asm))]
print(json.dumps(out))
"""


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 machine code")
@pytest.mark.slow
@pytest.mark.subprocess
def test_compiled_kernels_contain_no_fused_multiply_add(tmp_path):
    """A fused a·b + c rounds once where the torch code rounds twice: the kernels must contain no
    FMA instruction (numba without fastmath emits none). Compiled afresh in a subprocess (an empty
    numba cache: cached code cannot be inspected), on this CPU, which has FMA."""
    import json

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", _FMA_CHILD, str(Path(__file__))], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    for name, (arith, fma) in counts.items():
        assert arith > 0, name                     # the inspection saw real code
        assert fma == 0, name


def test_golden_hash(net_and_exact):
    """Pins the exact arithmetic: this digest must never change (any platform, torch version,
    thread count). If it does, files encoded with the exact network no longer decode."""
    _, ex = net_and_exact
    assert digest(ex, small_input()) == GOLDEN


GOLDEN = "a6e8fef91dcbae669f132c3c872ab857691396b6da67caca18a214da86caa780"


@pytest.mark.parametrize("cin,cout,hw", [(32, 32, 32), (64, 32, 32), (32, 48, 40)])
def test_shifted_conv_equals_an_integer_reference_at_the_bound(cin, cout, hw):
    """The 9-GEMM shifted conv of large layers against an int64 im2col product (exact by
    construction), with weights and activations at the extremes the bound check allows."""
    import torch.nn.functional as F

    from ddpm_codec.models.exact import _Ctx, _QConv

    g = torch.Generator().manual_seed(cin + hw)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(conv.weight.shape, generator=g) - 0.5)
    q = _QConv(_Ctx(ExactConfig(), torch.device("cpu")), "t", conv, amax_in=2.0**26)
    assert q.wk is not None
    a = torch.randint(-2**26, 2**26 + 1, (1, cin, hw, hw), generator=g, dtype=torch.int64)
    a[0, :, 0, :] = 2**26                              # the border rows and columns at the clamp
    a[0, :, :, -1] = -2**26
    cols = F.unfold(a.double(), 3, padding=1).to(torch.int64)
    ref = (q.w_int.to(torch.int64).reshape(cout, -1) @ cols).reshape(1, cout, hw, hw)
    got = q._shifted(a.double())
    assert torch.equal(got.to(torch.int64), ref) and torch.equal(got, ref.double())
