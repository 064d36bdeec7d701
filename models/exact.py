"""Exact-arithmetic inference for the DDPM U-Net: ε̂ bit-for-bit the same on any IEEE-754 machine.

The float network's output depends on summation order (SIMD width, BLAS blocking, threads,
GPU reductions), on FMA contraction and on libm (``exp``, ``sin``, ``cos``). This module runs
the same U-Net (:class:`~ddpm_codec.models.unet.UNet`) so that none of those matter:

* **Fixed-point activations.** Every activation is an integer ``A`` meaning ``A · 2^-act_bits``
  (default 2^-16), clamped to ``|A| ≤ Amax = act_clamp · 2^act_bits`` (default 512), held in
  float64 tensors.
* **Integer weights.** Each conv/linear output channel ``c`` gets an integer weight tensor
  ``W_int = round(W · 2^e_c)``, ``|W_int| ≤ 2^weight_bits`` (a power-of-two scale per channel).
  At preparation :func:`check_sum_bound` asserts ``max_c Σ|W_int[c]| · Amax < 2^53``, so every
  product and every partial sum of ``conv2d``/``matmul`` in float64 is an integer below 2^53:
  *exact* in any order, with or without FMA, on any number of threads, CPU or GPU.
  The result ``S`` becomes ``round(S · 2^-e_c + b · 2^act_bits)``: one correctly rounded
  multiply-by-a-power-of-two (exact), one add and a round, elementwise.
* **GroupNorm.** Σ A (float64, exact: < 2^53) and Σ A² (int64, exact; bound asserted), then
  mean, variance, ``1/√(var + eps)`` with IEEE ÷ and √, and ``round(A · scale + shift)``.
* **SiLU** by a table on nodes ``x_j = -R + j·2^-8`` (R = 20), built once from our own ``exp``
  (:func:`exp`: range reduction by an exact power of two, a fixed degree-13 polynomial, only + ×),
  and *integer* linear interpolation between nodes (max error 1e-6, under the 2^-16 grid):
  ``T_j + round(ΔT_j · f · 2^-8)``; ``x ≥ R`` passes through, ``x ≤ -R`` gives 0.
* **Attention.** q, k clamped so that ``c · Qmax² < 2^53``; scores ``q·k`` exact integers;
  ``× 2^-2·act_bits / √c`` (a power of two when c is a power of 4); minus the row max (exact);
  our own ``exp``; numerators rounded to 2^-30 and summed exactly; weights
  ``P = round(E · 2^prob_bits / Z)`` (integers); ``P·v`` exact integers (bound asserted).
* **Time embedding.** Frequencies and ``t·freq`` follow the float path's float32 arithmetic
  (emulated with IEEE ops: a float64 result of float32 operands rounded to float32 is the
  correctly rounded float32 result), ``exp``, ``sin``, ``cos`` are ours (Cody–Waite reduction,
  fixed polynomials); the time MLP and the blocks' projections are exact as above and cached per t.

Everything else is exact integer data movement (concat, nearest upsample, padding). Only the
elementwise ops + − × ÷ √, round, floor, clamp, comparisons, gathers and exact sums are used on
values that get rounded, never libm, and never a fused op (addcmul, lerp, ``alpha=``) that a
kernel might contract into an FMA. Elementwise torch ops are one IEEE operation each on CPU and
on CUDA (double division and sqrt are IEEE-rounded by default there), so the GPU path is exact too,
if the convolutions run as im2col + matmul (cuDNN may pick FFT/Winograd, which are not sums of
exact products): :class:`ExactUNet` does that off CPU and checks the backend once
(:func:`verify_backend`). See docs/results/exact-network.md for measurements.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coding import detmath
from ..errors import Error
from .unet import AttnBlock, ResBlock, UNet, unet_walk

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

__all__ = [
    "ExactConfig",
    "ExactUNet",
    "BoundError",
    "check_sum_bound",
    "exp",
    "sigmoid",
    "sin_cos",
    "silu_table",
    "verify_backend",
]

_F64 = torch.float64
_TWO53 = 2.0**53
_TWO63 = 2**63


class BoundError(Error, ValueError):
    """A layer whose exact integer sums could reach 2^53 (float64) or 2^63 (int64)."""


@dataclass(frozen=True)
class ExactConfig:
    act_bits: int = 16          # activation grid 2^-act_bits
    act_clamp: float = 512.0    # |activation| ≤ act_clamp (the float net's stay below ~15 on CIFAR-10)
    weight_bits: int = 16       # |W_int| ≤ 2^weight_bits per output channel
    silu_bits: int = 8          # SiLU table step 2^-silu_bits
    silu_range: int = 20        # table on [-R, R]; x ≥ R: x, x ≤ -R: 0 (|error| < 5e-8)
    exp_bits: int = 30          # softmax numerators rounded to 2^-exp_bits
    prob_bits: int = 24         # attention weights rounded to 2^-prob_bits

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Own elementwise functions (float64 tensors; only + - * / sqrt, round, floor, comparisons)
# ----------------------------------------------------------------------------------------------

def exp(x: torch.Tensor) -> torch.Tensor:
    """e^x for float64 ``x`` (clamped to [-708, 709]) with :func:`ddpm_codec.coding.detmath.exp`:
    deterministic, rel. error < 4e-16."""
    x = torch.as_tensor(x, dtype=_F64).clamp(-708.0, 709.0)
    return torch.from_numpy(np.asarray(detmath.exp(x.cpu().numpy()), dtype=np.float64)).to(x.device)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-x) with :func:`ddpm_codec.coding.detmath.sigmoid`."""
    x = torch.as_tensor(x, dtype=_F64)
    return torch.from_numpy(np.asarray(detmath.sigmoid(x.cpu().numpy()), dtype=np.float64)).to(x.device)


