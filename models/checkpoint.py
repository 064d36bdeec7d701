"""Model files: weights as safetensors, config as JSON beside them, and a fingerprint.

A model is ``<stem>.safetensors`` + ``<stem>.json``. The JSON holds ``unet`` (the U-Net
config), ``diffusion`` (the beta schedule), optional ``stats`` (``x0_mse``: per-time mean squared
error of x_hat_0, fitted on training images) and free-form ``card`` information. Files are never
unpickled. The fingerprint is a SHA-256 over the canonical JSON of ``unet`` + ``diffusion`` +
``stats`` and the raw weight bytes in name order, so any change to what decoding depends on
changes it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion
from ..errors import ModelError, ModelNotFoundError
from .unet import UNet, UNetConfig

DEFAULT_DIFFUSION = {"schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


@dataclass
class LoadedModel:
    """A network with everything needed to use it: diffusion, config and fingerprint."""

    net: UNet
    diffusion: GaussianDiffusion
    config: dict
    fingerprint: str
    name: str = ""
    path: Path | None = None
    x0_context: object = None       # the learned x_0 context model (models.x0_context.ContextX0Net), if any
    x0_context_hash: str | None = None
    _exact: object = field(default=None, repr=False, compare=False)
    _ctx_coders: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def context_fingerprint(self) -> str | None:
        """The fingerprint of this model *with* its x_0 context model: files whose x_0 is coded by the
        context model name this one, so one fingerprint covers both. None without a context model."""
        if self.x0_context is None:
            return None
        return combined_fingerprint(self.fingerprint, self.x0_context_hash)

    def x0_context_coder(self, arith):
        """The context model as the x_0 coder calls it, in an :class:`~ddpm_codec.arithmetic.Arithmetic`
        (or a truthy ``exact`` flag): exact (portable) or float64."""
        from ..arithmetic import arithmetic

        if self.x0_context is None:
            raise ModelError(f"model {self.name} has no x_0 context model")
        exact = arithmetic(arith).exact
        if exact not in self._ctx_coders:
            from .x0_context import ExactContextX0, FloatContextX0

            self._ctx_coders[exact] = ExactContextX0(self.x0_context) if exact else FloatContextX0(self.x0_context)
        return self._ctx_coders[exact]

    def exact_net(self):
        """The network in exact fixed-point arithmetic (:class:`~ddpm_codec.models.exact.ExactUNet`),
        built once: its outputs are the same bits on any machine and thread count."""
        if self._exact is None:
            from .exact import ExactUNet

            self._exact = ExactUNet.from_model(self)
        return self._exact

    @property
    def image_size(self) -> int:
        return self.net.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def eval_eps(self):
        """A faster epsilon function for evaluation (not the codec: its floats differ slightly from
        ``eps``): on CPU the network runs in channels-last layout (~20% faster, measured)."""
        if self.device.type != "cpu":
            return self.eps
        import copy

        net = copy.deepcopy(self.net).to(memory_format=torch.channels_last)   # self.net stays as the codec uses it

        @torch.no_grad()
        def f(xt: torch.Tensor, t) -> torch.Tensor:
            if not isinstance(t, torch.Tensor):
                t = torch.full((xt.shape[0],), int(t), dtype=torch.int64)
            x = xt.to(torch.float32).contiguous(memory_format=torch.channels_last)
            return net(x, t).contiguous()

        return f

    @torch.no_grad()
    def eps(self, xt: torch.Tensor, t) -> torch.Tensor:
        """The network's epsilon prediction for x_t ([N, C, H, W], any float dtype) at time t."""
        if not isinstance(t, torch.Tensor):
            t = torch.full((xt.shape[0],), int(t), dtype=torch.int64)
        return self.net(xt.to(self.device, torch.float32), t.to(self.device)).to(xt.device)


