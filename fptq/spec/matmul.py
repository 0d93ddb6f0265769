"""The integer W4A8 matmul and its pinned float epilogue (spec section 6).

Inputs: activations ``qx`` int8 [M, K]; weights packed INT4 uint8
[N, ceil(K/2)] (either format) with per-(row, group) scales [N, ng] and, for
the asymmetric format, zero points [N, ng]; an activation scale (per-tensor
scalar or per-token [M]); optional bias [N].

1. **Integer core** (exact, order-free): for every (m, n, g) over the columns k
   of group g::

       acc[m, n, g] = sum_k int32(qx[m, k]) * int32(q[n, k])            (symmetric)
       acc[m, n, g] = sum_k int32(qx[m, k]) * int32(q[n, k])
                      - int32(z[n, g]) * sum_k int32(qx[m, k])           (asymmetric)

   Overflow: |qx| <= 128 and |q - z| <= 15, so every term and partial sum
   here is bounded by 1920 * G <= 1920 * 2**20 < 2**31 (G <= MAX_GROUP_SIZE).
   Because the sums are exact integers, any summation order gives the same int32.

2. **Epilogue** (float32, each op separately rounded, no FMA, fixed order)::

       y = +0.0
       for g in 0 .. ng-1:                       # ascending group order
           t = float32(acc[m, n, g])             # int32 -> float32, round-half-even
           t = t * wscale[n, g]                  # rounded
           y = y + t                             # rounded
       y = y * xscale[m]                         # (or the per-tensor scalar) rounded
       y = y + bias[n]                           # only if a bias is given, rounded

Kernels may compute the integer core any way they like; the epilogue must
produce exactly these float32 bits.

Each public function checks its arguments once (:mod:`fptq.spec.validate`)
and runs an unchecked implementation (``_group_sums``, ``_epilogue``).
"""

from __future__ import annotations

import numpy as np

from . import validate as V
from .arrays import NUMPY
from .formats import FLOAT, WeightFormat
from .packing import _unpack
from .weights import num_groups

__all__ = ["w4a8_group_sums", "w4a8_epilogue", "w4a8_matmul"]


def w4a8_group_sums(qx, packed, zero, k: int, group_size: int,
                    fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> np.ndarray:
    """The exact integer core: int32 partial sums per (row, output, group).

    Args:
        qx: int8 [M, K] (any int8 value admitted, -128 included).
        packed: uint8 [N, ceil(K/2)], :mod:`fptq.spec.packing` layout.
        zero: uint8 [N, ng] in [0, 15] for the asymmetric format, None for symmetric.
        k: logical K, an integer >= 0 (not a bool, not a float).
        group_size: G (or -1 = per-channel).
        fmt: weight format (decides the nibble interpretation and the zero-point term).
    Returns:
        int32 [M, N, ng].
    """
    qx, packed, zero, k, g, fmt = V.w4a8_group_sums(NUMPY, qx, packed, zero, k, group_size, fmt)
    return _group_sums(qx, packed, zero, k, g, fmt)


def _group_sums(qx, packed, zero, k: int, g: int, fmt: WeightFormat) -> np.ndarray:
    """Unchecked :func:`w4a8_group_sums`."""
    q = _unpack(packed, k, signed=fmt is WeightFormat.SYMMETRIC).astype(np.int64)
    m, n, ng = qx.shape[0], q.shape[0], num_groups(k, g)
    x = qx.astype(np.int64)
    acc = np.zeros((m, n, ng), dtype=np.int64)
    for gi in range(ng):
        lo, hi = gi * g, min((gi + 1) * g, k)
        acc[:, :, gi] = x[:, lo:hi] @ q[:, lo:hi].T
    if zero is not None:
        xsum = np.stack([x[:, gi * g:min((gi + 1) * g, k)].sum(axis=1) for gi in range(ng)], axis=1) \
            if ng else np.zeros((m, 0), np.int64)
        acc -= zero.astype(np.int64)[None, :, :] * xsum[:, None, :]
    if np.abs(acc).max(initial=0) >= 2**31:  # impossible by the bound in the docstring: a real check
        raise ArithmeticError("w4a8_group_sums: an int32 group sum overflowed; the overflow bound of "
                              "docs/spec.md §6.3 was broken (an unchecked input?)")
    return acc.astype(np.int32)


def w4a8_epilogue(acc, wscale, xscale, bias=None) -> np.ndarray:
    """The pinned float32 epilogue (see the module docstring for the exact op order).

    Args:
        acc: int32 [M, N, ng].
        wscale: float32 [N, ng], > 0.
        xscale: one float32, shape () or [1] (per-tensor), or float32 [M] (per-token), > 0.
        bias: float32 [N] or None.
    Returns:
        float32 [M, N].
    """
    acc, wscale, xscale, bias = V.w4a8_epilogue(NUMPY, acc, wscale, xscale, bias)
    return _epilogue(acc, wscale, xscale, bias)


def _epilogue(acc, wscale, xscale, bias) -> np.ndarray:
    """Unchecked :func:`w4a8_epilogue` (xscale of shape (), [1] or [M])."""
    m, n, ng = acc.shape
    xs = xscale.reshape(-1)
    if xs.shape[0] != m:  # one per-tensor scale for every row
        xs = np.full(m, xs[0], dtype=FLOAT)
    y = np.zeros((m, n), dtype=FLOAT)
    for gi in range(ng):
        t = acc[:, :, gi].astype(FLOAT)
        t = (t * wscale[None, :, gi]).astype(FLOAT)
        y = (y + t).astype(FLOAT)
    y = (y * xs[:, None]).astype(FLOAT)
    if bias is not None:
        y = (y + bias[None, :]).astype(FLOAT)
    return y


def w4a8_matmul(qx, xscale, packed, wscale, zero, k: int, group_size: int,
                fmt: WeightFormat | str = WeightFormat.SYMMETRIC, bias=None) -> np.ndarray:
    """W4A8 linear: ``w4a8_epilogue(w4a8_group_sums(qx, packed, zero, K, G), wscale, xscale, bias)``.

    Approximates ``(qx * xscale) @ dequantize_weight(...)^T + bias`` with integer
    products; returns float32 [M, N] bit-exactly as pinned above.
    """
    qx, xscale, packed, wscale, zero, k, g, fmt, bias = V.w4a8_matmul(
        NUMPY, qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)
    return _epilogue(_group_sums(qx, packed, zero, k, g, fmt), wscale, xscale, bias)
