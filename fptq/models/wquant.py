"""Weight quantizers: how the INT4 group scales are chosen (the integer format is the spec's).

* ``rtn``: round to nearest with the spec's scales (:func:`fptq.spec.weight_scales`):
  symmetric ``scale = amax / 7``; asymmetric ``scale = (max - min) / 15``.
* ``mse``: a clipping search per (row, group): candidate ranges ``p * range``
  for ``p`` in ``{1, 1 - 1/steps*(1-pmin), ..., pmin}``; keep the candidate with the
  smallest squared error ``sum_k c_k (w_k - dequant(quant(w_k)))^2``, where the
  optional channel weights ``c_k`` (e.g. the squared calibration maxima of the
  input channels) make the error activation-aware. Ties keep the larger range.

Either way the result is a :class:`fptq.spec.QuantizedWeight` quantized by
:func:`fptq.spec.quantize_weight_with_scales`, so the integer format, packing and
matmul are unchanged: only the scale (and zero point) values differ.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat

__all__ = ["WEIGHT_QUANTIZERS", "quantize_weight_rtn", "quantize_weight_mse", "quantize_weight"]

WEIGHT_QUANTIZERS = ("rtn", "mse")


def quantize_weight_rtn(w: np.ndarray, group_size: int, fmt=WeightFormat.SYMMETRIC, channel_weight=None):
    """Round to nearest with the spec's scales (``channel_weight`` is ignored)."""
    return spec.quantize_weight(w, group_size, fmt)


def _groups(a: np.ndarray, g: int) -> np.ndarray:
    n, k = a.shape
    ng = spec.num_groups(k, g)
    pad = ng * g - k
    if pad:
        a = np.concatenate([a, np.zeros((n, pad), a.dtype)], axis=1)
    return a.reshape(n, ng, g)


def quantize_weight_mse(w: np.ndarray, group_size: int, fmt=WeightFormat.SYMMETRIC, channel_weight=None,
                        steps: int = 20, pmin: float = 0.5):
    """Clipping search for the INT4 scales (see the module docstring).

    Args:
        w: float32 [N, K]. group_size: G (-1 = per-channel). fmt: weight format.
        channel_weight: float32 [K] >= 0 error weights per input channel, or None (plain MSE).
        steps, pmin: the candidate grid ``p = 1 - i (1 - pmin) / steps``, i = 0..steps.
    Returns:
        :class:`fptq.spec.QuantizedWeight`.
    """
    w = spec.validate.as_float32(w, "w")
    spec.validate.check_ndim(w, 2, "w")
    fmt = WeightFormat(fmt)
    f = spec.formats.weight_format_spec(fmt)
    n, k = w.shape
    g = spec.validate.check_group_size(group_size, k)
    wg = _groups(w, g)                                   # [N, ng, G], zero padded (no error on padding)
    c = np.ones(k, np.float32) if channel_weight is None else np.asarray(channel_weight, np.float32)
    cg = _groups(c[None, :], g)[0]                       # [ng, G]
    best_err = np.full(wg.shape[:2], np.inf)
    best_scale = np.ones(wg.shape[:2], np.float32)
    best_zero = np.zeros(wg.shape[:2], np.uint8)
    if fmt is WeightFormat.SYMMETRIC:
        amax = np.abs(wg).max(axis=2)
    else:
        lo, hi = np.minimum(wg.min(axis=2), 0), np.maximum(wg.max(axis=2), 0)
    for i in range(steps + 1):
        p = np.float32(1.0 - i * (1.0 - pmin) / steps)
        if fmt is WeightFormat.SYMMETRIC:
            scale = np.maximum((amax * p) / np.float32(f.scale_divisor), spec.MIN_SCALE).astype(np.float32)
            zero = np.zeros_like(best_zero)
            q = np.clip(np.rint(wg / scale[..., None]), f.qmin, f.qmax)
            deq = q * scale[..., None]
        else:
            scale = np.maximum(((hi - lo) * p) / np.float32(f.scale_divisor), spec.MIN_SCALE).astype(np.float32)
            zero = np.clip(np.rint(-(lo * p) / scale), f.qmin, f.qmax).astype(np.uint8)
            q = np.clip(np.rint(wg / scale[..., None]) + zero[..., None], f.qmin, f.qmax)
            deq = (q - zero[..., None]) * scale[..., None]
        err = (((wg - deq) ** 2) * cg[None]).sum(axis=2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    zero = best_zero.astype(np.uint8) if fmt is WeightFormat.ASYMMETRIC else None
    q = spec.quantize_weight_with_scales(w, best_scale, zero, g, fmt)
    return spec.QuantizedWeight(q, best_scale, zero, g, fmt)


def quantize_weight(w, group_size: int, fmt=WeightFormat.SYMMETRIC, method: str = "rtn", channel_weight=None):
    """Dispatch to ``rtn`` or ``mse``."""
    if method == "rtn":
        return quantize_weight_rtn(w, group_size, fmt)
    if method == "mse":
        return quantize_weight_mse(w, group_size, fmt, channel_weight)
    raise ValueError(f"unknown weight quantizer {method!r}; choose from {WEIGHT_QUANTIZERS}")