def sin_cos(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin x, cos x) for float64 |x| < 1e6 with :func:`ddpm_codec.coding.detmath.sin_cos`."""
    x = torch.as_tensor(x, dtype=_F64)
    s, c = detmath.sin_cos(x.cpu().numpy())
    return (torch.from_numpy(np.asarray(s, dtype=np.float64)).to(x.device),
            torch.from_numpy(np.asarray(c, dtype=np.float64)).to(x.device))


def silu_table(cfg: ExactConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, D): T_j = round(silu(x_j) · 2^act_bits) at x_j = -R + j 2^-silu_bits, D_j = T_{j+1} - T_j."""
    n = 2 * cfg.silu_range << cfg.silu_bits
    xj = torch.arange(n + 2, dtype=_F64) * (2.0 ** -cfg.silu_bits) - cfg.silu_range   # exact
    tab = torch.round((xj * sigmoid(xj)) * 2.0**cfg.act_bits)
    return tab[:-1].contiguous(), (tab[1:] - tab[:-1]).contiguous()


# ----------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------

def check_sum_bound(name: str, w_int: torch.Tensor, amax_in: float) -> float:
    """Worst |partial sum| of ``w_int`` (rows: output channels) against inputs |A| ≤ ``amax_in``.

    Raises :class:`BoundError` unless it is below 2^53; returns it (as log2) otherwise.
    """
    row = w_int.reshape(w_int.shape[0], -1).abs().sum(1).max().item() if w_int.numel() else 0.0
    bound = row * amax_in
    if not bound < _TWO53:
        raise BoundError(f"{name}: Σ|W_int|·max|A| = 2^{math.log2(bound):.2f} ≥ 2^53; "
                         "lower weight_bits, act_bits or act_clamp")
    return math.log2(bound) if bound > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Samples in parallel
# ----------------------------------------------------------------------------------------------

_POOL: list = []           # one lazily made thread pool, grown to the largest thread count asked for
_LOCAL = threading.local()  # .split: how many threads a layer of the running call may use (1: none)


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    if not _POOL or _POOL[0]._max_workers < threads - 1:
        _POOL[:] = [ThreadPoolExecutor(max_workers=max(1, threads - 1), thread_name_prefix="ddpm-exact")]
    return _POOL[0]


def run_parallel(jobs: list) -> list:
    """Results of the zero-argument callables ``jobs``, run concurrently: the caller's thread runs the
    first, the pool the rest, and any the pool has not started by the time the caller is done are
    run by the caller too (work stealing). So on an idle machine they take the time of one job,
    and when the pool's threads get no core the caller finishes alone instead of waiting at a
    barrier. Whether to split at all is :class:`ThreadChooser`'s call, from measured times."""
    if len(jobs) == 1:
        return [jobs[0]()]
    futures = [_pool(len(jobs)).submit(j) for j in jobs[1:]]
    first = jobs[0]()
    return [first] + [j() if f.cancel() else f.result() for j, f in zip(jobs[1:], futures)]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block and restored after (None: as it is)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def split_count() -> int:
    """Threads the running exact call may split its samples over (1 outside a call or in a piece)."""
    return getattr(_LOCAL, "split", None) or 1


class ThreadChooser:
    """How an exact call uses ``most`` threads: all of them, or one, whichever ran faster lately
    (seconds per sample). One sample runs on torch's own (OpenMP) threads; a batch is split by
    samples over our pool (:func:`map_samples`); each kind of call keeps its own record. On an
    idle machine all threads win (1.3x on 2 cores here); beside a busy process OpenMP's threads
    wait at a barrier after every op for a thread that gets no core (3-30x slower than one
    thread, docs/results/exact-default.md), and a split waits for its slowest piece. The loser
    is tried again after 8, 16, ... 1024 calls. Speed only: the bits never depend on the choice."""

    def __init__(self):
        self.mean: dict[tuple[bool, int], float] = {}   # (batch?, threads) -> seconds a sample, running mean
        self.calls: dict[bool, int] = {}
        self.probe_at: dict[tuple[bool, int], int] = {}
        self.interval: dict[tuple[bool, int], int] = {}
        self.probing: tuple[bool, int] | None = None

    def pick(self, most: int, batch: bool = False) -> int:
        if most <= 1:
            return 1
        calls = self.calls[batch] = self.calls.get(batch, 0) + 1
        for k in (most, 1):                  # each measured once first
            if (batch, k) not in self.mean:
                return k
        best = most if self.mean[batch, most] <= self.mean[batch, 1] else 1
        other = (batch, 1 if best == most else most)
        if calls >= self.probe_at.get(other, 0):
            gap = min(2 * self.interval.get(other, 4), 1024)
            self.interval[other], self.probe_at[other] = gap, calls + gap
            self.probing = other
            return other[1]
        self.interval[batch, best] = 4
        return best

    def record(self, k: int, seconds: float, batch: bool = False) -> None:
        """A probe's time replaces that choice's mean (the machine may have changed since); the
        picked choice's times are averaged."""
        key = (batch, k)
        m = self.mean.get(key)
        self.mean[key] = seconds if m is None or key == self.probing else 0.7 * m + 0.3 * seconds
        self.probing = None

    def run(self, most: int, fn, *args):
        """``fn(*args)`` on all ``most`` threads or one, as picked, timed."""
        n = next(a.shape[0] for a in args if isinstance(a, torch.Tensor))
        batch = n > 1
        k = self.pick(most, batch)
        t0 = time.perf_counter()
        if batch and k > 1:
            _LOCAL.split = k
            try:
                with torch_threads(1):
                    out = map_samples(fn, *args)
            finally:
                _LOCAL.split = None
        else:
            with torch_threads(1 if batch else k):
                out = fn(*args)
        self.record(k, (time.perf_counter() - t0) / n, batch)
        return out


