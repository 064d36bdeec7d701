"""The exact network's elementwise work on the CPU as compiled loops (numba): the same IEEE
operations, in the same order, as the torch code in :mod:`ddpm_codec.models.exact`, one pass
over memory instead of five to ten torch calls.

:mod:`.exact` runs its layers either through these kernels (CPU, numba installed: the default)
or through torch (any device; the reference). Both give the same bits: every value here is an
IEEE basic operation (+ − × ÷ √), a round to nearest even (``np.rint``, as ``torch.round``), a
floor, a clamp, a comparison, an integer sum or a table lookup, written in the torch code's
order, and numba emits no fused multiply-add (no ``fastmath``; LLVM contracts ``a·b + c`` only
when told to, and ``tests/test_models_exact.py`` checks the machine code for FMA instructions).
Sums are exact (integers below 2^53 in float64, or int64), so their order does not matter.

Arrays are float64 and C-contiguous, viewed as ``[N, C, L]``; they are modified in place where a
function says so. Measured on this project's 2-vCPU machine (docs/results/exact-network.md, part
2b): one 32×32 forward pass of the shipped model takes 35.3 ms on one thread against 52.2 ms with
the torch code (float: 18.9 ms); what is left is mostly float64 ``conv2d``.
"""
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)   # no fastmath: no contraction, no reassociation


@_jit
def epilogue(s, inv, bias, amax, tp, res, mode):  # pragma: no cover - numba
    """In place on ``s [N, C, L]`` (a convolution's exact sums): ``y = clamp(rint(s·inv[c] +
    bias[c]))``; mode 1: then ``y = clamp(y + tp[n, c])`` (a residual block's time projection);
    mode 2: then ``y = clamp(y + res[n, c, i])`` (a residual connection)."""
    N, C, L = s.shape
    for n in range(N):
        for c in range(C):
            iv = inv[c]
            b = bias[c]
            row = s[n, c]
            if mode == 0:
                for i in range(L):
                    y = np.rint(row[i] * iv + b)
                    row[i] = min(max(y, -amax), amax)
            elif mode == 1:
                t = tp[n, c]
                for i in range(L):
                    y = np.rint(row[i] * iv + b)
                    y = min(max(y, -amax), amax)
                    row[i] = min(max(y + t, -amax), amax)
            else:
                rr = res[n, c]
                for i in range(L):
                    y = np.rint(row[i] * iv + b)
                    y = min(max(y, -amax), amax)
                    row[i] = min(max(y + rr[i], -amax), amax)


@_jit
def epilogue_wide(s, inv, bias, amax, tp, res, mode, out):  # pragma: no cover - numba
    """:func:`epilogue` from the shifted GEMMs' rows ``s [N, C, H, W + 2]`` (the last two columns of a
    row are not outputs) into ``out [N, C, H, W]``, ``res`` ``[N, C, H, W]``: the same operations."""
    N, C, H, W = out.shape
    for n in range(N):
        for c in range(C):
            iv = inv[c]
            b = bias[c]
            for h in range(H):
                row = s[n, c, h]
                orow = out[n, c, h]
                if mode == 0:
                    for i in range(W):
                        y = np.rint(row[i] * iv + b)
                        orow[i] = min(max(y, -amax), amax)
                elif mode == 1:
                    t = tp[n, c]
                    for i in range(W):
                        y = np.rint(row[i] * iv + b)
                        y = min(max(y, -amax), amax)
                        orow[i] = min(max(y + t, -amax), amax)
                else:
                    rr = res[n, c, h]
                    for i in range(W):
                        y = np.rint(row[i] * iv + b)
                        y = min(max(y, -amax), amax)
                        orow[i] = min(max(y + rr[i], -amax), amax)


