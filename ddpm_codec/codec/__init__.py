"""Progressive coding with a DDPM: Algorithms 3 and 4 of Ho et al. (2020) with real bits.

The sender transmits x_T, x_{t_2}, ..., x_tau along a (strided) chain by reverse channel coding
(``coding.rcc``): each x_s ~ q(x_s | x_t, x_0) is sent using p_theta(x_s | x_t). Then x_0 is
entropy-coded exactly with the discretized Gaussian p(x_0 | x_tau) (Eq. 13; ``coding.entropy``).
The receiver can stop after any step and show x_hat_0 (Eq. 15), a sample, or a deterministic
probability-flow decode. Both sides compute every network output with the same batch layout and
a fixed thread count, so the decoder reproduces the encoder's floats bit for bit on the same
hardware; a pixel checksum turns any divergence into a clear error.

Modules, one concern each:

- :mod:`.settings` — :class:`CodecSettings` (what a file's schedule says) and the format constants.
- :mod:`.profiles` — the built-in profiles, each spelled out, and the default.
- :mod:`.tiles` — images as 32x32 tiles in [-1, 1]; input checks; per-image metrics.
- :mod:`.chain` — the coding chain both sides walk: ONE step function for encode, decode and trace.
- :mod:`.stream` — all steps in one range-coded stream, cut into segments.
- :mod:`.x0` — the lossless x_0 stage and its per-tile side information.
- :mod:`.api` — :func:`encode`, :func:`decode`, :func:`trace_theoretical` and their results.
- :mod:`.batch` — :func:`encode_many`, :func:`decode_many`: several images, their network calls batched.
- :mod:`.describe` — a file's header and framing in words (what `ddpm-codec info` prints).
"""
from __future__ import annotations

# Names are imported on first use (like ``ddpm_codec``): reading a header (``ddpm-codec info``,
# ``profiles``) does not import torch.
_LAZY = {
    **dict.fromkeys(("RECONSTRUCT_MODES", "DecodeError", "DecodeResult", "EncodeResult", "Reconstruct", "StepRecord",
                     "check_model", "decode", "encode", "trace_theoretical"), "api"),
    **dict.fromkeys(("DEFAULT_PROFILE", "PLAIN_DEFAULT_PROFILE", "PROFILE_INFO", "PROFILES", "Profile",
                     "default_profile", "default_settings", "profile_id", "profile_of", "read_header",
                     "settings_with"), "profiles"),
    **dict.fromkeys(("COUNT_MODEL_2", "COUNT_SPIKES", "SCHEDULE_KINDS", "SELECTION_IDS", "TRELLIS_COUNT_SCALE",
                     "VARIANCE_IDS", "X0_CHANNEL_COEFS", "X0_MODELS", "X0_SCALE_FACTORS", "CodecSettings", "x0_model_fields"),
                    "settings"),
    **dict.fromkeys(("check_image", "from_tiles", "to_tiles"), "tiles"),
    **dict.fromkeys(("DEFAULT_BATCH", "decode_many", "encode_many"), "batch"),
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
