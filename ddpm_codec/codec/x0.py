"""The lossless x_0 stage on both sides: p(x_0 | x_tau) by Eq. 13 with per-tile side information, or
by the model's learned context model.

:func:`x0_model` gives the model's own discretized-Gaussian means and scales from the chain's last
state; :class:`X0Side` is the per-tile side information (a scale factor and linear-prediction
coefficients on decoded residuals) and the ONE place that turns it into the coder's parameters,
for the encoder (:meth:`X0Side.write_pixels`), the decoder (:meth:`X0Side.read_pixels`) and the
segment cutter alike. :func:`write_pixels_context` / :func:`read_pixels_context` code x_0 pass by
pass under a context model (:mod:`ddpm_codec.models.x0_context`; profiles 11 and 12).
:class:`SideX0Code` and :class:`ContextX0Code` are what the segment stream writes after the last
step: each writes itself and checks that a stream prefix reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..coding import entropy, exact_entropy
from ..coding.entropy import read_raw_bits, write_raw_bits
from ..diffusion import GaussianDiffusion
from .settings import X0_CHANNEL_COEFS, X0_SCALE_FACTORS, CodecSettings


def x0_model(diffusion: GaussianDiffusion, x: torch.Tensor, tau: int, eps: torch.Tensor, variance: str):
    """Means and scales (float64 numpy, [B, C, H, W]) of p(x_0 | x_tau): ONE function for both sides."""
    means = diffusion.predict_x0(x, tau, eps).numpy()
    kind = variance if variance != "fixedlarge" or tau == 1 else "fitted"
    scale = float(diffusion.decoder_scale(tau, kind, x))
    return means, np.full_like(means, scale)


def x0_scaled(scales: np.ndarray, scale_idx: np.ndarray) -> np.ndarray:
    """Tile ``b``'s scales times ``X0_SCALE_FACTORS[scale_idx[b]]`` (IEEE products: both sides agree)."""
    return scales * np.asarray(X0_SCALE_FACTORS, dtype=np.float64)[np.asarray(scale_idx)][:, None, None, None]