def run_exact(chooser: ThreadChooser, fn, *args, threads: int | None = None, device=torch.device("cpu")):
    """An exact network's call on ``threads`` threads (default: torch's count): one sample on torch's
    threads, a batch split over threads by samples (:func:`map_samples`), each piece on one torch
    thread, or either on one thread (:class:`ThreadChooser`). The same bits for any of these."""
    most = torch.get_num_threads() if threads is None else max(1, int(threads))
    if getattr(_LOCAL, "split", None) is not None or device.type != "cpu":   # a piece of a split call
        return fn(*args)
    return chooser.run(most, fn, *args)


def map_samples(fn, *args):
    """``fn(*args)`` with every tensor argument split along dim 0 into one piece per thread of the
    running call (:func:`run_exact`), the pieces run by :func:`run_parallel` (the GIL is
    released in torch's ops and the compiled kernels), the outputs concatenated along dim 0 (a
    tensor, or a tuple of tensors).

    Exact outputs are the same bits for any split: every value of a sample depends on that sample
    alone, and every sum in it is exact."""
    n = next(a.shape[0] for a in args if isinstance(a, torch.Tensor))
    threads = min(split_count(), n)
    if threads < 2:
        return fn(*args)
    cuts = [n * i // threads for i in range(threads + 1)]
    pieces = [[a[lo:hi] if isinstance(a, torch.Tensor) else a for a in args] for lo, hi in zip(cuts, cuts[1:])]

    def job(p):
        def run():
            old = getattr(_LOCAL, "split", None)
            _LOCAL.split = 1          # a piece's layers do not split again (whichever thread runs it)
            try:
                return fn(*p)
            finally:
                _LOCAL.split = old
        return run
    outs = run_parallel([job(p) for p in pieces])
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def _ldexp_tensor(e: list[int]) -> torch.Tensor:
    return torch.tensor([math.ldexp(1.0, int(v)) for v in e], dtype=_F64)


# ----------------------------------------------------------------------------------------------
# Layers (inputs and outputs: float64 integer-valued tensors on the activation grid)
# ----------------------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, cfg: ExactConfig, device: torch.device, kernels: str = "auto"):
        if kernels not in ("auto", "torch", "numba"):
            raise ValueError(f"kernels must be 'auto', 'torch' or 'numba', not {kernels!r}")
        self.cfg = cfg
        self.device = device
        # elementwise work: compiled loops on the CPU (exact_kernels, the same bits), else torch
        self.kernels = None
        if kernels == "numba" or (kernels == "auto" and device.type == "cpu" and HAVE_NUMBA):
            if device.type != "cpu":
                raise ValueError("the compiled exact kernels run on the CPU only")
            from . import exact_kernels

            self.kernels = exact_kernels
        self.amax = float(math.ldexp(cfg.act_clamp, cfg.act_bits))
        if self.amax != math.floor(self.amax):
            raise ValueError("act_clamp · 2^act_bits must be an integer")
        self.bounds: dict[str, float] = {}
        t, d = silu_table(cfg)
        self.silu_t, self.silu_d = t.to(device), d.to(device)
        self.silu_hi = math.ldexp(2 * cfg.silu_range << cfg.silu_bits, cfg.act_bits - cfg.silu_bits) - 1
        self.silu_off = float(cfg.silu_range << cfg.act_bits)
        self.gemm_conv = device.type != "cpu"
        if self.kernels is not None:
            sh = cfg.act_bits - cfg.silu_bits
            self._silu_args = (self.silu_t.numpy(), self.silu_d.numpy(), self.silu_off, self.silu_hi,
                               2.0**-sh, 2.0**sh, self.amax)

    def q(self, y: torch.Tensor) -> torch.Tensor:
        """round to the grid (y already in grid units) and clamp, in place."""
        return y.round_().clamp_(-self.amax, self.amax)

    def silu_torch(self, a: torch.Tensor) -> torch.Tensor:
        """SiLU on grid units ``a`` (integers, or any deterministic float64: GroupNorm's output):
        T_j + round(ΔT_j · f · 2^-sh) with j = floor(u 2^-sh), f = u - j 2^sh exact."""
        cfg = self.cfg
        sh = cfg.act_bits - cfg.silu_bits
        u = (a + self.silu_off).clamp_(0.0, self.silu_hi)
        j = (u * 2.0**-sh).floor_()
        f = u.sub_(j * 2.0**sh)                      # exact: u and j 2^sh share u's grid, result < 2^sh
        ji = j.to(torch.int64).reshape(-1)
        out = self.silu_d.index_select(0, ji).reshape(a.shape).mul_(f).mul_(2.0**-sh).round_()
        out.add_(self.silu_t.index_select(0, ji).reshape(a.shape))
        return torch.where(a >= self.silu_off, self.q(a.clone()), out)

    def silu(self, a: torch.Tensor) -> torch.Tensor:
        """:meth:`silu_torch`, by the compiled loop where there is one (the same bits)."""
        if self.kernels is None:
            return self.silu_torch(a)
        a = a.contiguous()
        out = torch.empty_like(a)
        self.kernels.silu(a.view(-1).numpy(), out.view(-1).numpy(), *self._silu_args)
        return out


class _QLinearBase:
    """Integer weights with per-output-channel power-of-two scales, bias on the grid."""

    def _prepare(self, ctx: _Ctx, name: str, weight: torch.Tensor, bias: torch.Tensor | None, amax_in: float):
        cfg = ctx.cfg
        w = weight.detach().to("cpu", _F64)
        cout = w.shape[0]
        flat = w.reshape(cout, -1)
        emax = []
        for c in range(cout):
            m = float(flat[c].abs().max())
            emax.append(cfg.weight_bits - math.frexp(m)[1] if m > 0 else 0)   # |W|·2^e < 2^weight_bits
        scale = _ldexp_tensor(emax)
        shape = (cout,) + (1,) * (w.dim() - 1)
        w_int = torch.round(w * scale.reshape(shape))
        self.log2_bound = check_sum_bound(name, w_int, amax_in)
        ctx.bounds[name] = self.log2_bound
        b = bias.detach().to("cpu", _F64) if bias is not None else torch.zeros(cout, dtype=_F64)
        self.w_int = w_int.to(ctx.device)
        self.inv = _ldexp_tensor([-e for e in emax]).to(ctx.device)        # 2^-e_c, exact
        self.bias = (b * 2.0**cfg.act_bits).to(ctx.device)                 # exact
        self.ctx = ctx


class _QConv(_QLinearBase):
    def __init__(self, ctx: _Ctx, name: str, conv: nn.Conv2d, amax_in: float | None = None):
        self._prepare(ctx, name, conv.weight, conv.bias, ctx.amax if amax_in is None else amax_in)
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.k = conv.kernel_size[0]
        self.inv4 = self.inv.reshape(1, -1, 1, 1)
        self.bias4 = self.bias.reshape(1, -1, 1, 1)
        self.w2 = self.w_int.reshape(self.w_int.shape[0], -1)
        cout, cin = self.w_int.shape[:2]
        self.wk = None                                   # [9, cout, cin] for _shifted (3x3, stride 1, pad 1)
        if (self.k, self.stride, self.padding) == (3, 1, 1) and cin >= SHIFTED_MIN_CIN:
            self.wk = self.w_int.permute(2, 3, 0, 1).reshape(9, cout, cin).contiguous()

    def takes_padded(self, a: torch.Tensor) -> bool:
        """Whether this layer runs on ``a`` (its unpadded input) as shifted GEMMs, which read a
        zero-bordered copy: the layer before may then write its output straight into one."""
        return (not self.ctx.gemm_conv and self.wk is not None
                and a.shape[-1] * a.shape[-2] >= SHIFTED_MIN_PIXELS)

    def raw(self, a: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """Σ W_int·A: exact integers (any algorithm that sums exact products). ``padded``: ``a`` already
        has the 3x3 layer's zero border. As shifted GEMMs the rows come back W + 2 wide (the last two
        columns are not outputs: :meth:`__call__` drops them)."""
        if not self.ctx.gemm_conv:   # one sample per call: float64 conv2d (im2col + GEMM) of 16 samples
            # at once ran 7x slower than 16 single-sample calls (65 vs 9 ms, 32 channels at 32x32)
            if padded:
                conv = self._wide
            elif (self.k, self.stride, self.padding) == (1, 1, 0):   # a 1x1 conv is one GEMM, no im2col
                def conv(x):
                    return torch.mm(self.w2, x.reshape(x.shape[1], -1)).reshape(1, -1, *x.shape[2:])
            elif self.takes_padded(a):
                def conv(x):
                    return self._wide(F.pad(x, (1, 1, 1, 1)))
            else:
                def conv(x):
                    return F.conv2d(x, self.w_int, None, self.stride, self.padding)
            if a.shape[0] == 1:
                return conv(a)
            return torch.cat([conv(a[i:i + 1]) for i in range(a.shape[0])])
        n, _, h, w = a.shape                             # (never padded here: takes_padded is False off CPU)
        ho = (h + 2 * self.padding - self.k) // self.stride + 1
        wo = (w + 2 * self.padding - self.k) // self.stride + 1
        cols = F.unfold(a, self.k, padding=self.padding, stride=self.stride)      # exact copies
        return torch.matmul(self.w2, cols).reshape(n, -1, ho, wo)

    def _shifted(self, a: torch.Tensor) -> torch.Tensor:
        """The 3x3 convolution of one unpadded sample by :meth:`_wide`, its extra columns dropped."""
        return self._wide(F.pad(a, (1, 1, 1, 1)))[..., :a.shape[-1]].contiguous()

    def _wide(self, ap: torch.Tensor) -> torch.Tensor:
        """A 3x3, stride-1, pad-1 conv of one zero-bordered sample ``ap [1, C, H + 2, W + 2]`` as 9 GEMMs
        on shifted views (no im2col copy): row y of the output, read on the padded width W + 2, is
        Σ_(dy,dx) W[:, :, dy, dx] · A_pad[:, y + dy, dx : dx + W], and each (dy, dx) term over all rows
        is one GEMM on the flat padded input at offset dy·(W+2) + dx. Returns ``[1, cout, H, W + 2]``
        whose last two columns are not outputs (the last row's are not even written). Every partial
        sum is a sub-sum of the layer's exact integer sum: the same bits."""
        _, c, hp, wp = ap.shape
        h = hp - 2
        flat = ap.reshape(c, hp * wp)
        m = h * wp - 2                                   # the last row's 2 extra columns would run off the end
        out = torch.empty(self.wk.shape[1], h * wp, dtype=ap.dtype, device=ap.device)
        acc = out[:, :m]
        acc.addmm_(self.wk[0], flat[:, :m], beta=0)      # beta 0: out's garbage is ignored, not added
        for j in range(1, 9):
            off = (j // 3) * wp + j % 3
            acc.addmm_(self.wk[j], flat[:, off:off + m])
        return out.reshape(1, -1, h, wp)

    def __call__(self, a: torch.Tensor, tp: torch.Tensor | None = None, res: torch.Tensor | None = None,
                 padded: bool = False) -> torch.Tensor:
        """``q(Σ W·A · 2^-e + b)``; then, given, ``clamp(· + tp[n, c])`` or ``clamp(· + res)``.
        ``padded``: ``a`` holds the zero border already (from :meth:`of_norm`)."""
        ctx = self.ctx
        s = self.raw(a, padded)
        n, c, h = s.shape[:3]
        w = a.shape[-1] - 2 if padded else (a.shape[-1] + 2 * self.padding - self.k) // self.stride + 1
        if ctx.kernels is not None:
            mode = 0 if tp is None and res is None else 1 if res is None else 2
            tpn = _NONE2 if tp is None else tp.contiguous().numpy()
            if s.shape[-1] == w:
                rn = _NONE3 if res is None else res.contiguous().view(n, c, -1).numpy()
                ctx.kernels.epilogue(s.view(n, c, -1).numpy(), self.inv.numpy(), self.bias.numpy(), ctx.amax, tpn, rn, mode)
                return s
            out = torch.empty(n, c, h, w, dtype=s.dtype)      # the shifted GEMMs' rows: drop 2 columns a row
            rn = _NONE4 if res is None else res.contiguous().numpy()
            ctx.kernels.epilogue_wide(s.numpy(), self.inv.numpy(), self.bias.numpy(), ctx.amax, tpn, rn, mode, out.numpy())
            return out
        if s.shape[-1] != w:
            s = s[..., :w].contiguous()
        out = ctx.q(s.mul_(self.inv4).add_(self.bias4))
        if tp is not None:
            out.add_(tp[:, :, None, None]).clamp_(-ctx.amax, ctx.amax)
        if res is not None:
            out.add_(res).clamp_(-ctx.amax, ctx.amax)
        return out

    def of_norm(self, norm: "_QGroupNorm", a: torch.Tensor, **kw) -> torch.Tensor:
        """``self(norm(a, silu=True), **kw)``, the norm writing straight into this layer's padded input
        where it runs as shifted GEMMs (no copy to pad)."""
        pad = self.takes_padded(a)
        return self(norm(a, silu=True, pad=pad), padded=pad, **kw)


# _QConv._shifted where it was faster than conv2d's im2col on one thread here (float64, one sample):
# 0.72-0.85x at 32x32 with 32-96 input channels, 1.0x at 16x16, 1.4x slower at 8x8 (its GEMMs too small).
SHIFTED_MIN_PIXELS = 1024
SHIFTED_MIN_CIN = 32

_NONE2, _NONE3, _NONE4 = np.zeros((1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 1))
_EXP_ARGS = (np.array(detmath._EXP_COEF), detmath._INV_LN2, detmath._LN2_HI, detmath._LN2_LO)


class _QLinear(_QLinearBase):
    def __init__(self, ctx: _Ctx, name: str, lin: nn.Linear):
        self._prepare(ctx, name, lin.weight, lin.bias, ctx.amax)
        self.wt = self.w_int.t().contiguous()

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return self.ctx.q(torch.matmul(a, self.wt).mul_(self.inv).add_(self.bias))


class _QGroupNorm:
    def __init__(self, ctx: _Ctx, name: str, gn: nn.GroupNorm, hw: int):
        self.ctx, self.g, self.eps = ctx, gn.num_groups, float(gn.eps)
        c = gn.num_channels
        n = (c // self.g) * hw
        amax = int(ctx.amax)
        if not (n * amax < _TWO53 and n * amax * amax < _TWO63):
            raise BoundError(f"{name}: group sums of {n} values |A| ≤ {amax} overflow; lower act_clamp")
        ctx.bounds[name] = math.log2(n * amax * amax)
        self.gamma = gn.weight.detach().to(ctx.device, _F64).reshape(1, self.g, c // self.g, 1)
        self.beta2 = (gn.bias.detach().to(ctx.device, _F64) * 2.0**ctx.cfg.act_bits).reshape(1, self.g, c // self.g, 1)
        self.gamma_n, self.beta2_n = self.gamma.reshape(-1).numpy(), self.beta2.reshape(-1).numpy()

    def __call__(self, a: torch.Tensor, *, silu: bool = False, pad: bool = False) -> torch.Tensor:
        """GroupNorm on the grid; with ``silu`` SiLU of the unrounded normalised value (one rounding);
        with ``pad`` inside a zero border one pixel wide (a 3x3 convolution's padded input)."""
        ctx = self.ctx
        n, c, h, w = a.shape
        cnt = float(c // self.g * h * w)
        if ctx.kernels is not None:
            k = ctx.kernels
            a = a.contiguous()
            a3 = a.view(n, c, -1).numpy()
            s1, s2 = np.empty((n, self.g)), np.empty((n, self.g), np.int64)
            k.gn_sums(a3, self.g, s1, s2)
            scale, shift = np.empty((n, c)), np.empty((n, c))
            k.gn_params(s1, s2, cnt, self.gamma_n, self.beta2_n, self.eps, 2.0 ** (-2 * ctx.cfg.act_bits), scale, shift)
            if pad:
                out = torch.zeros(n, c, h + 2, w + 2, dtype=a.dtype)
                kern, o = k.gn_apply_pad, out.numpy()
            else:
                out = torch.empty_like(a)
                kern, o = k.gn_apply, out.view(n, c, -1).numpy()
            kern(a3, scale, shift, o, silu, *ctx._silu_args)
            return out
        ag = a.reshape(n, self.g, c // self.g, h * w)
        s1 = ag.sum((2, 3), keepdim=True)                 # exact: integers < 2^53
        ai = ag.to(torch.int64)
        s2 = ai.mul_(ai).sum((2, 3), keepdim=True).to(_F64)   # exact int64 sum, one correctly rounded conversion
        mean = s1 / cnt
        var = (s2 / cnt - mean * mean).clamp_(min=0.0).mul_(2.0 ** (-2 * ctx.cfg.act_bits))
        rstd = 1.0 / torch.sqrt(var.add_(self.eps))       # [n, g, 1, 1], value units
        scale = rstd * self.gamma                         # [n, g, c/g, 1]
        shift = self.beta2 - mean * scale
        y = (ag * scale).add_(shift).reshape(n, c, h, w)
        y = ctx.silu(y) if silu else ctx.q(y)
        return F.pad(y, (1, 1, 1, 1)) if pad else y


class _QResBlock:
    def __init__(self, ctx: _Ctx, name: str, blk: ResBlock, hw: int):
        self.ctx = ctx
        self.norm1 = _QGroupNorm(ctx, name + ".norm1", blk.norm1, hw)
        self.conv1 = _QConv(ctx, name + ".conv1", blk.conv1)
        self.temb = _QLinear(ctx, name + ".temb", blk.temb)
        self.norm2 = _QGroupNorm(ctx, name + ".norm2", blk.norm2, hw)
        self.conv2 = _QConv(ctx, name + ".conv2", blk.conv2)
        self.skip = _QConv(ctx, name + ".skip", blk.skip) if isinstance(blk.skip, nn.Conv2d) else None

    def __call__(self, a: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        h = self.conv1.of_norm(self.norm1, a, tp=tproj)
        s = self.skip(a) if self.skip is not None else a
        return self.conv2.of_norm(self.norm2, h, res=s)


class _QAttn:
    def __init__(self, ctx: _Ctx, name: str, blk: AttnBlock, hw: int):
        self.ctx = ctx
        cfg = ctx.cfg
        c = blk.norm.num_channels
        self.c = c
        self.norm = _QGroupNorm(ctx, name + ".norm", blk.norm, hw)
        self.qkv = _QConv(ctx, name + ".qkv", blk.qkv)
        self.proj = _QConv(ctx, name + ".proj", blk.proj)
        # q, k clamp: c · Qmax² < 2^53 (every partial sum of q·k an exact integer)
        self.qmax = float(min(ctx.amax, math.isqrt((2**53 - 1) // c)))
        if self.qmax < math.ldexp(16.0, cfg.act_bits):
            raise BoundError(f"{name}: q/k clamp {self.qmax / 2**cfg.act_bits:.3g} < 16; lower act_bits")
        ctx.bounds[name + ".qk"] = math.log2(c * self.qmax * self.qmax)
        inv_sqrt_c = 1.0 / math.sqrt(c)                                 # correctly rounded
        self.score_mul = math.ldexp(inv_sqrt_c, -2 * cfg.act_bits)      # exact scaling of it
        pv = (math.ldexp(1.0, cfg.prob_bits) + hw) * ctx.amax           # Σ_k P ≤ 2^prob_bits + hw/2
        if not pv < _TWO53:
            raise BoundError(f"{name}: P·v bound 2^{math.log2(pv):.2f} ≥ 2^53; lower prob_bits")
        ctx.bounds[name + ".pv"] = math.log2(pv)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        ctx, cfg = self.ctx, self.ctx.cfg
        n, c, h, w = a.shape
        q, k, v = self.qkv(self.norm(a)).reshape(n, 3, c, h * w).unbind(1)
        q = q.clamp(-self.qmax, self.qmax)
        k = k.clamp(-self.qmax, self.qmax)
        s = torch.bmm(q.transpose(1, 2), k).mul_(self.score_mul)      # [n, q, k]; exact ints, then ×const
        if ctx.kernels is not None:                                   # the same, one compiled pass per row
            ctx.kernels.softmax_weights(s.view(-1, s.shape[-1]).numpy(), -40.0, 2.0**cfg.exp_bits,
                                        2.0**cfg.prob_bits, *_EXP_ARGS)
            p = s
        else:
            s.sub_(s.amax(-1, keepdim=True)).clamp_(min=-40.0)        # exact max; one rounded subtract
            e = exp(s).mul_(2.0**cfg.exp_bits).round_()               # integers ≤ 2^exp_bits
            z = e.sum(-1, keepdim=True)                               # exact (< 2^53)
            p = e.mul_(2.0**cfg.prob_bits).div_(z).round_()           # integers, Σ ≤ 2^prob_bits + hw/2
        o = torch.bmm(v, p.transpose(1, 2))                           # [n, c, q]: exact ints
        o = ctx.q(o.mul_(2.0**-cfg.prob_bits)).reshape(n, c, h, w)
        return self.proj(o, res=a)


# ----------------------------------------------------------------------------------------------
# Time embedding
# ----------------------------------------------------------------------------------------------

def _f32(x: torch.Tensor) -> torch.Tensor:
    """Round float64 to float32 and back (correctly rounded; exact for the IEEE results below)."""
    return x.to(torch.float32).to(_F64)


def timestep_embedding_exact(t: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`~ddpm_codec.models.unet.timestep_embedding` with IEEE ops and our exp/sin/cos (float64).

    The float32 steps of the float path (freqs, t·freq) are reproduced exactly: a float64
    +, ×, ÷ of float32 operands rounded to float32 is the correctly rounded float32 result.
    """
    half = dim // 2
    c = float(np.float32(-math.log(10000.0)))                      # the scalar as float32 sees it
    i = torch.arange(half, dtype=_F64)
    arg = _f32(_f32(i * c) / float(max(half - 1, 1)))
    freqs = _f32(exp(arg))
    args = _f32(t.to(_F64)[:, None] * freqs[None])
    s, co = sin_cos(args)
    emb = torch.cat([s, co], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

class ExactUNet:
    """ε̂(x_t, t) of a :class:`UNet` in exact fixed-point arithmetic (see the module docstring).

    ``ExactUNet(net)`` or ``ExactUNet.from_model(loaded_model)``; call ``(x, t)`` with ``x`` a
    float tensor ``[N, C, H, W]`` and ``t`` an int (or an int tensor ``[N]``); returns float64
    ``[N, C, H, W]`` on CPU, in the float net's units. ``device`` picks where the tensors live
    (CPU default; on CUDA convolutions run as im2col + matmul, see :func:`verify_backend`).
    ``kernels``: the elementwise work by :mod:`.exact_kernels`' compiled loops (``"auto"``: on the
    CPU when numba is installed) or by torch (``"torch"``); the same bits either way.
    """

    def __init__(self, net: UNet, config: ExactConfig | None = None, *, device="cpu", cache_size: int = 64,
                 kernels: str = "auto"):
        self.config = cfg = config or ExactConfig()
        self.device = torch.device(device)
        self.ucfg = ucfg = net.config
        self.ctx = ctx = _Ctx(cfg, self.device, kernels)
        self.temb1 = _QLinear(ctx, "temb.0", net.temb[0])
        self.temb2 = _QLinear(ctx, "temb.2", net.temb[2])
        res = ucfg.image_size
        self.conv_in = _QConv(ctx, "conv_in", net.conv_in)
        self.down = []
        self.resblocks: list[_QResBlock] = []
        for i, blocks in enumerate(net.down):
            if isinstance(blocks[0], ResBlock):
                self.down.append(self._res_stage(f"down.{i}", blocks, res))
            else:
                self.down.append(("down", _QConv(ctx, f"down.{i}.0", blocks[0]), None))
                res //= 2
        self.mid0 = _QResBlock(ctx, "mid.0", net.mid[0], res * res)
        self.mid1 = _QAttn(ctx, "mid.1", net.mid[1], res * res)
        self.mid2 = _QResBlock(ctx, "mid.2", net.mid[2], res * res)
        self.resblocks += [self.mid0, self.mid2]
        self.up = []
        for i, blocks in enumerate(net.up):
            if isinstance(blocks[0], ResBlock):
                self.up.append(self._res_stage(f"up.{i}", blocks, res))
            else:
                res *= 2
                self.up.append(("up", _QConv(ctx, f"up.{i}.1", blocks[1]), None))
        self.norm_out = _QGroupNorm(ctx, "norm_out", net.norm_out, res * res)
        self.conv_out = _QConv(ctx, "conv_out", net.conv_out)
        self._cache: dict[int, list[torch.Tensor]] = {}
        self._cache_size = cache_size
        self._threads = ThreadChooser()
        verify_backend(self.device, gemm=ctx.gemm_conv)

    def _res_stage(self, name: str, blocks, res: int):
        """("res", the stage's residual block, its attention blocks) at resolution ``res``."""
        rb = _QResBlock(self.ctx, f"{name}.0", blocks[0], res * res)
        self.resblocks.append(rb)
        return "res", rb, [_QAttn(self.ctx, f"{name}.{j}", b, res * res) for j, b in enumerate(blocks[1:], 1)]

    @classmethod
    def from_model(cls, model, config: ExactConfig | None = None, **kw) -> "ExactUNet":
        """From a :class:`~ddpm_codec.models.checkpoint.LoadedModel` (uses ``model.net``)."""
        return cls(model.net, config, **kw)

    @property
    def bounds(self) -> dict[str, float]:
        """log2 of each layer's worst-case |partial sum| (all < 53; GroupNorm Σ A² < 63)."""
        return dict(self.ctx.bounds)

    def fingerprint(self) -> str:
        """SHA-256 of the config and the prepared integer weights: what the exact outputs depend on."""
        h = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
        h.update(repr(sorted(self.ucfg.to_dict().items())).encode())
        layers = [self.temb1, self.temb2, self.conv_in, self.conv_out]
        for kind, mod, attn in self.down + self.up:
            if kind != "res":
                layers.append(mod)
            for at in attn or []:
                layers += [at.qkv, at.proj]
        layers += [self.mid1.qkv, self.mid1.proj]
        for rb in self.resblocks:
            layers += [rb.conv1, rb.temb, rb.conv2] + ([rb.skip] if rb.skip is not None else [])
        for lyr in layers:
            for tns in (lyr.w_int, lyr.inv, lyr.bias):
                h.update(tns.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # -- time conditioning (depends on t only: cached) --
    def _tproj(self, t: int) -> list[torch.Tensor]:
        hit = self._cache.get(t)
        if hit is not None:
            return hit
        ctx = self.ctx
        emb = timestep_embedding_exact(torch.tensor([t + self.ucfg.time_offset]), self.ucfg.ch).to(self.device)
        a = ctx.q(emb * 2.0**self.config.act_bits)
        a = self.temb2(ctx.silu(self.temb1(a)))
        sa = ctx.silu(a)
        out = [rb.temb(sa)[0] for rb in self.resblocks]
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[t] = out
        return out

    def _temb(self, t, n: int) -> list[torch.Tensor]:
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            ts = [int(v) for v in t.reshape(-1).tolist()]
            if len(set(ts)) == 1:
                return [p.expand(n, -1) for p in self._tproj(ts[0])]
            per = [self._tproj(v) for v in ts]
            return [torch.stack([p[i] for p in per]) for i in range(len(self.resblocks))]
        return [p.expand(n, -1) for p in self._tproj(int(t))]

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """The input on the activation grid (integers, float64): round(x · 2^act_bits), clamped."""
        return self.ctx.q(x.to(self.device, _F64) * 2.0**self.config.act_bits)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t, threads: int | None = None) -> torch.Tensor:
        """ε̂ at ``x`` and ``t`` on ``threads`` threads (default: torch's count; the same bits for any)."""
        s = self.ucfg.image_size
        if x.dim() != 4 or x.shape[-1] != s or x.shape[-2] != s:
            raise ValueError(f"model expects [N, C, {s}, {s}] inputs, got {tuple(x.shape)}")
        ts = torch.as_tensor(t, dtype=torch.int64).reshape(-1).expand(x.shape[0])
        return run_exact(self._threads, self._forward, x, ts, threads=threads, device=self.device)

    @torch.no_grad()   # grad mode is per thread: map_samples' workers need it too
    def _forward(self, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        # the time projections inside the call: on its threads (torch's global count outside it made
        # their small matmuls wait at OpenMP barriers: ~20 ms a call with the other core busy)
        tp = iter(self._temb(ts, x.shape[0]))   # one per residual block, in the walk's order (self.resblocks)

        def res(rb):
            return lambda h: rb(h, next(tp))
        stages = [(kind, res(mod) if kind == "res" else mod, attn) for kind, mod, attn in self.down + self.up]
        nd = len(self.down)
        out = unet_walk(self.ucfg, self.grid(x), self.conv_in, stages[:nd],
                        (res(self.mid0), self.mid1, res(self.mid2)), stages[nd:],
                        lambda h: self.conv_out.of_norm(self.norm_out, h))
        return out.mul_(2.0**-self.config.act_bits).to("cpu")


# ----------------------------------------------------------------------------------------------
# Backend check
# ----------------------------------------------------------------------------------------------

_VERIFIED: set[tuple[str, bool]] = set()


def verify_backend(device="cpu", *, gemm: bool = False) -> None:
    """Check once per (device, path) that float64 conv/matmul on integer data near the bound is
    exact (i.e. the backend sums products, no FFT/Winograd): against an int64 reference."""
    device = torch.device(device)
    key = (str(device), gemm)
    if key in _VERIFIED:
        return
    g = np.random.default_rng(12345)
    for k, stride, cin in ((3, 1, 16), (3, 2, 16), (1, 1, 16)):
        w = torch.tensor(g.integers(-2**16, 2**16 + 1, size=(8, cin, k, k)), dtype=torch.int64)
        a = torch.tensor(g.integers(-2**25, 2**25 + 1, size=(2, cin, 9, 9)), dtype=torch.int64)
        pad = k // 2
        cols = F.unfold(a.to(_F64), k, padding=pad, stride=stride).to(torch.int64)
        ref = torch.matmul(w.reshape(8, -1), cols)                       # int64: exact
        wd, ad = w.to(device, _F64), a.to(device, _F64)
        if gemm:
            got = torch.matmul(wd.reshape(8, -1), F.unfold(ad, k, padding=pad, stride=stride))
        else:
            got = F.conv2d(ad, wd, None, stride, pad).reshape(2, 8, -1)
        if not torch.equal(got.cpu().to(torch.int64), ref) or not torch.equal(got.cpu(), ref.to(_F64)):
            raise RuntimeError(f"float64 conv on {device} is not exact on integer data (k={k}, stride={stride}); "
                               "the exact network cannot run on this backend")
    _VERIFIED.add(key)
