"""ddpm-codec: a progressive, lossless-capable image codec built on a DDPM (Ho et al. 2020).

    import ddpm_codec as dc
    res = dc.encode(image)                      # uint8 [H, W, 3]; EncodeResult: .data (the .ddpm bytes)
    img = dc.decode(res.data).image             # bit-exact; the model is found from the file's fingerprint
    dc.encode(image, profile="context", psnr=30)   # a profile by name or id; lossy: steps=, bpd=, psnr=
    dc.decode(res.data, steps=900)              # a preview from the first 900 reverse steps

``dc.load_model(name_or_path)`` loads a model (default: the shipped one); ``dc.register_model``
lets ``decode`` find one of your own. Every error the codec raises on purpose is a ``dc.Error``.
Full control (settings, seeds, callbacks): :mod:`ddpm_codec.codec`. Pillow: ``import ddpm_codec.pillow``.

Names are imported on first use, so ``import ddpm_codec`` (and the CLI) start fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # what type checkers and IDEs see; at run time the names load on first use
    from .codec import CodecSettings, DecodeError, DecodeResult, EncodeResult
    from .coding.container import DdpmFormatError as FormatError
    from .errors import Error, InputError, ModelNotFoundError
    from .models.registry import register_model
    from .models.registry import resolve_model as load_model
    from .simple import decode, encode, settings_for

__version__ = "0.1.0"
_LAZY = {
    "encode": ("ddpm_codec.simple", "encode"),
    "decode": ("ddpm_codec.simple", "decode"),
    "settings_for": ("ddpm_codec.simple", "settings_for"),
    "CodecSettings": ("ddpm_codec.codec", "CodecSettings"),
    "EncodeResult": ("ddpm_codec.codec", "EncodeResult"),
    "DecodeResult": ("ddpm_codec.codec", "DecodeResult"),
    "Error": ("ddpm_codec.errors", "Error"),
    "InputError": ("ddpm_codec.errors", "InputError"),
    "ModelNotFoundError": ("ddpm_codec.errors", "ModelNotFoundError"),
    "DecodeError": ("ddpm_codec.codec", "DecodeError"),
    "FormatError": ("ddpm_codec.coding.container", "DdpmFormatError"),
    "load_model": ("ddpm_codec.models.registry", "resolve_model"),
    "register_model": ("ddpm_codec.models.registry", "register_model"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'ddpm_codec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