@dataclass
class X0Side:
    """Per-tile side information of the lossless x_0 stage and the ONE place that turns it into the
    coder's means and scales (encoder, decoder and the segment cutter all go through here).

    Stream layout after the last step: the tiles' scale indices (4 raw bits each, if
    ``x0_scale_bits``), their channel coefficients (3 x 3 raw bits each: G|R, B|R, B|G, if
    ``x0_channel_bits``), their neighbour coefficients (18 x 3 raw bits each, if ``x0_neighbours``:
    for channel R, G, B in turn, the residuals of R, G, B above, then of R, G, B to the left), then
    the pixels. Pixel order: without coefficients, the C order of the masked ``[B, 3, H, W]`` tiles
    (one model); with channel coefficients only, channel by channel (every tile's R, then G, then
    B); with neighbours, pixel by pixel in raster order, R, G, B at each, all tiles together. A
    channel's mean is x_hat_0's plus, in this order, its channel terms (G: a_GR·r_R; B: a_BR·r_R +
    a_BG·r_G) and its neighbour terms (3 above, 3 left; residuals outside the tile or image are 0),
    where r = v/127.5 - 1 - x_hat_0 at the decoded value v: float64, term by term, on both sides.
    """

    settings: CodecSettings
    scale_idx: np.ndarray    # [B] int64 (zeros when unused)
    chan_idx: np.ndarray     # [B, 3] int64
    nb_idx: np.ndarray       # [B, 3, 6] int64: channel c's coefficients on (up R, G, B, left R, G, B)

    @classmethod
    def choose(cls, settings: CodecSettings, tiles_pix, means, scales, mask) -> "X0Side":
        """The encoder's choice (policy): each channel's coefficients by least squares on the tile's
        residuals, rounded to the table; then the scale factor with the fewest ideal bits."""
        b = len(means)
        side = cls(settings, np.full(b, 10, np.int64) if settings.x0_scale_bits else np.zeros(b, np.int64),
                   np.zeros((b, 3), np.int64), np.zeros((b, 3, 6), np.int64))
        if settings.x0_channel_bits:
            res = residual(tiles_pix, means, mask)
            up, left = shifted(res)
            table = np.asarray(X0_CHANNEL_COEFS)
            nearest = lambda a: int(np.argmin(np.abs(table - a)))  # noqa: E731
            for i in range(b):
                for c in range(3):
                    m = mask[i, c]
                    preds = [res[i, k][m] for k in range(c)]
                    if settings.x0_neighbours:
                        preds += [up[i, k][m] for k in range(3)] + [left[i, k][m] for k in range(3)]
                    if not preds:
                        continue
                    x = np.stack(preds, 1)
                    a = np.linalg.lstsq(x, res[i, c][m], rcond=None)[0] if len(x) > x.shape[1] else np.zeros(len(preds))
                    for k in range(c):   # chan_idx holds (G|R, B|R, B|G)
                        side.chan_idx[i, c - 1 + k] = nearest(a[k])
                    if settings.x0_neighbours:
                        side.nb_idx[i, c] = [nearest(v) for v in a[c:]]
        if settings.x0_scale_bits:
            eff_means, _ = side.apply(means, scales, tiles_pix, mask)
            side.scale_idx = choose_x0_scales(tiles_pix, eff_means, scales, mask)
        return side

    def apply(self, means, scales, tiles_pix, mask):
        """Effective (means, scales) ``[B, 3, H, W]`` given all the pixels (encoder side)."""
        if self.settings.x0_scale_bits:
            scales = x0_scaled(scales, self.scale_idx)
        if self.settings.x0_channel_bits:
            res = residual(tiles_pix, means, mask)
            up, left = shifted(res) if self.settings.x0_neighbours else (None, None)
            means = np.stack([self._means(means, res, up, left, c, np.s_[:, :]) for c in range(3)], 1)
        return means, scales

    def _coefs(self) -> tuple[np.ndarray, np.ndarray]:
        table = np.asarray(X0_CHANNEL_COEFS, dtype=np.float64)
        return table[self.chan_idx], table[self.nb_idx]   # [B, 3], [B, 3, 6]

    def _means(self, means, res, up, left, c: int, at, coefs=None) -> np.ndarray:
        """Channel ``c``'s means at pixel(s) ``at`` (an index into the trailing [H, W] axes), from the
        residuals ``res`` (and ``up``/``left``: residuals shifted down/right) — the one formula."""
        a, u = coefs if coefs is not None else self._coefs()
        ix = (slice(None),) + at
        ext = (Ellipsis,) + (None,) * (len(at) - sum(isinstance(v, (int, np.integer)) for v in at))  # [B] over `at`
        m = means[:, c][ix]
        if c == 1:
            m = m + a[:, 0][ext] * res[:, 0][ix]
        elif c == 2:
            m = m + a[:, 1][ext] * res[:, 0][ix]
            m = m + a[:, 2][ext] * res[:, 1][ix]
        if self.settings.x0_neighbours:
            for k in range(3):
                m = m + u[:, c, k][ext] * up[:, k][ix]
            for k in range(3):
                m = m + u[:, c, 3 + k][ext] * left[:, k][ix]
        return m

    def num_bits(self) -> int:
        """Raw bits of this side information (all tiles)."""
        return len(self.scale_idx) * self.settings.x0_side_bits_per_tile()

    def write(self, enc) -> None:
        b = len(self.scale_idx)
        if self.settings.x0_scale_bits:
            write_raw_bits(enc, self.scale_idx, np.full(b, self.settings.x0_scale_bits, np.int64))
        if self.settings.x0_channel_bits:
            write_raw_bits(enc, self.chan_idx.reshape(-1), np.full(3 * b, self.settings.x0_channel_bits, np.int64))
        if self.settings.x0_neighbours:
            write_raw_bits(enc, self.nb_idx.reshape(-1), np.full(18 * b, self.settings.x0_channel_bits, np.int64))

    @classmethod
    def read(cls, dec, settings: CodecSettings, b: int) -> "X0Side":
        try:
            scale_idx = (read_raw_bits(dec, np.full(b, settings.x0_scale_bits, np.int64))
                         if settings.x0_scale_bits else np.zeros(b, np.int64))
            chan_idx = (read_raw_bits(dec, np.full(3 * b, settings.x0_channel_bits, np.int64)).reshape(b, 3)
                        if settings.x0_channel_bits else np.zeros((b, 3), np.int64))
            nb_idx = (read_raw_bits(dec, np.full(18 * b, settings.x0_channel_bits, np.int64)).reshape(b, 3, 6)
                      if settings.x0_neighbours else np.zeros((b, 3, 6), np.int64))
        except Exception as exc:  # constriction's own errors on a damaged stream
            raise ValueError(f"x0 side information: {exc}") from exc
        return cls(settings, np.asarray(scale_idx, np.int64), np.asarray(chan_idx, np.int64),
                   np.asarray(nb_idx, np.int64))

    def _write(self, enc, pixels, means, scales) -> None:
        """Pixels under the discretized Gaussian, in the file's arithmetic (its pixel model:
        constriction's QuantizedGaussian, or exact integer frequencies without libm)."""
        pixels = np.asarray(pixels)
        self.settings.arithmetic.write_pixels(enc, pixels.reshape(-1), *entropy.coder_params(means, scales))

    def _read(self, dec, means, scales) -> np.ndarray:
        return self.settings.arithmetic.read_pixels(dec, *entropy.coder_params(means, scales))

    def write_pixels(self, enc, tiles_pix, means, scales, mask) -> None:
        if self.settings.x0_scale_bits:
            scales = x0_scaled(scales, self.scale_idx)
        if not self.settings.x0_channel_bits:
            self._write(enc, tiles_pix[mask], means[mask], scales[mask])
            return
        if not self.settings.x0_neighbours:
            res = np.zeros(means.shape)
            for c in range(3):
                m = mask[:, c]
                self._write(enc, tiles_pix[:, c][m], self._means(means, res, None, None, c, np.s_[:, :])[m],
                                     scales[:, c][m])
                res[:, c] = residual(tiles_pix[:, c], means[:, c], m)
            return
        eff, _ = self.apply(means, scales, tiles_pix, mask)
        order = (2, 3, 1, 0)   # [H, W, 3, B]: raster order, R G B at each pixel, all tiles together
        sel = mask.transpose(order)
        self._write(enc, tiles_pix.transpose(order)[sel], eff.transpose(order)[sel],
                             scales.transpose(order)[sel])

    def read_pixels(self, dec, means, scales, mask) -> np.ndarray:
        """uint8 tiles ``[B, 3, H, W]`` (zeros outside the image). Raises ValueError on bad data."""
        if self.settings.x0_scale_bits:
            scales = x0_scaled(scales, self.scale_idx)
        out = np.zeros(means.shape, np.uint8)
        if not self.settings.x0_channel_bits:
            out[mask] = self._read(dec, means[mask], scales[mask])
            return out
        res = np.zeros(means.shape)
        if not self.settings.x0_neighbours:
            for c in range(3):
                m = mask[:, c]
                oc = out[:, c]
                oc[m] = self._read(dec, self._means(means, res, None, None, c, np.s_[:, :])[m], scales[:, c][m])
                res[:, c] = residual(out[:, c], means[:, c], m)
            return out
        up, left = np.zeros(means.shape), np.zeros(means.shape)
        _, _, h, w = means.shape
        coefs = self._coefs()
        # the coder's parameters as entropy.coder_params makes them (checked once, for all pixels)
        _, std_pix = entropy.coder_params(means, scales)
        read_params = self.settings.arithmetic.read_pixels
        std_pix = std_pix.reshape(means.shape)
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    m = mask[:, c, y, x]
                    if not m.any():
                        continue
                    mu = self._means(means, res, up, left, c, (y, x), coefs)
                    mean_pix = entropy.pixel_means(mu[m])
                    if not np.all(np.isfinite(mean_pix)):
                        raise ValueError("x0 means overflow")
                    v = read_params(dec, mean_pix, std_pix[:, c, y, x][m])
                    out[m, c, y, x] = v
                    r = residual(out[:, c, y, x], means[:, c, y, x], m)
                    res[:, c, y, x] = r
                    if y + 1 < h:
                        up[:, c, y + 1, x] = r
                    if x + 1 < w:
                        left[:, c, y, x + 1] = r
        return out


