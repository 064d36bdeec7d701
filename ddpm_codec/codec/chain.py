"""The coding chain both sides walk: x_T, x_{t_2}, ..., x_tau, one Gaussian step at a time.

:class:`Chain` holds the state both sides share (x_t, the network's ε̂ at it, the chunk-count
predictor) and computes, in ONE place, everything a step needs before it is sent
(:meth:`Chain.next_link`: p_theta(x_s | x_t), the posterior's variance, the predicted chunk counts)
and after (:meth:`Chain.advance`: the new x_s rounded to float32, the network at it). The encoder,
the decoder and the KL-only trace differ only in how x_s is obtained (:meth:`Chain.step`'s
``send``): reverse channel coding from q, reading the code, or an exact draw from q.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..arithmetic import FLOAT, Arithmetic, arithmetic
from ..coding import rcc
from ..models.checkpoint import LoadedModel
from ..models.exact import torch_threads   # set per call: no caller has to set torch's count
from .settings import CodecSettings

CODEC_THREADS = 1   # float network evaluations run single-threaded: thread count changes float sums
TILES_PER_CALL = 16   # the network sees tiles in pieces: memory bounded for any image size, and faster
                      # than one big batch (measured, 1 thread: 13.2 ms/tile at 16, 17.3 at 128, 23.7 at 384).
                      # Exact outputs never depend on the batch; float32 ones did not here (tested: pieces of
                      # 16 and 32 equal one batch of 64 and 384 bit for bit), so older files decode as before.

ACCELERATOR_WARNING = (
    "the network runs on {device}: a file encoded there decodes only where the network's outputs are "
    "bit-identical, and in our one test (an H200, 2026-11-26) a GPU-encoded file failed its checksum "
    "when decoded in a second process on the same GPU. Files encoded on a CPU decoded bit-exactly on "
    "another x86 CPU (AVX2 -> AVX-512). Encode files you keep on the CPU (the CLI's default); "
    "benchmarks/determinism.py shows where two runs differ.")


def warn_if_accelerated(model: LoadedModel) -> None:
    if model.device.type != "cpu":
        warnings.warn(ACCELERATOR_WARNING.format(device=model.device), RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def deterministic_settings(arith: Arithmetic = FLOAT):
    """Settings under which both sides compute the same floats: on CUDA only cuDNN kernels marked
    deterministic, and no TF32 (measured on an H200: CUDA ε̂ within 2.6e-6 of the CPU's instead of
    6.7e-4); the thread count is :class:`Net`'s. Whether that suffices on a GPU is open: see
    docs/results/gpu-2026-11-26.md. Exact arithmetic needs none of this."""
    if arithmetic(arith).exact:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    flags = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = flags


class Net:
    """The network as both sides call it, in the file's :class:`~ddpm_codec.arithmetic.Arithmetic`:
    all tiles, in pieces of ``TILES_PER_CALL``, timed. Float: float32 on ``CODEC_THREADS`` thread
    (its sums depend on the count); exact: the exact fixed-point network on ``threads`` threads
    (None: torch's current count, all cores by default; any count gives the same bits)."""

    def __init__(self, model: LoadedModel, arith: Arithmetic | bool = FLOAT, threads: int | None = None):
        self.model = model
        self.arithmetic = arithmetic(arith)
        self.threads = threads if self.arithmetic.exact else CODEC_THREADS
        if self.arithmetic.exact:
            self.fn = model.exact_net()
        else:
            def fn(piece, t):
                return model.eps(piece.float(), t).double()
            self.fn = fn
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch_threads(self.threads):
            out = torch.cat([self.fn(x[i:i + TILES_PER_CALL], t) for i in range(0, len(x), TILES_PER_CALL)])
        self.seconds += time.perf_counter() - t0
        return out

    def context(self):
        """The model's x_0 context model as the x_0 coders call it, in this net's arithmetic (exact, or
        float64), its time counted in :attr:`seconds` with the U-Net's: both are the network calls a
        file costs."""
        coder = self.model.x0_context_coder(self.arithmetic)

        def timed(*args):
            t0 = time.perf_counter()
            with torch_threads(self.threads):
                out = coder(*args)
            self.seconds += time.perf_counter() - t0
            return out
        return timed


class CountPredictor:
    """Both sides' prediction of each tile's chunk count ``C`` for the next step.

    PFR/MRC (profiles 1, 2): the model-statistics prediction itself, one value for all tiles.
    Trellis: that prediction times the tile's ratio ``C / prediction`` at its last step with a
    prediction of at least 4 (images keep their relative difficulty along the chain), so that
    ``C`` costs ~1-2 bits a step instead of ~5. Only IEEE basic arithmetic: both sides agree.
    """

    def __init__(self, batch: int, cfg: rcc.RCCConfig):
        self.adaptive = cfg.selection == "trellis"
        self.ratio = np.ones(batch)

    def centres(self, pred: float | None):
        if pred is None or not self.adaptive:
            return pred
        return pred * self.ratio

    def update(self, pred: float | None, num_chunks: np.ndarray) -> None:
        if pred is None or not self.adaptive or pred < 4.0:
            return
        nc = np.asarray(num_chunks, dtype=np.float64)
        self.ratio = np.where(nc >= 1, nc / pred, self.ratio)


@dataclass
class Link:
    """One coding step t -> s as both sides know it before it is sent (nothing here depends on x_0)."""

    index: int
    t: int                      # T + 1 for the prior step (x_T sent against N(0, I))
    s: int
    mu_p: torch.Tensor          # mean of p_theta(x_s | x_t), float64 [B, C, H, W]
    var_p: float
    var_q: float                # variance of q(x_s | x_t, x_0)
    predicted: float | None     # the model statistics' expected chunk count (None: none)
    centres: object             # the count model's centre per tile (or one value, or None)


class Chain:
    """The chain of a file's settings over ``shape = [B, C, H, W]`` tiles, walked by both sides (``net``:
    the network to call, default a :class:`Net` of its own; :mod:`.batch` passes a shared one).

    ``stop``: a lossy file that stops exactly at diffusion time ``stop`` between two of the schedule's
    times (format versions 4 and 5): the schedule's times above it, then one step straight to ``stop``."""

    def __init__(self, model: LoadedModel, settings: CodecSettings, shape: tuple[int, ...],
                 threads: int | None = None, net: Net | None = None, stop: int | None = None):
        self.arithmetic = arith = settings.arithmetic
        if arith.exact and model.config.get("diffusion", {}).get("schedule", "linear") != "linear":
            raise ValueError("exact arithmetic needs a linear beta schedule (the cosine one is built with libm's cos)")
        self.diffusion = model.diffusion
        self.T = T = self.diffusion.num_timesteps
        self.ts = settings.timesteps(T)
        if stop is not None:
            if not self.ts[-1] < stop < T or stop in self.ts:
                raise ValueError(f"a stop at t = {stop} must lie strictly between two of the chain's times "
                                 f"({self.ts[-1]} .. {T})")
            self.ts = [t for t in self.ts if t > stop] + [stop]
        self.stop = stop
        self.links = [(T + 1, T)] + list(zip(self.ts[:-1], self.ts[1:]))   # (T+1, T) is the prior step
        self.settings, self.shape = settings, tuple(shape)
        self.dims_tile = int(np.prod(shape[1:]))
        self.cfg = settings.rcc_config()
        self.counts = CountPredictor(shape[0], self.cfg)
        self.net = net or Net(model, arith, threads)   # net: a shared one (batched images, .batch)
        self.x: torch.Tensor | None = None     # x_s of the last step taken (float32 values, float64)
        self.eps: torch.Tensor | None = None   # the network's ε̂ at it
        self.done = 0                          # steps taken

    def __len__(self) -> int:
        return len(self.links)

    @property
    def last_t(self) -> int:
        """The time of the chain's current state (T + 1 before the first step)."""
        return self.links[self.done - 1][1] if self.done else self.T + 1

    def reverse_time(self, i: int) -> int:
        """T - s + 1 of step ``i`` (the paper's Table 4 axis)."""
        return self.T - self.links[i][1] + 1

    def next_link(self) -> Link:
        """What both sides compute before step ``done`` is sent."""
        i = self.done
        t, s = self.links[i]
        d = self.diffusion
        if i == 0:   # x_T ~ q(x_T | x_0) against p(x_T) = N(0, I) (L_T; usually free)
            a_T = float(d.sqrt_alphas_cumprod[self.T])
            pred = self.settings.prior_prediction
            return Link(i, t, s, torch.zeros(self.shape, dtype=torch.float64), 1.0, 1.0 - a_T ** 2, pred,
                        self.counts.centres(pred))
        p = d.p_mean_variance(self.x, t, self.eps, s, self.settings.variance)
        var_p, var_q = float(p.variance), float(d.posterior_coefs(t, s, self.x)[2])
        arith = self.arithmetic   # exact: no libm, the same prediction on every machine
        kl = d.expected_step_kl(t, s, var_q, var_p, self.dims_tile, arith)
        pred = None if kl is None else rcc.expected_chunks(kl / arith.ln2, self.dims_tile, self.cfg)
        return Link(i, t, s, p.mean, var_p, var_q, pred, self.counts.centres(pred))

    def target(self, link: Link, x0: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean and variance of q(x_s | x_t, x_0) (the sender's side; x_0 in [-1, 1], float64)."""
        if link.index == 0:
            return float(self.diffusion.sqrt_alphas_cumprod[self.T]) * x0, link.var_q
        q = self.diffusion.q_posterior(x0, self.x, link.t, link.s)
        return q.mean, float(q.variance)

    def x_from_eps(self, link: Link, eps_code: torch.Tensor) -> torch.Tensor:
        """x_s = μ_p + sqrt(var_p)·ε for the ε an RCC step code delivers."""
        return link.mu_p + math.sqrt(link.var_p) * eps_code.double().reshape(self.shape)

    def advance(self, link: Link, x_s: torch.Tensor, num_chunks) -> None:
        """Take step ``link``: x_s rounded to float32 (the network's input), the network at it."""
        if num_chunks is not None:
            self.counts.update(link.predicted, num_chunks)
        self.x = x_s.float().double()
        self.eps = self.net(self.x, link.s)
        self.done += 1

    def step(self, send: Callable[[Link], tuple[torch.Tensor, np.ndarray | None]]) -> Link:
        """THE step, for every side: ``send(link)`` returns x_s (and the chunk counts it was sent with)."""
        link = self.next_link()
        x_s, num_chunks = send(link)
        self.advance(link, x_s, num_chunks)
        return link
