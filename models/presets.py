"""Named U-Net sizes. ``ddpm-cifar10`` is the paper's CIFAR-10 model (35.7M parameters)."""
from __future__ import annotations

from ..errors import InputError
from .unet import UNetConfig

PRESETS: dict[str, UNetConfig] = {
    # Ho et al. (2020), Appendix B: ch 128, mult 1,2,2,2, 2 res blocks, attention at 16x16.
    "ddpm-cifar10": UNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # Short GPU runs (about a quarter of the paper's width).
    "gpu-medium": UNetConfig(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # Sized for a 2-core CPU: about 2.2M parameters.
    "cpu-small": UNetConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # For tests and smoke runs: seconds per hundred steps.
    "tiny": UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0),
}


def get_preset(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    d = PRESETS[name].to_dict()
    d.update({k: v for k, v in overrides.items() if v is not None})
    return UNetConfig.from_dict(d)
