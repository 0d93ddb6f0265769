"""Weight quantizers: how the INT4 group scales are chosen (the integer format is the spec's).

Every quantizer returns a :class:`fptq.spec.QuantizedWeight` whose codes come
from :func:`fptq.spec.quantize_weight_with_scales`, so the integer format,
packing and matmul never change: only the scale (and zero point) values do.

* ``rtn``: round to nearest with the spec's scales (:func:`fptq.spec.quantize_weight`):
  symmetric ``scale = amax / 7``; asymmetric ``scale = (max - min) / 15``.
* ``mse``: a clipping search per (row, group). Candidate ``p`` in
  ``{1, 1 - (1 - pmin)/steps, ..., pmin}`` takes the spec's scales of the
  clipped weight ``p * W`` (:func:`fptq.spec.weight_scales`; ``max |p w| =
  float32(p * max |w|)`` exactly, float32 rounding being monotone) and
  quantizes the *unclipped* W with them. Kept per group: the candidate with the
  smallest error ``sum_k c_k (w_k - dequant(quant(w_k)))^2``, where the optional
  channel weights ``c_k`` (e.g. the squared calibration maxima of the input
  channels) make the error activation-aware. Ties keep the larger range.

Each is registered by name, with what it needs from calibration, in
:mod:`fptq.reference.quantizer_registry` (which also dispatches by name:
``quantize_weight_by``, ``fake_quant_weight``); a new quantizer is one
function (here or in its own module) plus one entry there.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_group_size, check_ndim

__all__ = ["quantize_weight_rtn", "quantize_weight_mse", "fake_quant_weight_int8_per_channel",
           "quantize_weight_int8_per_channel", "activation_channel_weight"]


def activation_channel_weight(channel_max) -> np.ndarray:
    """float32 [K] ``c_j = m_j^2``: the activation-aware error weights of :func:`quantize_weight_mse`
    from the channel maxima ``m`` of the input the quantized weight sees (after LAE: ``m / s``)."""
    return np.square(as_float32(channel_max, "channel_max"))


def quantize_weight_rtn(w, group_size: int, fmt=WeightFormat.SYMMETRIC, channel_weight=None) -> spec.QuantizedWeight:
    """Round to nearest with the spec's scales (``channel_weight`` is ignored)."""
    return spec.quantize_weight(w, group_size, fmt)


def _group_sums(e: np.ndarray, g: int) -> np.ndarray:
    """float32 [N, K] -> [N, ng]: the sum over each group's columns (ragged last group zero-padded)."""
    n, k = e.shape
    ng = spec.num_groups(k, g)
    pad = ng * g - k
    if pad:
        e = np.concatenate([e, np.zeros((n, pad), e.dtype)], axis=1)
    return e.reshape(n, ng, g).sum(axis=2)


def quantize_weight_mse(w, group_size: int, fmt=WeightFormat.SYMMETRIC, channel_weight=None,
                        steps: int = 20, pmin: float = 0.5) -> spec.QuantizedWeight:
    """Clipping search for the INT4 scales (see the module docstring).

    Args:
        w: float32 [N, K], finite. group_size: G (-1 = per-channel). fmt: weight format.
        channel_weight: float32 [K] >= 0 error weights per input channel, or None (plain MSE).
        steps, pmin: the candidate grid ``p = 1 - i (1 - pmin) / steps``, i = 0..steps.
    Returns:
        :class:`fptq.spec.QuantizedWeight`.
    """
    w = as_float32(w, "w")
    check_ndim(w, 2, "w")
    fmt = WeightFormat(fmt)
    n, k = w.shape
    g = check_group_size(group_size, k)
    if channel_weight is None:
        c = np.ones(k, FLOAT)
    else:
        c = as_float32(channel_weight, "channel_weight")
        if c.shape != (k,) or (c < 0).any():
            raise ValueError(f"channel_weight: expected {k} values >= 0, got shape {c.shape}")
    ng = spec.num_groups(k, g)
    best_err = np.full((n, ng), np.inf)
    best_scale = np.ones((n, ng), FLOAT)
    best_zero = np.zeros((n, ng), np.uint8)
    for i in range(steps + 1):
        p = FLOAT(1.0 - i * (1.0 - pmin) / steps)
        scale, zero = spec.weight_scales(w * p, g, fmt)
        q = spec.quantize_weight_with_scales(w, scale, zero, g, fmt)
        deq = spec.dequantize_weight(q, scale, zero, g, fmt)
        err = _group_sums(((w - deq) ** 2) * c[None, :], g)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        if zero is not None:
            best_zero = np.where(better, zero, best_zero)
    zero = best_zero.astype(np.uint8) if fmt is WeightFormat.ASYMMETRIC else None
    q = spec.quantize_weight_with_scales(w, best_scale, zero, g, fmt)
    return spec.QuantizedWeight(q, best_scale, zero, g, fmt)


def quantize_weight_int8_per_channel(w) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (per-row) symmetric INT8 of a float32 [N, K] matrix: the spec's per-token
    INT8 rule applied to the rows of W (:func:`fptq.spec.quantize_act_per_token`), i.e. per row n
    ``scale[n] = max(max_k |w[n, k]| / 127, 2**-126)``, ``q[n, k] = clip(rint(w[n, k] / scale[n]), -127, 127)``.

    Returns (q int8 [N, K], scale float32 [N]); :func:`fptq.spec.dequantize_act` gives back
    ``float32(q) * scale[:, None]``. Used for the SmoothQuant W8A8 baseline's weights and for the
    optional INT8 storage of embeddings / lm_head (``fptq quantize --int8-embeddings``)."""
    return spec.quantize_act_per_token(as_float32(w, "w"))


def fake_quant_weight_int8_per_channel(w) -> np.ndarray:
    """float32 [N, K] -> dequantized per-output-channel symmetric INT8, float32 [N, K]
    (:func:`quantize_weight_int8_per_channel`, then :func:`fptq.spec.dequantize_act`)."""
    q, scale = quantize_weight_int8_per_channel(w)
    return spec.dequantize_act(q, scale)
