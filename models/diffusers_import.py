"""Read a diffusers DDPM folder (the layout of ``google/ddpm-cifar10-32``) into this project's U-Net.

Ho et al.'s CIFAR-10 model is published in the diffusers layout: a ``UNet2DModel`` config
(``config.json``), its weights (``diffusion_pytorch_model.safetensors`` or ``.bin``) and a
``DDPMScheduler`` config (``scheduler_config.json``), either all at the top of a folder or in
``unet/`` + ``scheduler/`` subfolders (a pipeline folder). This module maps such a network onto
:class:`~ddpm_codec.models.unet.UNet` -- the same architecture as the ``ddpm-cifar10`` preset --
without importing diffusers:

* ``ResnetBlock2D`` (norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut) -> ``ResBlock``
  (norm1, conv1, temb, norm2, conv2, skip); same order of operations.
* ``Attention`` with one head (to_q/to_k/to_v/to_out.0 or the older query/key/value/proj_attn,
  group_norm) -> ``AttnBlock``: q, k, v stacked into the 1x1 ``qkv`` conv, ``to_out.0`` -> ``proj``.
* ``Downsample2D`` with ``downsample_padding=0`` pads (0, 1, 0, 1) before a stride-2 conv:
  ``UNetConfig.down_padding = "tf"``; ``norm_eps`` -> ``UNetConfig.norm_eps``.
* Time: diffusers counts timesteps 0..T-1 where the paper (and this project) counts 1..T, so the
  network gets ``UNetConfig.time_offset = -1``; with ``flip_sin_to_cos=False, freq_shift=1`` its
  sinusoidal embedding is this project's (sin first, frequencies 10000^(-i/(half-1))).
* The schedule comes from the scheduler config (linear betas only; computed in float64 as the
  paper's code does, where diffusers uses float32 -- the difference is below 1e-9).

Anything else (other block types, several attention heads, learned variances, prediction types
other than epsilon, ...) is refused with a one-line :class:`DiffusersImportError` naming it.
``.bin`` weights are read with ``torch.load(weights_only=True)`` only; nothing is unpickled otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..diffusion import GaussianDiffusion
from ..errors import Error
from .checkpoint import LoadedModel, fingerprint
from .unet import UNet, UNetConfig

__all__ = [
    "DiffusersImportError",
    "convert_state_dict",
    "diffusion_config_from_scheduler",
    "import_diffusers",
    "is_diffusers_folder",
    "load_diffusers",
    "read_diffusers_folder",
    "read_weights",
    "unet_config_from_diffusers",
]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# UNet2DModel's defaults (diffusers 0.42), for keys an older config.json leaves out.
_UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}
# DDPMScheduler's defaults.
_SCHED_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}
_FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


class DiffusersImportError(Error, ValueError):
    """A diffusers folder this project cannot read or map (the message is one line naming why)."""


# ----------------------------------------------------------------------------------------------
# Folder layout
# ----------------------------------------------------------------------------------------------

def _locate(path: str | Path) -> tuple[Path, Path | None]:
    """(folder holding the UNet's config.json and weights, scheduler_config.json or None)."""
    p = Path(path).expanduser()
    if (p / "unet" / "config.json").is_file():
        unet_dir = p / "unet"
    elif (p / "config.json").is_file():
        unet_dir = p
    else:
        raise DiffusersImportError(f"{p} is not a diffusers model folder (no config.json nor unet/config.json)")
    for cand in (p / "scheduler" / "scheduler_config.json", p / "scheduler_config.json",
                 unet_dir / "scheduler_config.json"):
        if cand.is_file():
            return unet_dir, cand
    return unet_dir, None


def is_diffusers_folder(path: str | Path) -> bool:
    """True for a directory with ``config.json`` or ``unet/config.json`` (a diffusers layout)."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "config.json").is_file() or (p / "unet" / "config.json").is_file())


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffusersImportError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise DiffusersImportError(f"{path}: expected a JSON object")
    return d


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------

def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    """This project's :class:`UNetConfig` for a diffusers ``UNet2DModel`` config, or a refusal."""
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise DiffusersImportError(f"unsupported diffusers model class {cls!r} (only UNet2DModel maps onto this U-Net)")
    c = {**_UNET_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}

    def need(key, ok, what=None):
        if not ok(c[key]):
            raise DiffusersImportError(f"unsupported UNet2DModel setting {key}={c[key]!r}"
                                       + (f" (supported: {what})" if what else ""))

    need("time_embedding_type", lambda v: v == "positional", "positional")
    need("flip_sin_to_cos", lambda v: v is False, "false: sin first, as the original DDPM")
    need("freq_shift", lambda v: v == 1, "1, as the original DDPM")
    need("center_input_sample", lambda v: not v, "false")
    need("act_fn", lambda v: v in ("silu", "swish"), "silu")
    need("resnet_time_scale_shift", lambda v: v == "default", "default")
    need("class_embed_type", lambda v: v is None, "none")
    need("num_class_embeds", lambda v: v is None, "none")
    need("mid_block_type", lambda v: v == "UNetMidBlock2D", "UNetMidBlock2D")
    need("add_attention", lambda v: v is True, "true")
    need("mid_block_scale_factor", lambda v: v == 1, "1")
    need("downsample_type", lambda v: v == "conv", "conv")
    need("upsample_type", lambda v: v == "conv", "conv")
    need("downsample_padding", lambda v: v in (0, 1), "0 or 1")
    need("norm_num_groups", lambda v: v == 32, "32")
    need("attn_norm_num_groups", lambda v: v in (None, 32), "none or 32")
    need("layers_per_block", lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DiffusersImportError(f"unsupported UNet2DModel setting sample_size={size!r} (square images only)")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise DiffusersImportError(f"unsupported UNet2DModel setting sample_size={size!r} (an int is needed)")
    if c["in_channels"] != c["out_channels"]:
        raise DiffusersImportError(f"unsupported UNet2DModel setting in_channels={c['in_channels']} != "
                                   f"out_channels={c['out_channels']} (epsilon has the image's channels)")
    boc = [int(v) for v in c["block_out_channels"]]
    ch = boc[0]
    if any(v % ch for v in boc) or any(v % 32 for v in boc):
        raise DiffusersImportError(f"unsupported UNet2DModel setting block_out_channels={boc} "
                                   "(multiples of the first, and of 32 for GroupNorm)")
    need("time_embedding_dim", lambda v: v in (None, 4 * ch), f"none or {4 * ch}")
    down = [d.removeprefix("UNetRes") for d in c["down_block_types"]]
    up = [u.removeprefix("UNetRes") for u in c["up_block_types"]]
    if len(down) != len(boc) or len(up) != len(boc):
        raise DiffusersImportError(f"unsupported UNet2DModel: {len(down)} down / {len(up)} up block types "
                                   f"for {len(boc)} block_out_channels")
    for kind in down:
        if kind not in ("DownBlock2D", "AttnDownBlock2D"):
            raise DiffusersImportError(f"unsupported down block type {kind!r} (supported: DownBlock2D, AttnDownBlock2D)")
    for kind in up:
        if kind not in ("UpBlock2D", "AttnUpBlock2D"):
            raise DiffusersImportError(f"unsupported up block type {kind!r} (supported: UpBlock2D, AttnUpBlock2D)")
    attn_levels = [i for i, d in enumerate(down) if d == "AttnDownBlock2D"]
    up_attn = [len(up) - 1 - i for i, u in enumerate(up) if u == "AttnUpBlock2D"]
    if sorted(up_attn) != attn_levels:
        raise DiffusersImportError(f"unsupported UNet2DModel: attention in down blocks {down} and up blocks {up} "
                                   "is not mirrored")
    head_dim = c["attention_head_dim"]
    for level in attn_levels + ["mid"]:
        width = boc[-1] if level == "mid" else boc[level]
        if head_dim is not None and head_dim != width:
            raise DiffusersImportError(f"unsupported UNet2DModel setting attention_head_dim={head_dim} "
                                       f"({width // head_dim} heads at width {width}; only one head maps)")
    if size % (2 ** (len(boc) - 1)):
        raise DiffusersImportError(f"unsupported UNet2DModel setting sample_size={size} "
                                   f"(not divisible by 2^{len(boc) - 1})")
    return UNetConfig(
        image_size=size, in_channels=int(c["in_channels"]), ch=ch, ch_mult=tuple(v // ch for v in boc),
        num_res_blocks=int(c["layers_per_block"]), attn_resolutions=tuple(size >> i for i in attn_levels),
        dropout=float(c["dropout"]), norm_eps=float(c["norm_eps"]),
        down_padding="tf" if c["downsample_padding"] == 0 else "symmetric", time_offset=-1)


def diffusion_config_from_scheduler(cfg: dict) -> dict:
    """This project's diffusion config for a diffusers scheduler config, or a refusal."""
    c = {**_SCHED_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    if c["trained_betas"] is not None:
        raise DiffusersImportError("unsupported scheduler setting trained_betas (only a linear beta schedule maps)")
    if c["beta_schedule"] != "linear":
        raise DiffusersImportError(f"unsupported scheduler setting beta_schedule={c['beta_schedule']!r} (supported: linear)")
    if c["prediction_type"] != "epsilon":
        raise DiffusersImportError(f"unsupported scheduler setting prediction_type={c['prediction_type']!r} "
                                   "(supported: epsilon)")
    if c["variance_type"] not in _FIXED_VARIANCES:
        raise DiffusersImportError(f"unsupported scheduler setting variance_type={c['variance_type']!r} "
                                   f"(supported: {', '.join(_FIXED_VARIANCES)}; learned variances need a second "
                                   "network output)")
    if c["rescale_betas_zero_snr"]:
        raise DiffusersImportError("unsupported scheduler setting rescale_betas_zero_snr=true")
    T = c["num_train_timesteps"]
    if not isinstance(T, int) or T < 1:
        raise DiffusersImportError(f"unsupported scheduler setting num_train_timesteps={T!r}")
    return {"schedule": "linear", "num_timesteps": T, "beta_start": float(c["beta_start"]),
            "beta_end": float(c["beta_end"])}


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def read_weights(unet_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The UNet's state dict from ``diffusion_pytorch_model.safetensors`` (preferred) or ``.bin``
    (``torch.load(weights_only=True)``: tensors only, no arbitrary unpickling)."""
    st, binf = (unet_dir / n for n in WEIGHT_FILES)
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError) as e:
            raise DiffusersImportError(f"{st} is not a valid safetensors file: {str(e).splitlines()[0]}") from None
    if binf.is_file():
        try:
            state = torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- UnpicklingError for anything beyond tensors, RuntimeError for bad zips, ...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DiffusersImportError(f"{binf}: refused by torch.load(weights_only=True): {msg[:200]}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise DiffusersImportError(f"{binf}: not a state dict of tensors")
        return dict(state), binf
    others = sorted(p.name for p in unet_dir.glob("diffusion_pytorch_model*"))
    hint = f" (found {', '.join(others)}: sharded or variant files are not read)" if others else ""
    raise DiffusersImportError(f"no weights in {unet_dir}: need {WEIGHT_FILES[0]} or {WEIGHT_FILES[1]}{hint}")


_ATTN_ALIASES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def convert_state_dict(dstate: dict[str, torch.Tensor], ucfg: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers UNet2DModel weights -> :class:`UNet` weights (float32); every tensor on both
    sides must be used exactly once with matching shapes, or this refuses."""
    src = {k: v for k, v in dstate.items()}
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise DiffusersImportError(f"diffusers weights lack {name!r}")
        used.add(name)
        return src[name].to(torch.float32)

    def linear(dst: str, s: str):
        out[dst + ".weight"], out[dst + ".bias"] = take(s + ".weight"), take(s + ".bias")

    def resnet(dst: str, s: str):
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("temb", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2")):
            linear(f"{dst}.{a}", f"{s}.{b}")
        if s + ".conv_shortcut.weight" in src:
            linear(f"{dst}.skip", f"{s}.conv_shortcut")

    def attn(dst: str, s: str):
        linear(f"{dst}.norm", f"{s}.group_norm")
        ws, bs = [], []
        for new in ("to_q", "to_k", "to_v", "to_out.0"):
            name = f"{s}.{new}" if f"{s}.{new}.weight" in src else f"{s}.{_ATTN_ALIASES[new]}"
            w, b = take(name + ".weight"), take(name + ".bias")
            if w.dim() == 4:              # a 1x1 conv already
                w = w.reshape(w.shape[0], w.shape[1])
            ws.append(w), bs.append(b)
        out[f"{dst}.qkv.weight"] = torch.cat(ws[:3])[:, :, None, None].contiguous()
        out[f"{dst}.qkv.bias"] = torch.cat(bs[:3])
        out[f"{dst}.proj.weight"] = ws[3][:, :, None, None].contiguous()
        out[f"{dst}.proj.bias"] = bs[3]

    linear("temb.0", "time_embedding.linear_1")
    linear("temb.2", "time_embedding.linear_2")
    linear("conv_in", "conv_in")
    n_levels, nrb, size = len(ucfg.ch_mult), ucfg.num_res_blocks, ucfg.image_size
    i = 0
    for level in range(n_levels):
        has_attn = (size >> level) in ucfg.attn_resolutions
        for j in range(nrb):
            resnet(f"down.{i}.0", f"down_blocks.{level}.resnets.{j}")
            if has_attn:
                attn(f"down.{i}.1", f"down_blocks.{level}.attentions.{j}")
            i += 1
        if level != n_levels - 1:
            linear(f"down.{i}.0", f"down_blocks.{level}.downsamplers.0.conv")
            i += 1
    resnet("mid.0", "mid_block.resnets.0")
    attn("mid.1", "mid_block.attentions.0")
    resnet("mid.2", "mid_block.resnets.1")
    i = 0
    for k, level in enumerate(reversed(range(n_levels))):
        has_attn = (size >> level) in ucfg.attn_resolutions
        for j in range(nrb + 1):
            resnet(f"up.{i}.0", f"up_blocks.{k}.resnets.{j}")
            if has_attn:
                attn(f"up.{i}.1", f"up_blocks.{k}.attentions.{j}")
            i += 1
        if level != 0:
            linear(f"up.{i}.1", f"up_blocks.{k}.upsamplers.0.conv")
            i += 1
    linear("norm_out", "conv_norm_out")
    linear("conv_out", "conv_out")
    left = sorted(set(src) - used)
    if left:
        raise DiffusersImportError(f"diffusers weights have {len(left)} tensors the mapping does not use, "
                                   f"e.g. {', '.join(left[:3])}")
    ref = UNet(ucfg).state_dict()
    missing, extra = sorted(set(ref) - set(out)), sorted(set(out) - set(ref))
    if missing or extra:
        raise DiffusersImportError(f"mapped weights do not fit the U-Net (missing {missing[:3]}, extra {extra[:3]})")
    for k, v in ref.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise DiffusersImportError(f"weight {k}: diffusers shape {tuple(out[k].shape)} != U-Net {tuple(v.shape)}")
    return {k: out[k].contiguous() for k in ref}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def read_diffusers_folder(path: str | Path) -> tuple[UNetConfig, dict, dict[str, torch.Tensor], dict]:
    """(U-Net config, diffusion config, mapped float32 weights, card info) of a diffusers folder."""
    p = Path(path).expanduser()
    unet_dir, sched_path = _locate(p)
    ucfg = unet_config_from_diffusers(_read_json(unet_dir / "config.json"))
    if sched_path is None:
        raise DiffusersImportError(f"{p}: no scheduler_config.json (at the top or in scheduler/): "
                                   "the beta schedule is read from it")
    sched = _read_json(sched_path)
    diffusion = diffusion_config_from_scheduler(sched)
    dstate, wpath = read_weights(unet_dir)
    state = convert_state_dict(dstate, ucfg)
    card = {"source": "diffusers", "imported_from": str(p.resolve().name),
            "diffusers_files": [str(x.relative_to(p)) for x in (unet_dir / "config.json", wpath, sched_path)],
            "scheduler_variance_type": sched.get("variance_type", _SCHED_DEFAULTS["variance_type"]),
            "description": f"imported from a diffusers UNet2DModel ({p.resolve().name})"}
    from .presets import PRESETS

    for name, pc in PRESETS.items():
        keys = ("image_size", "in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")
        if all(getattr(pc, k) == getattr(ucfg, k) for k in keys):
            card["preset"] = name
            break
    return ucfg, diffusion, state, card


def load_diffusers(path: str | Path, device: str | torch.device = "cpu", *, name: str = "") -> LoadedModel:
    """A diffusers DDPM folder as a :class:`LoadedModel` (see the module docstring)."""
    ucfg, diffusion, state, card = read_diffusers_folder(path)
    net = UNet(ucfg)
    net.load_state_dict(state)
    net.eval().to(device)
    config = {"unet": ucfg.to_dict(), "diffusion": diffusion, "card": card}
    return LoadedModel(net=net, diffusion=GaussianDiffusion.from_config(diffusion), config=config,
                       fingerprint=fingerprint(config, state), name=name or Path(path).expanduser().resolve().name,
                       path=None)


def import_diffusers(path: str | Path, output: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[Path, str]:
    """Convert a diffusers folder into this project's format (``<stem>.safetensors`` + ``<stem>.json``
    with a fingerprint). Returns (weights path, fingerprint). The file has no fitted statistics yet:
    ``ddpm-codec calibrate`` adds them (and so changes the fingerprint)."""
    from .checkpoint import save_model

    model = load_diffusers(path)
    wpath = save_model(output, model.net, model.config, dtype=dtype)
    return wpath, json.loads(wpath.with_suffix(".json").read_text())["fingerprint"]
