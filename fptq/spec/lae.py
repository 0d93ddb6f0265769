"""Logarithmic Activation Equalization, LAE (spec section 3).

Per input channel j, with ``m_j = max |X[:, j]|`` over calibration:

    s_j = m_j / log2(2 + m_j)

then ``X' = X / s`` (column-wise) and ``W'[:, j] = W[:, j] * s_j``, so that
``X' W'^T = X W^T`` in exact arithmetic. After the transform the channel maxima
are ``log2(2 + m_j)``: 1 -> 1.58, 150 -> 7.2, 1000 -> 10.

This is the one place the spec allows a tolerance: ``log2`` is transcendental.
The reference computes it in float64 and rounds once to float32 (correctly
rounded for all but a vanishing set of inputs); a conforming backend's
``lae_scales`` must be within **2 ulp of float32** of the reference's
(a log2 within 1 ulp moves the quotient by at most 2 ulp). The transforms
``lae_apply_*`` take ``s`` as data and are bit-exact.
"""

from __future__ import annotations

import numpy as np

from . import validate as V
from .arrays import NUMPY
from .formats import FLOAT, MIN_SCALE

__all__ = ["LAE_SCALE_ULP_TOLERANCE", "lae_scales", "lae_apply_activation", "lae_apply_weight"]

#: Allowed distance, in float32 ulps, between a backend's lae_scales and the reference's.
LAE_SCALE_ULP_TOLERANCE = 2


def lae_scales(channel_max) -> np.ndarray:
    """LAE channel scales from per-channel maxima.

    Formula: ``t_j = float32(2 + m_j)`` (one float32 add),
    ``l_j = float32(log2(float64(t_j)))`` (log2 within 1 ulp of float32),
    ``s_j = m_j / l_j`` (one float32 division).

    Args:
        channel_max: float32 [K], finite, >= 0 (per-channel amax).
    Returns:
        float32 [K], every element > 0.
    Corners: a channel with ``m_j < 2**-126`` (never active in calibration,
    including m_j = 0) gets ``s_j = 1``, i.e. it is left untouched, so a run-time
    value in that channel is never divided by zero or by a subnormal.
    Tolerance: <= 2 ulp of float32 against this reference (see module docstring).
    """
    return _lae_scales(V.lae_scales(NUMPY, channel_max))


def _lae_scales(m: np.ndarray) -> np.ndarray:
    """Unchecked :func:`lae_scales` (float32 [K], finite, >= 0)."""
    t = (m + FLOAT(2)).astype(FLOAT)
    l2 = np.log2(t.astype(np.float64)).astype(FLOAT)
    s = (m / l2).astype(FLOAT)
    return np.where(m < MIN_SCALE, FLOAT(1), s).astype(FLOAT)


def lae_apply_activation(x, s) -> np.ndarray:
    """Equalize an activation: ``x'[m, j] = x[m, j] / s_j`` (one float32 division each).

    Args:
        x: float32 [M, K], finite. s: float32 [K], finite, > 0.
    Returns:
        float32 [M, K].
    In a deployed model this division is folded into whatever produces x (the
    preceding norm's weight, or the rows of the preceding linear); this function
    is the definition the folded form must reproduce.
    """
    return _apply_activation(*V.lae_apply_activation(NUMPY, x, s))


def _apply_activation(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Unchecked :func:`lae_apply_activation`."""
    return (x / s[None, :]).astype(FLOAT)


def lae_apply_weight(w, s) -> np.ndarray:
    """Equalize a weight: ``w'[n, j] = w[n, j] * s_j`` (one float32 multiply each).

    Args:
        w: float32 [N, K] (nn.Linear's [out, in]), finite. s: float32 [K], > 0.
    Returns:
        float32 [N, K].
    """
    return _apply_weight(*V.lae_apply_weight(NUMPY, w, s))


def _apply_weight(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Unchecked :func:`lae_apply_weight`."""
    return (w * s[None, :]).astype(FLOAT)
