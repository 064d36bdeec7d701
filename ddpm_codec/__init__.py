"""ddpm-codec: a progressive, lossless-capable image codec built on a DDPM (Ho et al. 2020).

    import ddpm_codec as dc
    model = dc.load_model()                     # the shipped default, or a name / checkpoint path
    res = dc.encode(image_uint8_hwc, model)     # EncodeResult: .data (the .ddpm bytes), .steps (report)
    img = dc.decode(res.data, model).image      # bit-exact; decode(..., steps=300) for a preview

Names are imported on first use, so ``import ddpm_codec`` (and the CLI) start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"
_LAZY = {
    "encode": ("ddpm_codec.codec", "encode"),
    "decode": ("ddpm_codec.codec", "decode"),
    "CodecSettings": ("ddpm_codec.codec", "CodecSettings"),
    "DecodeError": ("ddpm_codec.codec", "DecodeError"),
    "load_model": ("ddpm_codec.models.registry", "resolve_model"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'ddpm_codec' has no attribute {name!r}")
