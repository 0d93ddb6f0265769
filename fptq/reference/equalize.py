"""Equalization scales of an input shared by several linears: LAE, SmoothQuant, and GQA sharing.

A group of linears that read one input X (q/k/v; gate/up; o; down) is
equalized with one scale vector s over X's K channels: ``X' = X / s`` and every
linear of the group gets ``W' = W * s`` (:func:`fptq.spec.lae_apply_weight`),
so ``X' W'^T = X W^T``. From the group's channel maxima ``m`` (float32 [K],
the elementwise max of its linears' calibration maxima, :func:`group_channel_max`):

* ``lae``: ``s = fptq.spec.lae_scales(m)`` (spec section 3);
* ``("smoothquant", alpha)``: ``s_j = m_j^alpha / w_j^(1 - alpha)`` with
  ``w_j = max |W[:, j]|`` over the group (:func:`smoothquant_scales`).

**o_proj under grouped-query attention.** o_proj's input channel ``(h, d)``
(q head h, head dim d) is ``sum_t p[h, t] * v[t, kv(h), d]`` with
``kv(h) = h // (n_heads / n_kv)``: dividing v_proj's output row ``(kv, d)`` by
``u`` divides o_proj's input channels ``(h, d)`` of *every* q head sharing that
kv head by the same ``u``, so the scale must be equal over those heads.
:func:`equalization_scales` with ``kv_heads=(n_heads, n_kv, head_dim)`` uses,
for LAE, ``u_(kv, d) = lae_scales(max_{h: kv(h)=kv} m_(h, d))`` (equal to the
max over those heads of their own LAE scales: ``m / log2(2 + m)`` is increasing
for m >= 0 and float32 rounding is monotone), for SmoothQuant the max over
those heads of their scales. Every channel then ends at most at its own target,
the loudest exactly at it.

The static activation scale after equalization is measured exactly from the
maxima: ``v' = max_j float32(m_j / s_j)`` (:func:`fptq.reference.equalized_amax`).
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec.formats import FLOAT, MIN_SCALE
from ..spec.validate import as_float32, check_ndim

__all__ = ["group_channel_max", "equalized_channel_max", "weight_column_max", "smoothquant_scales",
           "equalization_scales", "static_act_scale"]


def group_channel_max(maxima) -> np.ndarray:
    """float32 [K]: the elementwise max of the channel maxima of linears that share one input."""
    maxima = [as_float32(m, "channel maxima") for m in maxima]
    if not maxima:
        raise ValueError("group_channel_max needs at least one vector of channel maxima")
    m = maxima[0]
    for x in maxima[1:]:
        if x.shape != m.shape:
            raise ValueError(f"channel maxima of one input differ in shape: {m.shape} vs {x.shape}")
        m = np.maximum(m, x)
    return m.astype(FLOAT)


def equalized_channel_max(m, s) -> np.ndarray:
    """float32 [K] ``float32(m_j / s_j)``: the channel maxima of ``X / s`` (exact: division by
    ``s_j > 0`` is monotone); ``s=None`` returns ``m``."""
    m = as_float32(m, "m")
    if s is None:
        return m
    s = as_float32(s, "s")
    if s.shape != m.shape:
        raise ValueError(f"s: expected shape {m.shape}, got {s.shape}")
    return (m / s).astype(FLOAT)


def weight_column_max(weights) -> np.ndarray:
    """float32 [K] ``w_j = max |W[:, j]|`` over the rows of every weight [N_l, K] of a group (SmoothQuant's)."""
    cols = [np.abs(as_float32(w, "weight")).max(axis=0) for w in weights]
    if not cols:
        raise ValueError("weight_column_max needs at least one weight")
    return np.max(cols, axis=0).astype(FLOAT)


def smoothquant_scales(m, w_colmax, alpha: float) -> np.ndarray:
    """SmoothQuant's ``s_j = m_j^alpha / w_j^(1 - alpha)`` (computed in float64, returned as float32;
    channels with m_j or w_j below 2**-126 get s_j = 1, like LAE's dead channels)."""
    m = as_float32(m, "m").astype(np.float64)
    w = as_float32(w_colmax, "w_colmax").astype(np.float64)
    if m.shape != w.shape:
        raise ValueError(f"w_colmax: expected shape {m.shape}, got {w.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    ok = (m >= float(MIN_SCALE)) & (w >= float(MIN_SCALE))
    s = np.where(ok, np.power(np.maximum(m, 1e-30), alpha) / np.power(np.maximum(w, 1e-30), 1 - alpha), 1.0)
    return np.maximum(s, float(MIN_SCALE)).astype(FLOAT)


def _scales(method, m: np.ndarray, w_colmax) -> np.ndarray:
    if method == "lae":
        return spec.lae_scales(m)
    if isinstance(method, tuple) and len(method) == 2 and method[0] == "smoothquant":
        if w_colmax is None:
            raise ValueError("SmoothQuant scales need the group's weight column maxima (w_colmax)")
        return smoothquant_scales(m, w_colmax, method[1])
    raise ValueError(f"equalization method must be 'lae' or ('smoothquant', alpha), got {method!r}")


def equalization_scales(m, method="lae", w_colmax=None, kv_heads=None) -> tuple[np.ndarray, np.ndarray]:
    """``(s, s_fold)``: the scales over the input's K channels and the divisors of its producer.

    Args:
        m: float32 [K] the input's channel maxima (>= 0).
        method: ``"lae"`` or ``("smoothquant", alpha)``.
        w_colmax: float32 [K] ``max |W[:, j]|`` over the group's linears (SmoothQuant only).
        kv_heads: ``(n_heads, n_kv_heads, head_dim)`` for o_proj's input under (grouped-query)
            attention, whose producer is v_proj's [n_kv * head_dim] output rows; None otherwise.
    Returns:
        ``s`` float32 [K] and ``s_fold``: equal to ``s``, except with ``kv_heads``: float32
        [n_kv * head_dim], one divisor per v_proj output row, with ``s`` its repetition over q heads.
    """
    m = as_float32(m, "m")
    check_ndim(m, 1, "m")
    if kv_heads is None:
        s = _scales(method, m, w_colmax)
        return s, s
    n_heads, n_kv, hd = (int(v) for v in kv_heads)
    if n_kv < 1 or n_heads % n_kv or m.shape[0] != n_heads * hd:
        raise ValueError(f"kv_heads={kv_heads} does not match {m.shape[0]} input channels")
    rep = n_heads // n_kv
    if method == "lae":
        s_kv = spec.lae_scales(m.reshape(n_kv, rep, hd).max(axis=1).reshape(-1))
    else:
        s_kv = _scales(method, m, w_colmax).reshape(n_kv, rep, hd).max(axis=1).reshape(-1)
    s = np.repeat(s_kv.reshape(n_kv, 1, hd), rep, axis=1).reshape(-1)
    return s.astype(FLOAT), s_kv.astype(FLOAT)


def static_act_scale(amax) -> float:
    """The per-tensor static INT8 scale ``max(amax / 127, 2**-126)`` (spec section 2) as a Python float."""
    return float(spec.act_scale_from_amax(FLOAT(amax)))
