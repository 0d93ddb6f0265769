"""LAE kernels (spec section 3): channel scales and the two transforms.

``lae_scales``: ``t = float32(m + 2)``, ``l = float32(log2(float64(t)))``
(log2 in float64, rounded once to float32, as the reference does; the spec
allows 2 ulp), ``s = m / l`` (one float32 division); ``m < 2**-126`` gives 1.
The transforms are one float32 division / multiplication per element.
"""

from __future__ import annotations

import numpy as np

from ...spec.formats import FLOAT, MIN_SCALE
from ._jit import njit, pnjit, prange

_TWO = FLOAT(2.0)
_ONE = FLOAT(1.0)
_MIN_SCALE = FLOAT(MIN_SCALE)


@njit
def lae_scales(m):
    """float32 [K] channel maxima (>= 0) -> float32 [K] scales (> 0)."""
    s = np.empty(m.size, FLOAT)
    for j in range(m.size):
        mj = m[j]
        if mj < _MIN_SCALE:
            s[j] = _ONE
        else:
            t = mj + _TWO
            l2 = FLOAT(np.log2(np.float64(t)))
            s[j] = mj / l2
    return s


@njit
def _div_row(x, s, out):
    for j in range(x.size):
        out[j] = x[j] / s[j]


@njit
def _mul_row(w, s, out):
    for j in range(w.size):
        out[j] = w[j] * s[j]


@pnjit
def lae_apply_activation(x, s):
    """float32 [M, K] / float32 [K] column-wise -> float32 [M, K] (true division), parallel over rows."""
    m, k = x.shape
    out = np.empty((m, k), FLOAT)
    for r in prange(m):
        _div_row(x[r], s, out[r])
    return out


@pnjit
def lae_apply_weight(w, s):
    """float32 [N, K] * float32 [K] column-wise -> float32 [N, K], parallel over rows."""
    n, k = w.shape
    out = np.empty((n, k), FLOAT)
    for r in prange(n):
        _mul_row(w[r], s, out[r])
    return out
