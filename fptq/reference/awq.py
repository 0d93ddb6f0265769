"""AWQ-style activation-aware scaling of INT4 weights (Lin et al., 2023, arXiv 2306.00978).

For one input-sharing group (weights ``W_l`` [N_l, K], calibration rows ``x``
[n, K] of the input as the linears see it), the per-input-channel scale

    ``a_j = max(mean_t |x[t, j]|, 1e-4)``,
    ``s_j(alpha) = a_j^alpha / sqrt(max_j a_j^alpha * min_j a_j^alpha)``

is searched over ``alpha`` in ``{0, 1/grid, ..., (grid - 1)/grid}`` (AWQ's
``auto_scale``: the mean magnitude, ``grid = 20``, the same normalization) for
the smallest output error on the rows

    ``err(alpha) = sum_l || x W_l^T - (x / s) Q(W_l * s)^T ||^2``

with ``Q`` the quantize-dequantize of the INT4 weights that will be stored
(round to nearest with the spec's group scales). ``alpha = 0`` is ``s = 1``
(no scaling), so the chosen scales never measure worse on the rows than none;
ties keep the smaller ``alpha``.

The pipeline folds ``s`` exactly, as it folds LAE's scales: ``W_l[:, j] * s_j``
(:func:`fptq.spec.lae_apply_weight`) and ``1 / s`` into the input's producer
(the norm gain, or the producing linear's rows; :mod:`fptq.reference.fold`),
composed with LAE's scales where the plan also equalizes
(:func:`fptq.reference.plan.plan_group`); a group whose producer cannot absorb
``1 / s`` exactly (under ``--rotate online``: the pre-norms, whose output is
rotated at run time, and down_proj's rotated input) keeps ``s = 1``. Under
grouped-query attention o_proj's scale must be equal over the q heads sharing
one kv head (its producer is v_proj's rows): ``a`` is then the max over those
heads, one scale per v_proj row.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_ndim

__all__ = ["awq_scales", "awq_error"]


def _scales(a: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(a, alpha)
    return (s / np.sqrt(s.max() * s.min())).astype(FLOAT)


def awq_error(x: np.ndarray, weights, s: np.ndarray, group_size: int, fmt) -> float:
    """``err`` of the module docstring for scales ``s`` (float32 [K] > 0): float64 sum of squares of
    ``x (W_l - Q(W_l * s) / s)^T`` over the group's linears (equal to the output error, since
    ``(x / s) Q^T = x (Q / s)^T``)."""
    err = 0.0
    for w in weights:
        qw = spec.quantize_weight(spec.lae_apply_weight(w, s), group_size, fmt)
        deq = spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)
        d = x @ (w - deq / s).T
        err += float(np.square(d, dtype=np.float64).sum())
    return err


def awq_scales(x, weights, kv_heads=None, *, group_size: int, fmt=WeightFormat.SYMMETRIC,
               grid: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``(s, s_fold)``: the searched scales over the K input channels and the divisors of the producer
    (equal to ``s``; with ``kv_heads=(n_heads, n_kv, head_dim)`` one per v_proj row, ``s`` their
    repetition over the q heads).

    Args:
        x: float32 [n, K] calibration rows of the input as the group's linears see it.
        weights: the group's float32 weights [N_l, K]. group_size, fmt: the INT4 weights' (RTN).
        grid: the number of ``alpha`` candidates ``i / grid``, i = 0..grid-1.
    """
    x = as_float32(x, "x")
    check_ndim(x, 2, "x")
    if not np.isfinite(x).all():
        raise ValueError("x contains a non-finite value; fptq rejects NaN and Inf")
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid!r}")
    weights = [as_float32(w, "weight") for w in weights]
    a = np.maximum(np.abs(x).mean(axis=0, dtype=np.float64), 1e-4)
    rep = 1
    if kv_heads is not None:
        n_heads, n_kv, hd = (int(v) for v in kv_heads)
        rep = n_heads // n_kv
        a = a.reshape(n_kv, rep, hd).max(axis=1).reshape(-1)
    best_err, best = np.inf, None
    for i in range(grid):
        s_fold = _scales(a, i / grid)
        s = s_fold if rep == 1 else np.repeat(s_fold.reshape(n_kv, 1, hd), rep, axis=1).reshape(-1)
        err = awq_error(x, weights, s, group_size, fmt)
        if err < best_err:
            best_err, best = err, (s, s_fold)
    return best
