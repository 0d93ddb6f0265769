"""INT8 activation quantization (spec section 2).

Symmetric INT8 in [-127, 127]. Two granularities:

* per-tensor **static**: one scale, fixed offline from calibration;
* per-token **dynamic**: one scale per row of a 2-D [M, K] activation,
  computed at run time from that row's amax.

All arithmetic is float32, each op rounded separately; division is true IEEE
division (``x / s``, never ``x * (1 / s)``); rounding is half to even.

Each public function runs its check of :mod:`fptq.spec.validate` once, then
an unchecked implementation (``_scale_from_amax``, ``_quantize``,
``_per_token``, ``_dequantize``) that assumes checked arguments.
"""

from __future__ import annotations

import numpy as np

from . import validate as V
from .arrays import NUMPY
from .formats import FLOAT, INT8_ACT, MIN_SCALE

__all__ = [
    "act_scale_from_amax",
    "quantize_act_per_tensor",
    "quantize_act_per_token",
    "dequantize_act",
]


def act_scale_from_amax(amax) -> np.ndarray:
    """Scale of a symmetric INT8 activation from its absolute maximum.

    Formula: ``scale = max(float32(amax) / 127, MIN_SCALE)``, where the
    division is one correctly rounded float32 division and ``MIN_SCALE`` is
    2**-126 (the smallest normal float32).

    Args:
        amax: float32, any shape, finite and >= 0.
    Returns:
        float32 array of the same shape, every element in [2**-126, FLT_MAX / 127]
        (FLT_MAX / 127 = 2.68e36, just above 2**121).
    Corners: amax = 0 (all-zero tensor/row) and amax < 127 * 2**-126 give
    ``MIN_SCALE``; every element then quantizes to 0 or to a value that the
    clip keeps in range.
    """
    return _scale_from_amax(V.act_scale_from_amax(NUMPY, amax))


def _scale_from_amax(amax: np.ndarray) -> np.ndarray:
    """Unchecked :func:`act_scale_from_amax` (float32, finite, >= 0)."""
    scale = amax / FLOAT(INT8_ACT.scale_divisor)
    return np.maximum(scale, MIN_SCALE).astype(FLOAT)


def _quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q = clip(rint(x / scale), -127, 127)`` as int8 (shared rounding rule)."""
    with np.errstate(over="ignore"):  # |x / s| may overflow to inf; the clip saturates it
        y = np.rint(x / scale)
    return np.clip(y, INT8_ACT.qmin, INT8_ACT.qmax).astype(np.int8)


def quantize_act_per_tensor(x, scale) -> np.ndarray:
    """Per-tensor static INT8 quantization.

    Formula: ``q = clip(rint(x / scale), -127, 127)``; ``x / scale`` is one
    float32 division, ``rint`` rounds half to even (2.5 -> 2, -0.5 -> -0),
    values beyond the range saturate (including a quotient that overflows to
    +-inf).

    Args:
        x: float32, any shape (empty allowed), finite.
        scale: one float32 (shape () or [1], nothing else), finite, > 0 (from calibration).
    Returns:
        int8 array of x's shape, values in [-127, 127].
    """
    x, scale = V.quantize_act_per_tensor(NUMPY, x, scale)
    return _quantize(x, scale.reshape(-1)[0])


def quantize_act_per_token(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-token dynamic INT8 quantization of a 2-D activation.

    Formula, per row m: ``amax_m = max_k |x[m, k]|`` (0 for an empty row),
    ``scale_m = act_scale_from_amax(amax_m)``,
    ``q[m, k] = clip(rint(x[m, k] / scale_m), -127, 127)``.

    Args:
        x: float32 [M, K], finite (M or K may be 0).
    Returns:
        (q int8 [M, K], scale float32 [M]).
    Corners: an all-zero row gets scale ``MIN_SCALE`` and q = 0. When
    ``amax / 127 >= MIN_SCALE`` the element holding the row's amax quantizes
    to +-127 exactly (amax / float32(amax / 127) is within a few float32 ulps
    of 127); when the scale is clamped to ``MIN_SCALE`` (amax < 127 * 2**-126)
    it quantizes to ``rint(amax / 2**-126)`` < 127 instead.
    """
    return _per_token(V.quantize_act_per_token(NUMPY, x))


def _per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unchecked :func:`quantize_act_per_token` (float32 [M, K], finite)."""
    if x.shape[1] == 0:
        amax = np.zeros(x.shape[0], dtype=FLOAT)
    else:
        amax = np.abs(x).max(axis=1)
    scale = _scale_from_amax(amax)
    return _quantize(x, scale[:, None]), scale


def dequantize_act(q, scale) -> np.ndarray:
    """Dequantize INT8 activations: ``x_hat = float32(q) * scale`` (one float32 multiply).

    Args:
        q: int8, any shape with one scale; [M, K] with a per-token scale.
        scale: one float32 (shape () or [1]: per-tensor), or float32 [M]
            (per-token, broadcast over K), finite, > 0.
    Returns:
        float32 array of q's shape (a 0-d q gives a 0-d result).
    """
    q, scale, per_token = V.dequantize_act(NUMPY, q, scale)
    return _dequantize(q, scale, per_token)


def _dequantize(q: np.ndarray, scale: np.ndarray, per_token: bool) -> np.ndarray:
    """Unchecked :func:`dequantize_act`."""
    s = scale[:, None] if per_token else scale.reshape(-1)[0]
    return np.asarray(q.astype(FLOAT) * s, dtype=FLOAT).reshape(q.shape)
