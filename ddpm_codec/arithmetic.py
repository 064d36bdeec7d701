"""One arithmetic, two precisions: what everything a decoder's bits depend on is computed with.

A file's profile picks ONE :class:`Arithmetic` (``CodecSettings.arithmetic``); the chain carries it,
and every place where float and exact coding differ asks it instead of branching on a flag:

==================  ======================================  ==========================================
                    :data:`EXACT` (portable, the default)   :data:`FLOAT` (fast where kernels agree)
==================  ======================================  ==========================================
network, context    fixed point, every sum exact            float32 U-Net on one thread, float64
  model             (``models.exact``), any thread count    context model
``log``             :func:`ddpm_codec.coding.detmath.log`   ``math.log`` (libm)
sums of a model     ``math.fsum`` (correctly rounded)       numpy's pairwise ``sum``
timesteps           IEEE ÷ and × only                       ``numpy.linspace`` and ``**``
pixel model         exact integer frequencies               constriction's ``QuantizedGaussian``
                    (``coding.exact_entropy``)              (``coding.entropy``)
==================  ======================================  ==========================================

An exact file decodes bit-exactly on any IEEE-754 machine, SIMD level, thread count and library
build; a float file only where the same float kernels run (same ISA path, same library builds).
The object holds no state: :data:`FLOAT` and :data:`EXACT` are the only two values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Arithmetic", "FLOAT", "EXACT", "arithmetic"]

_LN2 = float.fromhex("0x1.62e42fefa39efp-1")   # math.log(2) and detmath.log(2.0), tested


@dataclass(frozen=True)
class Arithmetic:
    """How a file's bits are computed: ``"exact"`` (portable) or ``"float"``."""

    name: Literal["float", "exact"]

    def __post_init__(self):
        if self.name not in ("float", "exact"):
            raise ValueError(f"unknown arithmetic {self.name!r}; expected 'float' or 'exact'")

    @property
    def exact(self) -> bool:
        """Whether every value a decoder depends on is the same bits on every machine."""
        return self.name == "exact"

    @property
    def portable(self) -> bool:
        """Files in this arithmetic decode anywhere (the same as :attr:`exact`, named for users)."""
        return self.exact

    # -- scalars and sums ------------------------------------------------------------------
    def log(self, x):
        """Natural log: libm's (float) or :func:`~ddpm_codec.coding.detmath.log` (exact: no libm)."""
        if self.exact:
            from .coding import detmath

            return detmath.log(x)
        return math.log(x)

    @property
    def ln2(self) -> float:
        """ln 2 as this arithmetic's :meth:`log` gives it (both: the float64 nearest to ln 2)."""
        return _LN2

    def sum(self, values) -> float:
        """Σ values: correctly rounded (``math.fsum``, the same on any machine and numpy) or numpy's
        pairwise sum (float: the order of numpy's build)."""
        return math.fsum(values) if self.exact else float(np.sum(values))

    # -- pixel models: (mean_pix, std_pix) as entropy.coder_params makes them ------------------
    def write_pixels(self, encoder, pixels, mean_pix, std_pix) -> None:
        """Append ``pixels`` (uint8 ``[N]``) to a range encoder under the discretized Gaussian
        ``(mean_pix, std_pix)`` (pixel units, float64 ``[N]``)."""
        if self.exact:
            from .coding import exact_entropy

            exact_entropy.write_pixels(encoder, np.asarray(pixels, np.uint8), mean_pix, std_pix)
        else:
            from .coding import entropy

            entropy.write_pixels_params(encoder, pixels, mean_pix, std_pix)

    def read_pixels(self, decoder, mean_pix, std_pix) -> np.ndarray:
        """The inverse of :meth:`write_pixels`: uint8 ``[N]``; ValueError on data the coder rejects."""
        if self.exact:
            from .coding import exact_entropy

            return exact_entropy.read_pixels(decoder, mean_pix, std_pix)
        from .coding import entropy

        return entropy.read_pixels_params(decoder, mean_pix, std_pix)

    def __str__(self) -> str:
        return self.name


FLOAT = Arithmetic("float")
EXACT = Arithmetic("exact")


def arithmetic(spec: "Arithmetic | bool | int | str") -> Arithmetic:
    """:data:`EXACT` or :data:`FLOAT` from an :class:`Arithmetic`, its name, or a truthy ``exact`` flag."""
    if isinstance(spec, Arithmetic):
        return spec
    if isinstance(spec, str):
        return {"exact": EXACT, "float": FLOAT}.get(spec) or Arithmetic(spec)   # Arithmetic() raises on others
    return EXACT if spec else FLOAT