@_jit
def silu_row(y, out, fs, ks, tab, dif, off, hi, down, up, amax):  # pragma: no cover - numba
    """``out = silu(y)`` for a row (grid units), as :meth:`ddpm_codec.models.exact._Ctx.silu_torch`
    in its order: ``u = clamp(y + off, 0, hi)``, ``j = floor(u·down)``, ``f = u − j·up``, ``v =
    rint(D[j]·f·down) + T[j]``; where ``y ≥ off``, ``clamp(rint(y))`` instead (both computed, then a
    select). Two loops: the arithmetic up to the table index (vectorized), then the lookups.
    ``fs``, ``ks``: scratch."""
    n = y.shape[0]
    for i in range(n):
        u = min(max(y[i] + off, 0.0), hi)
        j = np.floor(u * down)
        fs[i] = u - j * up
        ks[i] = np.int64(j)
    for i in range(n):
        k = ks[i]
        v = np.rint(dif[k] * fs[i] * down) + tab[k]
        x = y[i]
        p = min(max(np.rint(x), -amax), amax)
        out[i] = p if x >= off else v


@_jit
def silu(a, out, tab, dif, off, hi, down, up, amax):  # pragma: no cover - numba
    """``out = silu(a)``, flat arrays."""
    n = a.shape[0]
    fs, ks = np.empty(n), np.empty(n, np.int64)
    silu_row(a, out, fs, ks, tab, dif, off, hi, down, up, amax)


@_jit
def gn_sums(a, G, s1, s2):  # pragma: no cover - numba
    """Per (sample, group) of ``a [N, C, L]`` (integers, |a| < 2^31): ``s1 = Σ a`` (float64,
    exact below 2^53) and ``s2 = Σ a²`` (int64, exact below 2^63)."""
    N, C, L = a.shape
    cg = C // G
    for n in range(N):
        for g in range(G):
            t1 = 0.0
            t2 = 0
            for c in range(g * cg, (g + 1) * cg):
                row = a[n, c]
                for i in range(L):
                    v = row[i]
                    t1 += v
                    k = np.int64(v)
                    t2 += k * k
            s1[n, g] = t1
            s2[n, g] = t2


@_jit
def gn_apply(a, scale, shift, out, silu, tab, dif, off, hi, down, up, amax):  # pragma: no cover - numba
    """``y = a·scale[n, c] + shift[n, c]`` (two roundings), then ``clamp(rint(y))`` or, with
    ``silu``, the SiLU table on the unrounded ``y``; into ``out [N, C, L]``."""
    N, C, L = a.shape
    ys, fs, ks = np.empty(L), np.empty(L), np.empty(L, np.int64)
    for n in range(N):
        for c in range(C):
            sc = scale[n, c]
            sf = shift[n, c]
            row = a[n, c]
            orow = out[n, c]
            if silu:
                for i in range(L):
                    ys[i] = row[i] * sc + sf
                silu_row(ys, orow, fs, ks, tab, dif, off, hi, down, up, amax)
            else:
                for i in range(L):
                    orow[i] = min(max(np.rint(row[i] * sc + sf), -amax), amax)


@_jit
def gn_apply_pad(a, scale, shift, out, silu, tab, dif, off, hi, down, up, amax):  # pragma: no cover - numba
    """:func:`gn_apply` from ``a [N, C, L]`` (L = H·W) into the interior of ``out [N, C, H + 2, W + 2]``
    (a 3x3 convolution's zero-bordered input; the border is left as it is): the same operations,
    a channel at a time into a scratch row, then copied row by row."""
    N, C, L = a.shape
    H, W = out.shape[2] - 2, out.shape[3] - 2
    ob = np.empty((1, 1, L))
    for n in range(N):
        for c in range(C):
            gn_apply(a[n:n + 1, c:c + 1], scale[n:n + 1, c:c + 1], shift[n:n + 1, c:c + 1], ob, silu,
                     tab, dif, off, hi, down, up, amax)
            for h in range(H):
                out[n, c, h + 1, 1:W + 1] = ob[0, 0, h * W:(h + 1) * W]


