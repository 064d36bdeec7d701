"""A learned context model for the lossless x_0 stage (issue 16): p(x_0 | x_tau, x_hat_0, decoded pixels).

The image's subpixels are coded in 12 passes: the 2x2 positions in the order (0,0), (1,1), (0,1),
(1,0) (:data:`PASS_GROUP`), and R, G, B within each. Pass ``q = 3·p + c`` codes channel ``c`` at the
positions of group ``p``; everything of the groups before ``p`` and the channels before ``c`` at group
``p`` is known (:func:`pass_masks`). One small convolutional network serves every pass: it sees
``x_tau``, the diffusion model's ``x_hat_0``, the known pixels (zero elsewhere), the known mask and the
target mask (15 channels) and gives, per subpixel, a mean and a scale of a discretized Gaussian on
0..255 relative to Eq. 13's (``x_hat_0`` and the fitted scale of ``p(x_0 | x_tau)``); an all-zero
output layer *is* Eq. 13. Decoding costs 12 small network calls per image, each pass's pixels in
parallel.

:class:`ContextX0Net` is the float network (training); :class:`ExactContextX0` runs it in the
exact arithmetic of :mod:`ddpm_codec.models.exact` (integer convolutions with exact sums, the SiLU
table, own ``exp``) so that the means and scales a decoder feeds its entropy coder are the same bits
on any machine. This module knows nothing of files or coders.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .exact import ExactConfig, ThreadChooser, _Ctx, _QConv, exp, run_exact

__all__ = [
    "NUM_PASSES",
    "PASS_GROUP",
    "ContextConfig",
    "ContextX0Net",
    "ExactContextX0",
    "FloatContextX0",
    "context_hash",
    "code_length_bits",
    "discretized_gaussian_bits",
    "load_weights",
    "pass_masks",
    "save_weights",
]

NUM_PASSES = 12
PASS_GROUP = ((0, 2), (3, 1))
"""Group of the position ``(y mod 2, x mod 2)``: (0,0) first, then (1,1), (0,1), (1,0)."""
LOG_SCALE_RANGE = (-4.0, 3.0)   # the predicted log scale factor is clamped here (both paths)


@dataclass(frozen=True)
class ContextConfig:
    channels: int = 48
    blocks: int = 4
    scale: float = 0.0          # Eq. 13's scale of p(x_0 | x_tau) in [-1, 1] units (the fitted one at tau)
    tau: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def group_grid(h: int, w: int, device=None) -> torch.Tensor:
    """``[h, w]`` int64: each position's pass group."""
    g = torch.tensor(PASS_GROUP, dtype=torch.int64, device=device)
    return g.repeat((h + 1) // 2, (w + 1) // 2)[:h, :w]


def pass_masks(q: torch.Tensor | int, h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(known, target) bool ``[B, 3, h, w]`` for pass indices ``q`` (``[B]`` or one int)."""
    q = torch.as_tensor(q, dtype=torch.int64, device=device).reshape(-1)
    p, c = (q // 3)[:, None, None, None], (q % 3)[:, None, None, None]
    gp = group_grid(h, w, device)[None, None]
    ch = torch.arange(3, device=device)[None, :, None, None]
    return (gp < p) | ((gp == p) & (ch < c)), (gp == p) & (ch == c)


def _inputs(pixels: torch.Tensor, xt: torch.Tensor, xhat: torch.Tensor, known: torch.Tensor,
            target: torch.Tensor) -> torch.Tensor:
    v = pixels.to(xt.dtype) / 127.5 - 1.0
    k = known.to(xt.dtype)
    return torch.cat([xt, xhat, v * k, k, target.to(xt.dtype)], 1)


class ContextX0Net(nn.Module):
    """The float network: ``(pixels uint8, x_tau, x_hat_0, known, target) -> (mean, scale)`` in pixel
    units ``[B, 3, H, W]`` (``x_tau``, ``x_hat_0`` in the [-1, 1] convention)."""

    def __init__(self, config: ContextConfig):
        super().__init__()
        if not (config.scale > 0 and math.isfinite(config.scale)):
            raise ValueError(f"context model needs Eq. 13's scale > 0, got {config.scale}")
        c = config.channels
        self.config = config
        self.inp = nn.Conv2d(15, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
                                                  nn.Conv2d(c, c, 3, padding=1)) for _ in range(config.blocks))
        self.out = nn.Conv2d(c, 6, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pixels, xt, xhat, known, target):
        h = self.inp(_inputs(pixels, xt, xhat, known, target))
        for b in self.blocks:
            h = h + b(h)
        o = self.out(F.silu(h))
        s = self.config.scale * 127.5
        mean = (xhat + 1.0) * 127.5 + o[:, :3] * s
        scale = s * torch.exp(o[:, 3:].clamp(*LOG_SCALE_RANGE))
        return mean, scale


def discretized_gaussian_bits(pixels: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2 P(v) per subpixel under N(mean, scale²) discretized to 0..255 (edges open), float; for
    training and measuring (the codec's coders have their own exact tables)."""
    v = pixels.to(mean.dtype)
    hi = torch.where(v >= 255, torch.ones_like(v), torch.special.ndtr((v + 0.5 - mean) / scale))
    lo = torch.where(v <= 0, torch.zeros_like(v), torch.special.ndtr((v - 0.5 - mean) / scale))
    return -torch.log2((hi - lo).clamp_min(1e-12))


class ExactContextX0:
    """:class:`ContextX0Net` in exact arithmetic: float64 tensors of integers on the 2^-16 grid,
    convolutions whose every partial sum is exact (:class:`ddpm_codec.models.exact._QConv`), the
    SiLU table, exact residual adds; then ``mean = (x_hat_0 + 1)·127.5 + o·s`` and ``scale =
    s·exp(o')`` by IEEE operations in this order and the project's own ``exp``. Same bits on any
    IEEE-754 machine, thread count or SIMD level (the inputs must be the same float64 values)."""

    def __init__(self, net: ContextX0Net, config: ExactConfig | None = None, *, device="cpu", kernels: str = "auto"):
        self.cfg = config or ExactConfig()
        self.ctx = _Ctx(self.cfg, torch.device(device), kernels)
        self.config = net.config
        self.inp = _QConv(self.ctx, "inp", net.inp, amax_in=float(2 ** (self.cfg.act_bits + 1)))
        self.blocks = [(_QConv(self.ctx, f"b{i}.0", b[1]), _QConv(self.ctx, f"b{i}.1", b[3]))
                       for i, b in enumerate(net.blocks)]
        self.out = _QConv(self.ctx, "out", net.out)
        self._threads = ThreadChooser()

    def __call__(self, pixels, xt, xhat, known, target, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return run_exact(self._threads, self._forward, pixels, xt, xhat, known, target, threads=threads,
                         device=self.ctx.device)

    @torch.no_grad()   # grad mode is per thread: map_samples' workers need it too
    def _forward(self, pixels, xt, xhat, known, target) -> tuple[torch.Tensor, torch.Tensor]:
        ctx, one = self.ctx, 2.0**self.cfg.act_bits
        xt, xhat = xt.to(torch.float64), xhat.to(torch.float64)
        a = ctx.q(_inputs(pixels, xt.clamp(-2.0, 2.0), xhat.clamp(-2.0, 2.0), known, target) * one)
        h = self.inp(a)
        for c1, c2 in self.blocks:
            h = ctx.q(h + c2(ctx.silu(c1(ctx.silu(h)))))
        o = self.out(ctx.silu(h)) * (1.0 / one)                       # exact: integers times 2^-16
        s = self.config.scale * 127.5
        mean = (xhat + 1.0) * 127.5 + o[:, :3] * s
        scale = exp(o[:, 3:].clamp(*LOG_SCALE_RANGE)) * s
        return mean, scale


class FloatContextX0:
    """:class:`ContextX0Net` in float64, without gradients: what float profiles' x_0 coders call (the same
    bits wherever the U-Net's float kernels give the same bits: same machine, same thread count)."""

    def __init__(self, net: ContextX0Net):
        import copy

        self.net = copy.deepcopy(net).double().eval()
        self.config = net.config

    @torch.no_grad()
    def __call__(self, pixels, xt, xhat, known, target) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(pixels, xt.to(torch.float64), xhat.to(torch.float64), known, target)


def context_hash(net: ContextX0Net) -> str:
    """SHA-256 (hex) over the config and the weights as fp16 in name order: what a model's config
    declares for its context model and what a file's fingerprint covers (:mod:`.checkpoint`)."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(net.config.to_dict(), sort_keys=True, separators=(",", ":")).encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_weights(net: ContextX0Net, path) -> None:
    """fp16 safetensors with the config in the metadata (fp16 values are exact binary fractions: the
    exact path's integer weights are then the same on every machine)."""
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"x0_context": json.dumps(net.config.to_dict())})


def load_weights(path) -> ContextX0Net:
    """A :class:`ContextX0Net` (eval mode, float32 holding the fp16 values) from :func:`save_weights`'s file."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "x0_context" not in meta:
            raise ValueError(f"{path}: not an x_0 context model (no 'x0_context' metadata)")
        net = ContextX0Net(ContextConfig(**json.loads(meta["x0_context"])))
        net.load_state_dict({k: f.get_tensor(k).float() for k in f.keys()})   # noqa: SIM118
    return net.eval()


def code_length_bits(model, pixels: torch.Tensor, xt: torch.Tensor, xhat: torch.Tensor) -> torch.Tensor:
    """Ideal code length (bits per image ``[B]``) of uint8 ``pixels [B, 3, H, W]`` under ``model``
    (either class), pass by pass as a decoder would see them."""
    b, _, h, w = pixels.shape
    total = torch.zeros(b, dtype=torch.float64)
    for q in range(NUM_PASSES):
        known, target = pass_masks(torch.full((b,), q), h, w)
        mean, scale = model(pixels, xt, xhat, known, target)
        bits = discretized_gaussian_bits(pixels, mean.double(), scale.double())
        total += (bits * target).flatten(1).sum(1)
    return total