def residual(pix: np.ndarray, means: np.ndarray, inside) -> np.ndarray:
    """x_0 - x_hat_0 at pixel values ``pix`` in the [-1, 1] convention, 0 where not ``inside`` the
    image: the one expression both sides evaluate (float64)."""
    return np.where(inside, pix / 127.5 - 1.0 - means, 0.0)


def shifted(res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals moved one row down (``up[.., y, x] = res[.., y-1, x]``) and one column right; 0 at edges."""
    up, left = np.zeros_like(res), np.zeros_like(res)
    up[..., 1:, :] = res[..., :-1, :]
    left[..., :, 1:] = res[..., :, :-1]
    return up, left


def choose_x0_scales(tiles_pix: np.ndarray, means: np.ndarray, scales: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The encoder's per-tile factor index: the one with the fewest ideal x_0 bits over the tile's
    pixels inside the image (encoder policy; any index decodes)."""
    idx = np.empty(len(tiles_pix), np.int64)
    for b in range(len(tiles_pix)):
        m = mask[b]
        bits = [entropy.ideal_bits(tiles_pix[b][m], means[b][m], scales[b][m] * f) for f in X0_SCALE_FACTORS]
        idx[b] = int(np.argmin(bits))
    return idx


# ----------------------------------------------------------------------------- x_0 by the context model

def _context_pass(ctx, q: int, pixels: torch.Tensor, xt: torch.Tensor, xhat: torch.Tensor, inside: torch.Tensor):
    """Pass ``q``'s (selection, means, scales) in pixel units: ONE function for both sides. ``pixels``
    uint8 ``[B, 3, H, W]`` with every pixel not yet decoded (and every one outside the image) zero."""
    from ..models.x0_context import pass_masks

    from .chain import TILES_PER_CALL

    b, _, h, w = pixels.shape
    known, target = pass_masks(q, h, w)
    known, target = known.expand(b, -1, -1, -1) & inside, target.expand(b, -1, -1, -1) & inside
    # tiles in pieces, as the U-Net sees them: bounded memory for large images (all 384 tiles of a
    # 768x512 image at once: profile 12's encode peaked at 3.2 GB); each tile's outputs are the same
    # bits either way (float64 convolutions run sample by sample; the exact path is exact)
    parts = [ctx(pixels[i:i + TILES_PER_CALL], xt[i:i + TILES_PER_CALL], xhat[i:i + TILES_PER_CALL],
                 known[i:i + TILES_PER_CALL], target[i:i + TILES_PER_CALL]) for i in range(0, b, TILES_PER_CALL)]
    mean, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    sel = target.numpy()
    return sel, mean.numpy()[sel], scale.numpy()[sel]


def write_pixels_context(enc, ctx, tiles_pix: np.ndarray, xt: torch.Tensor, xhat: torch.Tensor,
                         mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Code the tiles' pixels (uint8 ``[B, 3, H, W]``, inside ``mask``) pass by pass under the context
    model ``ctx`` (:class:`ddpm_codec.models.x0_context.ExactContextX0` for portable files) given the
    chain's ``x_tau`` and ``x_hat_0`` (float64 ``[B, 3, H, W]``), with exact integer frequencies.
    Returns each pass's (selection, means, scales): what a decoder computes when all before is right."""
    from ..models.x0_context import NUM_PASSES

    inside = torch.tensor(np.asarray(mask, bool))
    done = np.zeros(tiles_pix.shape, np.uint8)   # what the decoder holds before each pass
    passes = []
    for q in range(NUM_PASSES):
        sel, mean, scale = _context_pass(ctx, q, torch.from_numpy(done), xt, xhat, inside)
        exact_entropy.write_pixels(enc, tiles_pix[sel], mean, scale)
        done[sel] = tiles_pix[sel]
        passes.append((sel, mean, scale))
    return passes


def read_pixels_context(dec, ctx, xt: torch.Tensor, xhat: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """Inverse of :func:`write_pixels_context`: uint8 tiles ``[B, 3, H, W]`` (zeros outside ``mask``)."""
    from ..models.x0_context import NUM_PASSES

    inside = torch.tensor(np.asarray(mask, bool))
    out = np.zeros(tuple(xt.shape), np.uint8)
    for q in range(NUM_PASSES):
        sel, mean, scale = _context_pass(ctx, q, torch.from_numpy(out), xt, xhat, inside)
        out[sel] = exact_entropy.read_pixels(dec, mean, scale)
    return out


# ----------------------------------------------------------------------------- what the stream codes after the steps

class SideX0Code:
    """x_0 under Eq. 13 with per-tile side information (:class:`X0Side`), as the stream writes it."""

    def __init__(self, side: X0Side, tiles_pix, means, scales, mask):
        self.side, self.tiles_pix, self.means, self.scales, self.mask = side, tiles_pix, means, scales, mask

    def write(self, enc) -> None:
        self.side.write(enc)
        self.side.write_pixels(enc, self.tiles_pix, self.means, self.scales, self.mask)

    def reads_back(self, dec) -> bool:
        """Whether ``dec`` (positioned after the last step) reads this x_0 back exactly (segment cutter)."""
        side = self.side
        got = X0Side.read(dec, side.settings, len(self.tiles_pix))
        if not all(np.array_equal(a, b) for a, b in ((got.scale_idx, side.scale_idx), (got.chan_idx, side.chan_idx),
                                                     (got.nb_idx, side.nb_idx))):
            return False
        return np.array_equal(got.read_pixels(dec, self.means, self.scales, self.mask)[self.mask],
                              self.tiles_pix[self.mask])


class ContextX0Code:
    """x_0 under the learned context model, pass by pass (:func:`write_pixels_context`). It keeps each
    pass's parameters: a decoder that read every earlier pass right computes exactly these, so the
    segment cutter checks a prefix without running the network again."""

    def __init__(self, ctx, tiles_pix, xt: torch.Tensor, xhat: torch.Tensor, mask):
        self.ctx, self.tiles_pix, self.xt, self.xhat, self.mask = ctx, tiles_pix, xt, xhat, mask
        self.passes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def write(self, enc) -> None:
        self.passes = write_pixels_context(enc, self.ctx, self.tiles_pix, self.xt, self.xhat, self.mask)

    def ideal_bits(self) -> float:
        """-log2 p(x_0 | x_tau) under the context model (float measurement, not the coder's count)."""
        from ..models.x0_context import discretized_gaussian_bits

        return float(sum(discretized_gaussian_bits(torch.from_numpy(self.tiles_pix[sel]), torch.from_numpy(mean),
                                                   torch.from_numpy(scale)).sum() for sel, mean, scale in self.passes))

    def reads_back(self, dec) -> bool:
        for sel, mean, scale in self.passes:
            if not np.array_equal(exact_entropy.read_pixels(dec, mean, scale), self.tiles_pix[sel]):
                return False
        return True
