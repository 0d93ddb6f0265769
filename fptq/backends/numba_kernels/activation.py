"""INT8 activation kernels (spec section 2) on flat / 2-D float32 arrays.

Every float op is one float32 op: ``amax / 127``, ``x / scale`` (a true
division), ``rint`` (half to even), then a clip to [-127, 127]. Inputs have
been validated by the caller (finite, float32, C-contiguous, scales > 0).
"""

from __future__ import annotations

import numpy as np

from ...spec.formats import FLOAT, INT8_ACT, MIN_SCALE
from ._jit import njit, pnjit, prange

_DIV = FLOAT(INT8_ACT.scale_divisor)   # 127, as float32 (a float64 literal would promote)
_QMIN = FLOAT(INT8_ACT.qmin)
_QMAX = FLOAT(INT8_ACT.qmax)
_MIN_SCALE = FLOAT(MIN_SCALE)
#: elements per parallel chunk of the flat element-wise kernels
CHUNK = 1 << 16


@njit
def scale_from_amax(a):
    """``max(a / 127, 2**-126)`` for one float32 amax (one correctly rounded division)."""
    s = a / _DIV
    return s if s > _MIN_SCALE else _MIN_SCALE


@njit
def quantize_one(x, s):
    """``clip(rint(x / s), -127, 127)`` for one float32 value; an overflowing quotient saturates."""
    v = np.rint(x / s)
    if v > _QMAX:
        v = _QMAX
    elif v < _QMIN:
        v = _QMIN
    return np.int8(v)


@njit
def _scales_into(amax, out):
    for i in range(amax.size):
        out[i] = scale_from_amax(amax[i])


@njit
def act_scale_from_amax(amax):
    """float32 [n] -> float32 [n]: per-element :func:`scale_from_amax`."""
    out = np.empty(amax.size, FLOAT)
    _scales_into(amax, out)
    return out


@njit
def _quantize_into(x, s, q):
    for i in range(x.size):
        q[i] = quantize_one(x[i], s)


@pnjit
def quantize_per_tensor(x, s):
    """float32 [n], float32 scalar -> int8 [n]; parallel over chunks of ``CHUNK`` elements."""
    n = x.size
    q = np.empty(n, np.int8)
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _quantize_into(x[lo:hi], s, q[lo:hi])
    return q


@njit
def _row_amax(row):
    a = FLOAT(0.0)
    for i in range(row.size):
        v = abs(row[i])
        if v > a:
            a = v
    return a


@pnjit
def quantize_per_token(x):
    """float32 [M, K] -> (int8 [M, K], float32 [M]); one scale per row from its amax, parallel over rows."""
    m, k = x.shape
    q = np.empty((m, k), np.int8)
    scale = np.empty(m, FLOAT)
    for r in prange(m):
        s = scale_from_amax(_row_amax(x[r]))
        scale[r] = s
        _quantize_into(x[r], s, q[r])
    return q, scale


@njit
def _dequant_into(q, s, out):
    for i in range(q.size):
        out[i] = FLOAT(q[i]) * s


@pnjit
def dequantize_per_tensor(q, s):
    """int8 [n], float32 scalar -> float32 [n]: ``float32(q) * s`` (exact conversion, one rounded multiply)."""
    n = q.size
    out = np.empty(n, FLOAT)
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _dequant_into(q[lo:hi], s, out[lo:hi])
    return out


@pnjit
def dequantize_per_token(q, scale):
    """int8 [M, K], float32 [M] -> float32 [M, K]: row r times ``scale[r]``."""
    m, k = q.shape
    out = np.empty((m, k), FLOAT)
    for r in prange(m):
        _dequant_into(q[r], scale[r], out[r])
    return out
