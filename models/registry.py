"""Shipped models by name, and ``--model NAME|PATH`` resolution.

Shipped weights live in this package's ``weights/`` folder as ``<name>.safetensors`` +
``<name>.json``; names are stable strings (never list positions). The default model is
``DEFAULT_MODEL``. :func:`register_model` adds a model of your own (a loaded one or a path) to the
ones :func:`find_by_fingerprint` searches, so ``ddpm_codec.decode(data)`` finds it by the
fingerprint a file names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .checkpoint import LoadedModel, combined_fingerprint, load_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "cifar10-cpu-small"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    preset: str
    test_bpd: float | None
    description: str
    fingerprint: str
    context_fingerprint: str = ""   # with its x_0 context model ("" without one)


def shipped_models() -> list[ModelInfo]:
    out = []
    for j in sorted(WEIGHTS_DIR.glob("*.json")):
        if not j.with_suffix(".safetensors").exists():
            continue
        cfg = json.loads(j.read_text())
        card = cfg.get("card", {})
        out.append(ModelInfo(name=j.stem, path=j.with_suffix(".safetensors"), preset=card.get("preset", "?"),
                             test_bpd=card.get("test_bpd"), description=card.get("description", ""),
                             fingerprint=cfg.get("fingerprint", ""),
                             context_fingerprint=_context_fingerprint(cfg)))
    return out


def _context_fingerprint(cfg: dict) -> str:
    """As :attr:`LoadedModel.context_fingerprint`, from the config alone (checked again on load)."""
    ctx = cfg.get("x0_context")
    if not isinstance(ctx, dict) or "hash" not in ctx or not cfg.get("fingerprint"):
        return ""
    return combined_fingerprint(cfg["fingerprint"], str(ctx["hash"]))


def resolve_model(spec: str | None = None, *, device="cpu") -> LoadedModel:
    """A shipped model's name (default: ``DEFAULT_MODEL``), a path to a saved model, or a diffusers
    DDPM folder (``google/ddpm-cifar10-32`` layout; see :mod:`.diffusers_import`)."""
    spec = spec or DEFAULT_MODEL
    names = {m.name: m for m in shipped_models()}
    if spec in names:
        return load_model(names[spec].path, device=device, name=spec)
    p = Path(spec).expanduser()
    from .diffusers_import import is_diffusers_folder, load_diffusers

    if is_diffusers_folder(p):   # a diffusers DDPM folder (config.json or unet/config.json): mapped on load
        return load_diffusers(p, device=device)
    if p.exists() or p.with_suffix(".safetensors").exists():
        return load_model(p, device=device)
    known = ", ".join(names) or "none shipped"
    raise ModelNotFoundError(f"no model {spec!r}: not a shipped name ({known}) nor an existing path")


_REGISTERED: list[LoadedModel | Path] = []


def register_model(model: LoadedModel | str | Path) -> None:
    """Let :func:`find_by_fingerprint` (and so ``ddpm_codec.decode(data)`` without a model) find
    ``model``: a loaded model (kept in memory) or a path to a saved one (loaded when a file names it).
    Registered models are searched before the shipped ones, in the order registered."""
    if not isinstance(model, LoadedModel):
        model = Path(model).expanduser()
        if not (model.exists() or model.with_suffix(".safetensors").exists()):
            raise ModelNotFoundError(f"no model at {model}")
    _REGISTERED.append(model)


def _matches(model: LoadedModel, prefix_hex: str) -> bool:
    return model.fingerprint.startswith(prefix_hex) or (model.context_fingerprint or "").startswith(prefix_hex)


def find_by_fingerprint(prefix_hex: str, *, device="cpu", accept=None) -> LoadedModel | None:
    """The registered (:func:`register_model`) or shipped model whose fingerprint, or whose fingerprint
    with its x_0 context model, starts with ``prefix_hex`` (as written in .ddpm files), and that ``accept``
    (if given) accepts: a version-5 file names its model by one byte, so the caller checks the file's keyed
    checksum against each candidate (:func:`ddpm_codec.codec.api.model_fits_file`)."""
    for r in _REGISTERED:
        model = r if isinstance(r, LoadedModel) else load_model(r, device=device)
        if _matches(model, prefix_hex) and (accept is None or accept(model)):
            return model
    for m in shipped_models():
        if m.fingerprint.startswith(prefix_hex) or m.context_fingerprint.startswith(prefix_hex):
            model = load_model(m.path, device=device, name=m.name)
            if _matches(model, prefix_hex) and (accept is None or accept(model)):
                return model
    return None