@_jit
def gn_params(s1, s2, cnt, gamma, beta2, eps, down2, scale, shift):  # pragma: no cover - numba
    """GroupNorm's per (sample, channel) ``scale`` and ``shift`` from the exact sums ``s1 [N, G]``
    (float64) and ``s2 [N, G]`` (int64), as :class:`ddpm_codec.models.exact._QGroupNorm` computes
    them: ``mean = s1/cnt``, ``var = max(s2/cnt − mean², 0)·down2``, ``rstd = 1/√(var + eps)``,
    ``scale = rstd·γ[c]``, ``shift = β[c] − mean·scale`` (``gamma``, ``beta2`` ``[C]``)."""
    N, G = s1.shape
    C = gamma.shape[0]
    cg = C // G
    for n in range(N):
        for g in range(G):
            mean = s1[n, g] / cnt
            var = np.float64(s2[n, g]) / cnt - mean * mean
            var = max(var, 0.0) * down2
            rstd = 1.0 / np.sqrt(var + eps)
            for c in range(g * cg, (g + 1) * cg):
                sc = rstd * gamma[c]
                scale[n, c] = sc
                shift[n, c] = beta2[c] - mean * sc


@_jit
def softmax_weights(s, lo, up_e, up_p, coef, inv_ln2, ln2_hi, ln2_lo):  # pragma: no cover - numba
    """In place on the attention scores ``s [R, K]`` (rows): ``x = max(s − max(row), lo)`` (``lo``
    ≥ -700), ``e = rint(exp(x)·up_e)``, ``z = Σ e`` (exact: integers, summed in int64),
    ``p = rint(e·up_p / z)``. ``exp`` is :func:`ddpm_codec.coding.detmath.exp` in its order: ``k =
    rint(x/ln2)``, ``r = (x − k·ln2_hi) − k·ln2_lo``, Horner's rule from the top coefficient (a
    multiply, then an add; written out: a loop over ``i`` that LLVM vectorizes), times ``2^k`` (exact: normal results here, as detmath's ``ldexp``),
    2^k built from its bits so that the loop has no table lookup."""
    R, K = s.shape
    if coef.shape[0] != 14:
        raise ValueError("the exp polynomial has 14 coefficients")
    c0, c1, c2, c3, c4, c5, c6 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6]
    c7, c8, c9, c10, c11, c12, c13 = coef[7], coef[8], coef[9], coef[10], coef[11], coef[12], coef[13]
    poly = np.empty(K)
    bits = np.empty(K, np.int64)
    pow2 = bits.view(np.float64)
    for r in range(R):
        row = s[r]
        m = row[0]
        for i in range(1, K):
            m = max(m, row[i])
        for i in range(K):
            x = max(row[i] - m, lo)
            k = np.rint(x * inv_ln2)
            t = x - k * ln2_hi
            t = t - k * ln2_lo
            acc = c13
            acc = acc * t
            acc = acc + c12
            acc = acc * t
            acc = acc + c11
            acc = acc * t
            acc = acc + c10
            acc = acc * t
            acc = acc + c9
            acc = acc * t
            acc = acc + c8
            acc = acc * t
            acc = acc + c7
            acc = acc * t
            acc = acc + c6
            acc = acc * t
            acc = acc + c5
            acc = acc * t
            acc = acc + c4
            acc = acc * t
            acc = acc + c3
            acc = acc * t
            acc = acc + c2
            acc = acc * t
            acc = acc + c1
            acc = acc * t
            acc = acc + c0
            poly[i] = acc
            bits[i] = (np.int64(k) + 1023) << 52
        for i in range(K):
            row[i] = np.rint(poly[i] * pow2[i] * up_e)
        z = 0
        for i in range(K):
            z += np.int64(row[i])
        zf = np.float64(z)
        for i in range(K):
            row[i] = np.rint(row[i] * up_p / zf)
