"""Groupwise INT4 weight quantization (spec section 4).

A weight W of shape [N, K] (nn.Linear's [out, in]) is split along K into
``ng = ceil(K / G)`` groups: group g covers columns ``[g*G, min((g+1)*G, K))``.
When G does not divide K the **last group is shorter** (K - (ng-1)*G columns);
this is the same as zero-padding K up to ng*G, since zero columns change
neither a group's amax/min/max (0 is always inside the range) nor any integer
sum. So real widths such as 576 with G = 128 (four groups of 128 and one of
64) need nothing from the user. G = K (or ``group_size=-1``) is per-channel.

Two formats (see :class:`fptq.spec.formats.WeightFormat`):

* symmetric (default): ``scale = max(amax / 7, MIN_SCALE)``,
  ``q = clip(rint(w / scale), -8, 7)``, dequantized ``q * scale``;
* asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``,
  ``scale = max((hi - lo) / 15, MIN_SCALE)``,
  ``z = clip(rint(-lo / scale), 0, 15)``,
  ``q = clip(rint(w / scale) + z, 0, 15)``, dequantized ``(q - z) * scale``.

All float ops are float32, separately rounded, true division, half-to-even.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .formats import FLOAT, MIN_SCALE, WeightFormat, weight_format_spec
from .validate import (
    as_float32, check_dtype, check_group_size, check_ndim, check_positive_scale, check_shape, check_zero_points,
)

__all__ = [
    "QuantizedWeight",
    "num_groups",
    "group_bounds",
    "weight_scales",
    "quantize_weight_with_scales",
    "quantize_weight",
    "dequantize_weight",
]


class QuantizedWeight(NamedTuple):
    """Unpacked INT4 weight: ``q`` int8 [N, K], ``scale`` float32 [N, ng], ``zero`` uint8 [N, ng] or None."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    group_size: int
    fmt: WeightFormat


def num_groups(k: int, group_size: int) -> int:
    """``ng = ceil(K / G)``; 0 when K = 0."""
    return -(-int(k) // int(group_size))


def group_bounds(k: int, group_size: int) -> list[tuple[int, int]]:
    """``[(g*G, min((g+1)*G, K)) for g in range(ng)]``: the column range of each group."""
    return [(g * group_size, min((g + 1) * group_size, k)) for g in range(num_groups(k, group_size))]


def _padded_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """View w [N, K] as [N, ng, G], zero-padding the ragged last group."""
    n, k = w.shape
    ng = num_groups(k, group_size)
    pad = ng * group_size - k
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), dtype=w.dtype)], axis=1)
    return w.reshape(n, ng, group_size)


def weight_scales(w, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC):
    """Per-(row, group) scales (and zero points) of a float32 weight.

    Args:
        w: float32 [N, K], finite.
        group_size: G in [1, 2**20], or -1 for per-channel (G = K).
        fmt: ``"int4_sym"`` (default) or ``"uint4_asym"``.
    Returns:
        (scale float32 [N, ng], zero uint8 [N, ng] or None for symmetric).
    Formulas: see the module docstring. ``amax``, ``min``, ``max`` are exact
    (order-free); ``hi - lo`` is one float32 subtraction. All-zero groups
    get ``MIN_SCALE`` (and z = 0).
    Raises ValueError if ``hi - lo`` overflows float32 (|w| near 1.7e38).
    """
    w = as_float32(w, "w")
    check_ndim(w, 2, "w")
    spec = weight_format_spec(fmt)
    g = check_group_size(group_size, w.shape[1])
    wg = _padded_groups(w, g)
    if WeightFormat(fmt) is WeightFormat.SYMMETRIC:
        amax = np.abs(wg).max(axis=2) if wg.shape[1] else np.zeros(wg.shape[:2], FLOAT)
        scale = np.maximum(amax / FLOAT(spec.scale_divisor), MIN_SCALE).astype(FLOAT)
        return scale, None
    if wg.shape[1] == 0:
        return np.zeros(wg.shape[:2], FLOAT), np.zeros(wg.shape[:2], np.uint8)
    lo = np.minimum(wg.min(axis=2), FLOAT(0))
    hi = np.maximum(wg.max(axis=2), FLOAT(0))
    with np.errstate(over="ignore"):
        span = (hi - lo).astype(FLOAT)
    if not np.isfinite(span).all():
        raise ValueError("w: a group's range max - min overflows float32")
    scale = np.maximum(span / FLOAT(spec.scale_divisor), MIN_SCALE).astype(FLOAT)
    zero = np.clip(np.rint(-lo / scale), spec.qmin, spec.qmax).astype(np.uint8)
    return scale, zero


