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

from . import validate as V
from .arrays import NUMPY
from .formats import FLOAT, MIN_SCALE, WeightFormat, weight_format_spec

__all__ = [
    "QuantizedWeight",
    "num_groups",
    "group_bounds",
    "weight_scales",
    "quantize_weight_with_scales",
    "quantize_weight",
    "dequantize_weight",
]

#: The error of an asymmetric group whose range ``max - min`` overflows float32 (§4.3); every
#: backend raises this message (fptq.backends.base checks the scales its kernels return).
RANGE_OVERFLOW = "w: a group's range max - min overflows float32 [weight_scales, docs/spec.md §4.3]"


class QuantizedWeight(NamedTuple):
    """The result of :func:`quantize_weight` (docs/spec.md §4.4), unpacked.

    Fields, in this order:
        q: int8 [N, K], in [-8, 7] (symmetric) or [0, 15] (asymmetric).
        scale: float32 [N, ng], every element > 0.
        zero: uint8 [N, ng] in [0, 15] (asymmetric), or None (symmetric).
        group_size: the resolved G, a Python int in [1, MAX_GROUP_SIZE]: the
            group size that was asked for, K for ``-1``/None, and 1 when K = 0.
        fmt: the :class:`WeightFormat` member (not its string value).
    """

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


def _width(k: int, group_size: int) -> int:
    """The group width that matters for K columns: ``min(G, K)`` (at least 1).

    G > K means one group of K columns, so padding to G would only waste memory:
    with this width every padded array below holds fewer than 2 N K elements.
    """
    return max(min(group_size, k), 1)


def _padded_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """View w [N, K] as [N, ng, G'] (G' = min(G, K)), zero-padding the ragged last group."""
    n, k = w.shape
    g = _width(k, group_size)
    ng = num_groups(k, g)
    pad = ng * g - k
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), dtype=w.dtype)], axis=1)
    return w.reshape(n, ng, g)


def _expand(per_group: np.ndarray, k: int, group_size: int) -> np.ndarray:
    """Broadcast a per-group [N, ng] array to per-column [N, K] (O(N K) memory for any G)."""
    return np.repeat(per_group, _width(k, group_size), axis=1)[:, :k]


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
    return _weight_scales(*V.weight_scales(NUMPY, w, group_size, fmt))


def _weight_scales(w: np.ndarray, g: int, fmt: WeightFormat):
    """Unchecked :func:`weight_scales` (w float32 [N, K] finite, G resolved, fmt the enum)."""
    spec = weight_format_spec(fmt)
    wg = _padded_groups(w, g)
    if fmt is WeightFormat.SYMMETRIC:
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
        raise ValueError(RANGE_OVERFLOW)
    scale = np.maximum(span / FLOAT(spec.scale_divisor), MIN_SCALE).astype(FLOAT)
    zero = np.clip(np.rint(-lo / scale), spec.qmin, spec.qmax).astype(np.uint8)
    return scale, zero


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
    w, scale, zero, g, fmt = V.quantize_weight_with_scales(NUMPY, w, scale, zero, group_size, fmt)
    return _quantize_with_scales(w, scale, zero, g, fmt)


def _quantize_with_scales(w, scale, zero, g: int, fmt: WeightFormat) -> np.ndarray:
    """Unchecked :func:`quantize_weight_with_scales`."""
    spec = weight_format_spec(fmt)
    k = w.shape[1]
    with np.errstate(over="ignore"):
        y = np.rint(w / _expand(scale, k, g))
    if zero is not None:
        y = y + _expand(zero, k, g).astype(FLOAT)
    return np.clip(y, spec.qmin, spec.qmax).astype(np.int8)


def quantize_weight(w, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> QuantizedWeight:
    """Round-to-nearest groupwise INT4 quantization: :func:`weight_scales` then
    :func:`quantize_weight_with_scales`.

    Args:
        w: float32 [N, K], finite. group_size: G (or -1 = per-channel). fmt: weight format.
    Returns:
        :class:`QuantizedWeight` (q int8 [N, K], scale float32 [N, ng], zero uint8 [N, ng] | None,
        the resolved G, the format enum).
    """
    w, g, fmt = V.quantize_weight(NUMPY, w, group_size, fmt)
    scale, zero = _weight_scales(w, g, fmt)
    return QuantizedWeight(_quantize_with_scales(w, scale, zero, g, fmt), scale, zero, g, fmt)


def dequantize_weight(q, scale, zero, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> np.ndarray:
    """Dequantize: symmetric ``float32(q) * scale``; asymmetric ``float32(q - z) * scale``
    (q - z is an exact integer in [-15, 15]); one float32 multiply per element.

    Args: q int8 [N, K] in the format's range ([-8, 7] or [0, 15]); scale float32 [N, ng];
    zero uint8 [N, ng] | None.
    Returns: float32 [N, K].
    """
    q, scale, zero, g, _ = V.dequantize_weight(NUMPY, q, scale, zero, group_size, fmt)
    return _dequantize(q, scale, zero, g)


def _dequantize(q, scale, zero, g: int) -> np.ndarray:
    """Unchecked :func:`dequantize_weight`."""
    k = q.shape[1]
    qi = q.astype(np.int32)
    if zero is not None:
        qi = qi - _expand(zero, k, g).astype(np.int32)
    return (qi.astype(FLOAT) * _expand(scale, k, g)).astype(FLOAT)
