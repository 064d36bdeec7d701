"""The top-level API: ``ddpm_codec.encode`` and ``ddpm_codec.decode`` with sane defaults.

    import ddpm_codec as dc
    res = dc.encode(image)                  # uint8 [H, W, 3]; the shipped model, the default profile
    img = dc.decode(res.data).image         # the model is found from the file's fingerprint

Everything here forwards to :mod:`ddpm_codec.codec` (full control: settings, seeds, progress
callbacks); this layer only picks the model, turns a profile name into settings and names the
stopping rules as the CLI does (``steps``, ``bpd``, ``psnr``). Loaded models are cached, so
coding many images loads each model once.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .errors import Error, InputError, ModelNotFoundError

if TYPE_CHECKING:
    import numpy as np

    from .codec import CodecSettings, DecodeResult, EncodeResult
    from .models.checkpoint import LoadedModel


@functools.lru_cache(maxsize=4)
def _shipped(name: str | None) -> LoadedModel:
    from .models.registry import resolve_model

    return resolve_model(name)


def _model(model: LoadedModel | str | None = None) -> LoadedModel:
    """A loaded model as is; a shipped model's name (default: the shipped default), cached; or a path
    to a saved model / a diffusers folder (``ddpm-codec import``), loaded on every call."""
    from .models.checkpoint import LoadedModel
    from .models.registry import shipped_models

    if isinstance(model, LoadedModel):
        return model
    if model is None or model in {m.name for m in shipped_models()}:
        return _shipped(model)
    from .models.registry import resolve_model

    return resolve_model(str(model))


def settings_for(profile: int | str | None = None, model: LoadedModel | None = None, *,
                 x0_model: str | None = None, **overrides) -> CodecSettings:
    """A built-in profile's settings by id or name (default: the model's default profile) with the
    non-None ``overrides`` (:class:`~ddpm_codec.codec.CodecSettings` fields) and ``x0_model`` (a name:
    model, scale, channels, neighbours, context) applied. An unknown or invalid one raises
    :class:`~ddpm_codec.errors.InputError`."""
    from .codec import settings_with, x0_model_fields

    try:
        fields = x0_model_fields(x0_model) if x0_model is not None else {}
        return settings_with(profile, model=model, **overrides, **fields)
    except Error:
        raise
    except (ValueError, TypeError) as e:   # the settings' own validation (one line, naming the field)
        raise InputError(str(e)) from None


def encode(image: np.ndarray, model: LoadedModel | str | None = None, *, profile: int | str | None = None,
           steps: int | None = None, bpd: float | None = None, psnr: float | None = None,
           **options) -> EncodeResult:
    """Encode a uint8 RGB image ``[H, W, 3]`` (grayscale ``[H, W]`` as RGB) to ``.ddpm`` bytes.

    ``model``: a loaded model, a shipped model's name or a path (default: the shipped default).
    ``profile``: a built-in profile's id or name (``ddpm-codec profiles``; default: the model's
    default). Lossless unless one of these stops the chain early: ``steps`` (reverse-process time
    T - t + 1), ``bpd`` (cumulative bits/dim), ``psnr`` (the first step whose reconstruction reaches
    it, in dB). ``options`` go to :func:`ddpm_codec.codec.encode` (``seed``, ``effort``, ``progress``,
    ``max_pixels``, ...). Returns an :class:`~ddpm_codec.codec.EncodeResult`; ``.data`` is the file.
    """
    from . import codec

    m = _model(model)
    settings = options.pop("settings", None) or settings_for(profile, m)
    return codec.encode(image, m, settings=settings, max_reverse_time=steps, max_bpd=bpd, min_psnr=psnr, **options)


def decode(data: bytes, model: LoadedModel | str | None = None, *, steps: int | None = None,
           **options) -> DecodeResult:
    """Decode ``.ddpm`` bytes: exactly for a lossless file (checksum verified), else from its last coded
    step. ``model``: default the one the file names, found by its fingerprint among the registered
    (:func:`~ddpm_codec.models.registry.register_model`) and shipped models. ``steps=N``: use only the
    coding steps with T - t + 1 <= N (a preview). ``options`` go to :func:`ddpm_codec.codec.decode`
    (``reconstruct``, ``progressive``, ``max_pixels``, ...). Returns a
    :class:`~ddpm_codec.codec.DecodeResult`; ``.image`` is uint8 ``[H, W, 3]``."""
    from . import codec

    m = _model(model) if model is not None else model_for(data)
    return codec.decode(bytes(data), m, steps=steps, **options)


def model_for(data: bytes) -> LoadedModel:
    """The registered or shipped model a ``.ddpm`` file names by its fingerprint (from the header
    alone), or :class:`~ddpm_codec.errors.ModelNotFoundError` naming the fingerprint."""
    from .codec import read_header
    from .models.registry import find_by_fingerprint

    from .codec.api import model_fits_file

    parsed, settings = read_header(bytes(data))
    fp = parsed.file.header.fingerprint.hex()

    def fits(m: LoadedModel) -> bool:   # version 5 names the model by one byte: its keyed checksum decides
        return model_fits_file(parsed, settings, m)

    default = _shipped(None)   # cached: most files name it
    if fits(default):
        return default
    found = find_by_fingerprint(fp, accept=fits)
    if found is None:
        raise ModelNotFoundError(f"the file names model {fp}, which is neither shipped nor registered: pass the "
                                 f"model that encoded it, or register it (ddpm_codec.register_model)")
    return found