def _expand(per_group: np.ndarray, k: int, group_size: int) -> np.ndarray:
    """Broadcast a per-group [N, ng] array to per-column [N, K]."""
    return np.repeat(per_group, group_size, axis=1)[:, :k]


def quantize_weight_with_scales(w, scale, zero, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> np.ndarray:
    """Quantize w with given scales (from :func:`weight_scales`, a clipping search or GPTQ).

    Formula per element (g = k // G): symmetric ``q = clip(rint(w / scale[n, g]), -8, 7)``;
    asymmetric ``q = clip(rint(w / scale[n, g]) + z[n, g], 0, 15)``
    (the add is exact: both are small integers held in float32).

    Args:
        w: float32 [N, K]; scale: float32 [N, ng] > 0; zero: uint8 [N, ng]
        in [0, 15] for the asymmetric format, None for symmetric.
    Returns:
        int8 [N, K] (values in the format's range; unsigned values 0..15 fit int8).
    """
    w = as_float32(w, "w")
    check_ndim(w, 2, "w")
    spec = weight_format_spec(fmt)
    n, k = w.shape
    g = check_group_size(group_size, k)
    ng = num_groups(k, g)
    scale = as_float32(scale, "scale")
    check_shape(scale, (n, ng), "scale")
    check_positive_scale(scale, "scale")
    with np.errstate(over="ignore"):
        y = np.rint(w / _expand(scale, k, g))
    zero = check_zero_points(zero, (n, ng), WeightFormat(fmt) is WeightFormat.ASYMMETRIC)
    if zero is not None:
        y = y + _expand(zero, k, g).astype(FLOAT)
    return np.clip(y, spec.qmin, spec.qmax).astype(np.int8)


def quantize_weight(w, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> QuantizedWeight:
    """Round-to-nearest groupwise INT4 quantization: :func:`weight_scales` then
    :func:`quantize_weight_with_scales`.

    Args:
        w: float32 [N, K], finite. group_size: G (or -1 = per-channel). fmt: weight format.
    Returns:
        :class:`QuantizedWeight` (q int8 [N, K], scale float32 [N, ng], zero uint8 [N, ng] | None).
    """
    w = as_float32(w, "w")
    check_ndim(w, 2, "w")
    g = check_group_size(group_size, w.shape[1])
    scale, zero = weight_scales(w, g, fmt)
    q = quantize_weight_with_scales(w, scale, zero, g, fmt)
    return QuantizedWeight(q, scale, zero, g, WeightFormat(fmt))


def dequantize_weight(q, scale, zero, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> np.ndarray:
    """Dequantize: symmetric ``float32(q) * scale``; asymmetric ``float32(q - z) * scale``
    (q - z is an exact integer in [-15, 15]); one float32 multiply per element.

    Args: q int8 [N, K]; scale float32 [N, ng]; zero uint8 [N, ng] | None.
    Returns: float32 [N, K].
    """
    q = check_dtype(q, np.int8, "q")
    check_ndim(q, 2, "q")
    n, k = q.shape
    g = check_group_size(group_size, k)
    ng = num_groups(k, g)
    scale = as_float32(scale, "scale")
    check_shape(scale, (n, ng), "scale")
    check_positive_scale(scale, "scale")
    qi = q.astype(np.int32)
    zero = check_zero_points(zero, (n, ng), WeightFormat(fmt) is WeightFormat.ASYMMETRIC)
    if zero is not None:
        qi = qi - _expand(zero, k, g).astype(np.int32)
    return (qi.astype(FLOAT) * _expand(scale, k, g)).astype(FLOAT)