def fingerprint(config: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    decode_relevant = {k: config.get(k) for k in ("unet", "diffusion", "stats")}
    h.update(json.dumps(decode_relevant, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def combined_fingerprint(fingerprint_hex: str, context_hash_hex: str) -> str:
    """The fingerprint of a model together with its x_0 context model (hex SHA-256)."""
    return hashlib.sha256(f"{fingerprint_hex}:{context_hash_hex}".encode()).hexdigest()


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        p = p.with_suffix(p.suffix + ".safetensors") if p.suffix else p.with_suffix(".safetensors")
    return p, p.with_suffix(".json")


def save_model(path: str | Path, net: UNet, config: dict, *, dtype: torch.dtype = torch.float32,
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``<stem>.safetensors`` (weights in ``dtype``) and ``<stem>.json``; return the weights path."""
    from safetensors.torch import save_file

    wpath, jpath = _paths(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else net.state_dict()
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    config = dict(config)
    config["unet"] = net.config.to_dict()
    config.setdefault("diffusion", dict(DEFAULT_DIFFUSION))
    config["weights_dtype"] = str(dtype).replace("torch.", "")
    save_file(state, str(wpath), metadata={"format": "ddpm-codec-model-v1"})
    # the fingerprint covers the weights as stored (so fp16 files fingerprint as fp16)
    config["fingerprint"] = fingerprint(config, state)
    jpath.write_text(json.dumps(config, indent=1) + "\n")
    return wpath


def load_model(path: str | Path, *, device: str | torch.device = "cpu", name: str = "") -> LoadedModel:
    """Load a model saved by :func:`save_model`. Weights are cast to float32 for computation."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath, jpath = _paths(path)
    if not wpath.exists():
        raise ModelNotFoundError(f"no model weights at {wpath}")
    if not jpath.exists():
        raise ModelNotFoundError(f"model config {jpath} is missing (it must sit beside {wpath.name})")
    try:
        config = json.loads(jpath.read_text())
        ucfg = UNetConfig.from_dict(config["unet"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{jpath} is not a valid ddpm-codec model config: {e}") from None
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{wpath} is not a valid safetensors file: {e}") from None
    fp = fingerprint(config, state)
    net = UNet(ucfg)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ModelError(f"weights in {wpath} do not match the config in {jpath.name}: {str(e)[:300]}") from None
    net.eval().to(device)
    try:
        diffusion = _diffusion_of(config)
    except ValueError as e:
        raise ModelError(f"{jpath}: {e}") from None
    model = LoadedModel(net=net, diffusion=diffusion, config=config, fingerprint=fp, name=name or wpath.stem, path=wpath)
    if "x0_context" in config:
        model = with_x0_context(model, _load_x0_context(config["x0_context"], jpath))
    return model


def add_x0_context(path: str | Path, net) -> Path:
    """Ship the x_0 context model ``net`` with the saved model at ``path``: its fp16 weights go to
    ``x0-context/<stem>-tau<tau>.safetensors`` beside the model and the config names them with their
    hash. The model's own fingerprint does not change. Returns the weights path."""
    from .x0_context import context_hash, save_weights

    wpath, jpath = _paths(path)
    config = json.loads(jpath.read_text())
    rel = Path("x0-context") / f"{wpath.stem}-tau{net.config.tau}.safetensors"
    (jpath.parent / rel).parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, jpath.parent / rel)
    config["x0_context"] = {"weights": rel.as_posix(), "hash": context_hash(net)}
    jpath.write_text(json.dumps(config, indent=1) + "\n")
    return jpath.parent / rel


def _load_x0_context(entry, jpath: Path):
    """The context model a config names: ``{"weights": path relative to the config, "hash": context_hash}``."""
    from .x0_context import context_hash, load_weights

    try:
        wpath, declared = jpath.parent / entry["weights"], str(entry["hash"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"{jpath}: bad 'x0_context' entry (needs 'weights' and 'hash'): {e}") from None
    if not wpath.exists():
        raise ModelNotFoundError(f"{jpath.name} names an x_0 context model {wpath}, which is missing")
    net = load_weights(wpath)
    if context_hash(net) != declared:
        raise ModelError(f"x_0 context weights {wpath} do not match the hash in {jpath.name} "
                         f"({context_hash(net)[:8]} vs {declared[:8]})")
    return net


def with_x0_context(model: LoadedModel, net) -> LoadedModel:
    """The same model with a learned x_0 context model (weights rounded to fp16, as stored). The model's
    own fingerprint stays (its files keep decoding); files coded with the context model name
    :attr:`LoadedModel.context_fingerprint`, which covers both."""
    from .x0_context import context_hash

    if net is not None:
        round_weights_to_half(net)
        if net.config.tau < 1:
            raise ModelError(f"context model tau must be >= 1, got {net.config.tau}")
    return replace(model, x0_context=net, x0_context_hash=context_hash(net) if net is not None else None,
                   _ctx_coders={})


def _diffusion_of(config: dict) -> GaussianDiffusion:
    stats = config.get("stats") or {}
    return GaussianDiffusion.from_config(config.get("diffusion", DEFAULT_DIFFUSION), x0_mse=stats.get("x0_mse"),
                                         x0_shrink=stats.get("x0_shrink"), data_mean=stats.get("data_mean"))


def round_weights_to_half(net: torch.nn.Module) -> torch.nn.Module:
    """Round ``net``'s floating-point parameters and buffers in place to the nearest float16 value
    (kept in their own dtype), so the network computes with exactly what a float16 file stores.
    Idempotent. Returns ``net``."""
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))
    return net


def fresh_model(unet_config: UNetConfig, diffusion_config: dict | None = None) -> LoadedModel:
    """An untrained model (for tests and as the start of training)."""
    net = UNet(unet_config).eval()
    config = {"unet": unet_config.to_dict(), "diffusion": dict(diffusion_config or DEFAULT_DIFFUSION)}
    return LoadedModel(net=net, diffusion=GaussianDiffusion.from_config(config["diffusion"]), config=config,
                       fingerprint=fingerprint(config, net.state_dict()), name="untrained")


def with_stats(model: LoadedModel, x0_mse: np.ndarray, x0_shrink: np.ndarray | None = None,
               data_mean: np.ndarray | None = None) -> LoadedModel:
    """The same model with fitted statistics (changes the fingerprint): ``x0_mse`` (fitted
    variances, direct x_0 decoder), optionally ``x0_shrink`` + ``data_mean`` (what ``denoise`` shows)."""
    config = dict(model.config)
    stats = {"x0_mse": [float(v) for v in np.asarray(x0_mse, dtype=np.float64)]}
    if x0_shrink is not None:
        stats["x0_shrink"] = [float(v) for v in np.asarray(x0_shrink, dtype=np.float64)]
        stats["data_mean"] = [float(v) for v in np.asarray(data_mean, dtype=np.float64)]
    config["stats"] = stats
    diffusion = _diffusion_of(config)
    # hash the weights as they are stored (a model loaded from float16 computes in float32), so
    # the fingerprint equals that of the file save_model writes with the same dtype
    dtype = getattr(torch, str(config.get("weights_dtype", "float32")))
    state = {k: v.detach().to("cpu", dtype) for k, v in model.net.state_dict().items()}
    return LoadedModel(net=model.net, diffusion=diffusion, config=config,
                       fingerprint=fingerprint(config, state), name=model.name, path=model.path)
