"""The DDPM U-Net of Ho et al. (2020), Appendix B: a PixelCNN++-style wide ResNet U-Net.

GroupNorm everywhere, sinusoidal time embedding (Transformer style) added into every residual
block, self-attention at the listed resolutions (16x16 in the paper), dropout in the residual
blocks. ``forward(x, t)`` takes images ``[N, C, H, W]`` in [-1, 1] and paper times ``t`` ``[N]``
(ints in 1..T) and predicts epsilon ``[N, C, H, W]``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


DOWN_PADDINGS = ("symmetric", "tf")
_OMIT_IF_DEFAULT = ("norm_eps", "down_padding", "time_offset")


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    # Conventions of imported networks (models/diffusers_import.py). At their defaults they are left
    # out of to_dict(), so the configs and fingerprints of existing models do not change.
    norm_eps: float = 1e-5           # GroupNorm epsilon (diffusers' DDPM: 1e-6)
    down_padding: str = "symmetric"  # stride-2 conv padding: "symmetric" (1 each side) or "tf"
                                     # (0 left/top, 1 right/bottom: TF 'SAME', the original DDPM)
    time_offset: int = 0             # the embedding sees t + time_offset (-1: times counted from 0)

    def __post_init__(self):
        if self.down_padding not in DOWN_PADDINGS:
            raise ValueError(f"down_padding must be one of {', '.join(DOWN_PADDINGS)}, got {self.down_padding!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        for k in _OMIT_IF_DEFAULT:
            if d[k] == self.__dataclass_fields__[k].default:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("ch_mult", "attn_resolutions"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)


def _groups(c: int) -> int:
    return math.gcd(32, c)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of times ``t`` [N] -> [N, dim] (as in Vaswani et al. / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c, eps=eps)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        a = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("nqk,nck->ncq", a, v).reshape(n, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """epsilon_theta(x_t, t). See the module docstring."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch, temb, eps = cfg.ch, cfg.ch * 4, cfg.norm_eps
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        chans, c, res = [ch], ch, cfg.image_size
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(c, ch * mult, temb, cfg.dropout, eps)]
                c = ch * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(c, eps))
                self.down.append(nn.ModuleList(blocks))
                chans.append(c)
            if level != len(cfg.ch_mult) - 1:
                pad = 1 if cfg.down_padding == "symmetric" else 0   # "tf": F.pad (0, 1, 0, 1) in forward
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=pad)]))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, temb, cfg.dropout, eps), AttnBlock(c, eps),
                                  ResBlock(c, c, temb, cfg.dropout, eps)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(c + chans.pop(), ch * mult, temb, cfg.dropout, eps)]
                c = ch * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(c, eps))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(c), c, eps=eps)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size or x.shape[-2] != self.config.image_size:
            raise ValueError(f"model expects {self.config.image_size}x{self.config.image_size} inputs, got {tuple(x.shape[-2:])}")
        if self.config.time_offset:
            t = t + self.config.time_offset
        emb = self.temb(timestep_embedding(t, self.config.ch))

        def stage(blocks, kind):
            if isinstance(blocks[0], ResBlock):
                return "res", functools.partial(blocks[0], temb=emb), list(blocks[1:])
            return kind, blocks[-1], None     # up stages: [Upsample, Conv2d]; the walk upsamples
        mid = (functools.partial(self.mid[0], temb=emb), self.mid[1], functools.partial(self.mid[2], temb=emb))
        return unet_walk(self.config, x, self.conv_in, [stage(b, "down") for b in self.down], mid,
                         [stage(b, "up") for b in self.up], lambda h: self.conv_out(F.silu(self.norm_out(h))))


def unet_walk(config: UNetConfig, x: torch.Tensor, conv_in, down, mid, up, out) -> torch.Tensor:
    """The U-Net's data flow, the one both arithmetics walk: :meth:`UNet.forward` (float) and
    :class:`~ddpm_codec.models.exact.ExactUNet` (exact) differ only in the layers they pass.

    ``down``/``up``: per stage ``("res", block, attns)`` (a residual block with the time embedding
    bound, then its attention blocks), ``("down", conv, None)`` (stride 2; TF-style padding when the
    config says so) or ``("up", conv, None)`` (nearest ×2 upsampling, then the conv); ``mid``: the
    residual block, attention, residual block; ``out``: GroupNorm, SiLU and the output conv. Up
    stages' residual blocks see the down path's activations concatenated along channels."""
    h = conv_in(x)
    hs = [h]
    for kind, mod, attns in down:
        if kind == "res":
            h = mod(h)
            for a in attns:
                h = a(h)
        else:
            if config.down_padding == "tf":
                h = F.pad(h, (0, 1, 0, 1))                      # exact data movement
            h = mod(h)
        hs.append(h)
    h = mid[2](mid[1](mid[0](h)))
    for kind, mod, attns in up:
        if kind == "res":
            h = mod(torch.cat([h, hs.pop()], dim=1))
            for a in attns:
                h = a(h)
        else:
            h = mod(F.interpolate(h, scale_factor=2, mode="nearest"))
    return out(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
