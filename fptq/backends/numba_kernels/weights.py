"""Groupwise INT4 weight kernels (spec section 4), parallel over output rows.

Group g of a row covers columns ``[g*G, min((g+1)*G, K))`` (the last one may be
shorter). Symmetric: ``scale = max(amax / 7, 2**-126)``,
``q = clip(rint(w / scale), -8, 7)``. Asymmetric: ``lo = min(min w, 0)``,
``hi = max(max w, 0)``, ``scale = max((hi - lo) / 15, 2**-126)``,
``z = clip(rint(-lo / scale), 0, 15)``, ``q = clip(rint(w / scale) + z, 0, 15)``.
Every float op is a separately rounded float32 op; division is true division.
"""

from __future__ import annotations

import numpy as np

from ...spec.formats import FLOAT, INT4_SYM, MIN_SCALE, UINT4_ASYM
from ._jit import njit, pnjit, prange

_SYM_DIV = FLOAT(INT4_SYM.scale_divisor)
_SYM_QMIN = FLOAT(INT4_SYM.qmin)
_SYM_QMAX = FLOAT(INT4_SYM.qmax)
_ASYM_DIV = FLOAT(UINT4_ASYM.scale_divisor)
_ASYM_QMIN = FLOAT(UINT4_ASYM.qmin)
_ASYM_QMAX = FLOAT(UINT4_ASYM.qmax)
_MIN_SCALE = FLOAT(MIN_SCALE)
_ZERO = FLOAT(0.0)


@njit
def _clip(v, lo, hi):
    if v > hi:
        return hi
    if v < lo:
        return lo
    return v


@njit
def _amax(seg):
    a = _ZERO
    for i in range(seg.size):
        v = abs(seg[i])
        if v > a:
            a = v
    return a


@njit
def _min_max0(seg):
    """(min(min seg, 0), max(max seg, 0))."""
    lo = _ZERO
    hi = _ZERO
    for i in range(seg.size):
        v = seg[i]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@pnjit
def weight_scales_sym(w, g):
    """float32 [N, K], G -> float32 [N, ng] symmetric scales."""
    n, k = w.shape
    ng = (k + g - 1) // g
    scale = np.empty((n, ng), FLOAT)
    for r in prange(n):
        row = w[r]
        for j in range(ng):
            s = _amax(row[j * g:min((j + 1) * g, k)]) / _SYM_DIV
            scale[r, j] = s if s > _MIN_SCALE else _MIN_SCALE
    return scale


@pnjit
def weight_scales_asym(w, g):
    """float32 [N, K], G -> (float32 [N, ng] scales, uint8 [N, ng] zero points); a group whose span
    max - min overflows float32 gets an infinite scale (the caller raises the spec's error)."""
    n, k = w.shape
    ng = (k + g - 1) // g
    scale = np.empty((n, ng), FLOAT)
    zero = np.empty((n, ng), np.uint8)
    for r in prange(n):
        row = w[r]
        for j in range(ng):
            lo, hi = _min_max0(row[j * g:min((j + 1) * g, k)])
            s = (hi - lo) / _ASYM_DIV
            s = s if s > _MIN_SCALE else _MIN_SCALE
            scale[r, j] = s
            zero[r, j] = np.uint8(_clip(np.rint(-lo / s), _ASYM_QMIN, _ASYM_QMAX))
    return scale, zero


@njit
def _quantize_seg(seg, s, z, qmin, qmax, out):
    """``clip(rint(w / s) + z, qmin, qmax)``; symmetric: z = +0.0 (adding it changes no integer)."""
    for i in range(seg.size):
        out[i] = np.int8(_clip(np.rint(seg[i] / s) + z, qmin, qmax))


@pnjit
def _quantize(w, scale, zero, g, asym, qmin, qmax):
    n, k = w.shape
    ng = scale.shape[1]
    q = np.empty((n, k), np.int8)
    for r in prange(n):
        for j in range(ng):
            lo, hi = j * g, min((j + 1) * g, k)
            z = FLOAT(zero[r, j]) if asym else _ZERO
            _quantize_seg(w[r, lo:hi], scale[r, j], z, qmin, qmax, q[r, lo:hi])
    return q


def quantize_sym(w, scale, g):
    """float32 [N, K], float32 [N, ng], G -> int8 [N, K] in [-8, 7]."""
    return _quantize(w, scale, np.zeros((1, 1), np.uint8), g, False, _SYM_QMIN, _SYM_QMAX)


def quantize_asym(w, scale, zero, g):
    """float32 [N, K], float32 [N, ng], uint8 [N, ng], G -> int8 [N, K] in [0, 15]."""
    return _quantize(w, scale, zero, g, True, _ASYM_QMIN, _ASYM_QMAX)


@njit
def _dequant_seg(q, z, s, out):
    for i in range(q.size):
        out[i] = FLOAT(np.int32(q[i]) - z) * s


@pnjit
def dequantize(q, scale, zero, g):
    """int8 [N, K], float32 [N, ng], uint8 [N, ng] (all zeros for symmetric), G -> float32 [N, K]:
    ``float32(q - z) * scale`` (the integer difference is exact)."""
    n, k = q.shape
    ng = scale.shape[1]
    out = np.empty((n, k), FLOAT)
    for r in prange(n):
        for j in range(ng):
            lo, hi = j * g, min((j + 1) * g, k)
            _dequant_seg(q[r, lo:hi], np.int32(zero[r, j]), scale[r, j], out[r, lo:hi])
    return out
