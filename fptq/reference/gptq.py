"""GPTQ: INT4 groupwise weights chosen with second-order error feedback.

GPTQ (Frantar et al., 2022, arXiv 2210.17323) quantizes a linear layer's
weight ``W`` [N, K] one input column at a time and spreads each column's
rounding error over the columns not yet quantized, so that the layer's output
error ``||X W^T - X Q^T||^2`` over the calibration inputs ``X`` stays small.
The inputs enter only through the Hessian of that error,
``H = X^T X / n`` [K, K] (:class:`HessianAccumulator`).

With ``U`` the upper Cholesky factor of ``(H + lambda I)^{-1}``,
``lambda = damp * mean(diag H)``, column ``i`` is quantized and then

    ``err = (w_i - dequant(q_i)) / U[i, i]``
    ``W[:, j] -= err * U[i, j]``   for every later column j.

The output is the spec's format: a :class:`fptq.spec.QuantizedWeight` whose
codes are exactly ``fptq.spec.quantize_weight_with_scales`` of the
error-updated weights with the returned scales, so packing, the W4A8 matmul and
the checkpoint are unchanged. Group scales (and zero points):

* ``act_order=False`` (default): a group's scale is taken when its first
  column is reached, from the group's *updated* weights (as in the GPTQ code);
* ``act_order=True``: columns are visited by decreasing ``diag(H)``; the group
  scales are fixed beforehand from the original weights ("static groups"), so
  every group keeps one consistent scale whatever the visiting order.

``scale_fn(w_group [N, g], a, b) -> (scale [N], zero [N] | None)`` chooses the
scale of the group of columns ``[a, b)``; the default is the spec's RTN scale
(:func:`fptq.spec.weight_scales` with per-channel groups); :func:`hessian_clip_scale`
is a clipping search (``clip=True``): per row, the candidate range ``p * range``
(:func:`fptq.reference.quantize_weight_mse`'s grid) whose rounding error
``sum_j H_jj (w_j - dequant(q_j))^2`` over the group's columns is smallest, the
Hessian diagonal standing for the input's energy in each column.

The Hessian and the error feedback are float64; the quantization of each
column is the spec's float32 arithmetic. Memory: one ``K^2`` float64 (``H``,
overwritten by the inverse's factor in place, LAPACK through SciPy), plus the weight.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import spec
from ..spec import WeightFormat
from ..spec.formats import FLOAT, weight_format_spec

__all__ = ["HessianAccumulator", "HessianHandoff", "equalized_hessian", "gptq_quantize", "rtn_group_scale", "hessian_clip_scale"]

ScaleFn = Callable[[np.ndarray, int, int], tuple[np.ndarray, "np.ndarray | None"]]


class HessianAccumulator:
    """``H = X^T X / n`` over every calibration row a layer sees (float64 [K, K])."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self._sum = np.zeros((self.k, self.k), np.float64)
        self.n = 0

    def add_batch(self, x) -> None:
        """Add rows ``x`` [..., K] (any float dtype); leading axes are flattened."""
        x = np.asarray(x)
        if x.shape[-1] != self.k:
            raise ValueError(f"x: expected last dimension {self.k}, got shape {x.shape}")
        rows = x.reshape(-1, self.k).astype(np.float64, copy=False)
        if not np.isfinite(rows).all():
            raise ValueError("x contains a non-finite value; fptq rejects NaN and Inf")
        product = rows.T @ rows
        if self.n == 0:   # the first batch's product becomes the sum: 0 + p, the same values, one [K, K] less
            product += 0.0
            self._sum = product
        else:
            self._sum += product
        self.n += rows.shape[0]

    @property
    def H(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no calibration rows were added to the Hessian")
        return self._sum / self.n

    def take_H(self) -> np.ndarray:
        """:attr:`H` computed in place of the sum (the same values, no second ``[K, K]``); the accumulator is
        spent afterwards."""
        if self.n == 0:
            raise ValueError("no calibration rows were added to the Hessian")
        h, n = self._sum, self.n
        self._sum, self.n = None, 0
        h /= n
        return h


def equalized_hessian(x, s=None) -> np.ndarray:
    """``H`` of the input a layer sees after equalization: rows ``x`` [n, K] divided by ``s`` [K]
    (float64 division; ``s = None``: no equalization). This is the Hessian of the LAE-folded
    weights ``W * s``, since ``(x / s)(W * s)^T = x W^T``."""
    x = np.asarray(x)
    acc = HessianAccumulator(x.shape[-1])
    if s is not None:   # one float64 copy, divided in place (the same quotients as x / s)
        x = x.astype(np.float64)
        np.divide(x, np.asarray(s, np.float64), out=x)
    acc.add_batch(x)
    del x
    return acc.take_H()


class HessianHandoff:
    """A Hessian handed to :func:`gptq_quantize` for it to overwrite: the caller keeps no other reference, so
    GPTQ works in it instead of a copy (one ``[K, K]`` float64 less at the peak: 1.6 GB for K = 14336)."""

    def __init__(self, H: np.ndarray) -> None:
        self._held = [H]

    def take(self) -> np.ndarray:
        if not self._held:
            raise ValueError("this HessianHandoff was already taken")
        return self._held.pop()


def rtn_group_scale(fmt: WeightFormat) -> ScaleFn:
    """The spec's round-to-nearest scale of one group of columns (per row)."""
    def scale_fn(wg: np.ndarray, a: int = 0, b: int = 0):
        scale, zero = spec.weight_scales(wg, -1, fmt)
        return scale[:, 0], None if zero is None else zero[:, 0]
    return scale_fn


def hessian_clip_scale(fmt: WeightFormat, H: np.ndarray) -> ScaleFn:
    """Clipping search for a group's scale, errors weighted by ``diag(H)`` over its columns
    (:func:`fptq.reference.quantize_weight_mse` on the group, per-channel)."""
    from .weight_quantizers import quantize_weight_mse

    hdiag = np.diag(np.asarray(H, np.float64)).astype(FLOAT)

    def scale_fn(wg: np.ndarray, a: int, b: int):
        qw = quantize_weight_mse(wg, -1, fmt, hdiag[a:b])
        return qw.scale[:, 0], None if qw.zero is None else qw.zero[:, 0]
    return scale_fn


def _quantize_column(w: np.ndarray, scale: np.ndarray, zero, fmt: WeightFormat) -> np.ndarray:
    """The spec's per-element rule (§4.2/§4.3) on one float32 column; returns the dequantized column."""
    f = weight_format_spec(fmt)
    y = np.rint(w / scale)
    if zero is None:
        return (np.clip(y, f.qmin, f.qmax) * scale).astype(FLOAT)
    zf = zero.astype(FLOAT)
    return ((np.clip(y + zf, f.qmin, f.qmax) - zf) * scale).astype(FLOAT)


def _lapack_in_place(fn, a: np.ndarray, what: str, **kw) -> np.ndarray:
    """``fn`` (a SciPy LAPACK wrapper, its overwrite flag in ``kw``) on the Fortran-ordered float64 ``a``,
    lower triangle; the result is that same memory (checked: a copy would double the peak). A nonzero
    ``info`` raises LinAlgError."""
    out, info = fn(a, lower=1, **kw)
    if info != 0:
        raise np.linalg.LinAlgError(f"GPTQ: LAPACK {what} failed (info {info}): the dampened Hessian is "
                                    "not positive definite; raise damp")
    if not np.shares_memory(out, a):
        raise RuntimeError(f"GPTQ: LAPACK {what} did not work in place")
    return out


def dampen(H: np.ndarray, damp: float) -> None:
    """GPTQ's dampening, in place on a float64 ``[K, K]``: ``H += lambda I`` with ``lambda = damp * mean(diag H)``,
    or ``damp`` itself when that mean is 0 (an all-dead Hessian)."""
    k = H.shape[0]
    lam = damp * float(np.mean(np.diag(H))) if k else 0.0
    H[np.diag_indices(k)] += lam if lam > 0 else damp


def _inverse_cholesky(owned: list, damp: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + lam I)^{-1}`` (``U^T U`` = that inverse), ``lam = damp *
    mean(diag H)`` added on the diagonal in place; ``owned = [H]``, a float64 ``[K, K]`` whose only reference
    is that list (taken out and overwritten). All in that one buffer, LAPACK on its Fortran-ordered view
    (``H^T = H``): ``potrf`` (``H = L L^T``), ``potri`` (lower triangle of ``H^{-1}``), ``potrf``
    (``H^{-1} = L2 L2^T``, upper triangle zeroed); read in C order the buffer is ``L2^T = U``.
    ``4/3 K^3`` FLOPs and one ``K^2`` (an 8B model's down projection: K = 14336, 1.6 GB)."""
    from scipy.linalg import lapack

    H = np.ascontiguousarray(owned.pop(), dtype=np.float64)
    k = H.shape[0]
    dampen(H, damp)
    if k == 0:
        return H
    a = _lapack_in_place(lapack.dpotrf, H.T, "potrf", overwrite_a=1, clean=0)
    a = _lapack_in_place(lapack.dpotri, a, "potri", overwrite_c=1)
    a = _lapack_in_place(lapack.dpotrf, a, "potrf", overwrite_a=1, clean=1)
    return a.T


def _set_group_scales(W: np.ndarray, scale, zero, scale_fn: ScaleFn, bounds, which=None) -> None:
    """``scale[:, gi]`` (and ``zero``) of the groups ``which`` (default all) from the columns of ``W``."""
    for gi in range(len(bounds)) if which is None else which:
        a, b = bounds[gi]
        scale[:, gi], z = scale_fn(W[:, a:b].astype(FLOAT), a, b)
        if zero is not None:
            zero[:, gi] = z


def _error_feedback(W: np.ndarray, U: np.ndarray, perm: np.ndarray, scale, zero, scale_fn: ScaleFn, g: int,
                    fmt: WeightFormat, act_order: bool, block_size: int) -> np.ndarray:
    """GPTQ's column loop over ``W`` (float64, columns in visiting order ``perm``, updated in place):
    quantize each column, spread its error over the later ones (lazy blocks of ``block_size``).
    Without ``act_order`` a group's scale is set when its first column is reached. Returns float32
    [N, K], in the original column order, the column each code was taken from."""
    n, k = W.shape
    bounds = spec.group_bounds(k, g)
    W_final = np.empty((n, k), FLOAT)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        Err = np.zeros((n, b1 - b0))
        for i in range(b0, b1):
            col = perm[i]
            gi = col // g
            if not act_order and col % g == 0:
                _set_group_scales(W, scale, zero, scale_fn, bounds, (gi,))  # perm is the identity here
            wc = W[:, i].astype(FLOAT)
            W_final[:, col] = wc
            deq = _quantize_column(wc, scale[:, gi], None if zero is None else zero[:, gi], fmt)
            e = (wc.astype(np.float64) - deq) / U[i, i]
            W[:, i + 1:b1] -= np.outer(e, U[i, i + 1:b1])
            Err[:, i - b0] = e
        W[:, b1:] -= Err @ U[b0:b1, b1:]
    return W_final


def gptq_quantize(w, H, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC, *,
                  damp: float = 0.01, act_order: bool = False, block_size: int = 128,
                  scale_fn: ScaleFn | None = None, clip: bool = False) -> spec.QuantizedWeight:
    """GPTQ of ``w`` [N, K] float32 given ``H`` [K, K] (see the module docstring).

    Args:
        w: float32 [N, K], finite. H: symmetric positive semi-definite [K, K].
        group_size: G (or -1 = per-channel), as in :func:`fptq.spec.quantize_weight`.
        fmt: weight format. damp: relative dampening (> 0). act_order: visit
        columns by decreasing ``diag(H)`` with static group scales.
        block_size: columns per lazy-update block (speed only; results equal
        up to float64 rounding). scale_fn: group scale chooser (default RTN scales, or
        :func:`hessian_clip_scale` with ``clip=True``).
    Returns:
        :class:`fptq.spec.QuantizedWeight` with codes equal to
        ``spec.quantize_weight_with_scales(W_updated, scale, zero, G, fmt)``.
    """
    w = spec.validate.as_float32(w, "w")
    spec.validate.check_ndim(w, 2, "w")
    fmt = WeightFormat(fmt)
    n, k = w.shape
    g = spec.validate.check_group_size(group_size, k)
    H = np.asarray(H.take(), dtype=np.float64) if isinstance(H, HessianHandoff) else np.array(H, dtype=np.float64)
    if H.shape != (k, k) or not np.isfinite(H).all():
        raise ValueError(f"H: expected a finite [{k}, {k}] matrix, got shape {H.shape}")
    if not damp > 0:
        raise ValueError(f"damp: expected > 0, got {damp!r}")
    if scale_fn is None:
        scale_fn = hessian_clip_scale(fmt, H) if clip else rtn_group_scale(fmt)
    ng = spec.num_groups(k, g)
    scale = np.empty((n, ng), FLOAT)
    zero = np.zeros((n, ng), np.uint8) if fmt is WeightFormat.ASYMMETRIC else None

    W = w.astype(np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if act_order:
        _set_group_scales(W, scale, zero, scale_fn, spec.group_bounds(k, g))
        perm = np.argsort(-np.diag(H), kind="stable")
    else:
        perm = np.arange(k)
    owned = [H[np.ix_(perm, perm)] if act_order else H]   # this function's copy, handed over (no reference kept)
    del H
    U = _inverse_cholesky(owned, damp)
    if act_order:   # visiting order (a copy); without act_order W is visited in place (no [N, K] copy)
        W = W[:, perm]
    W_final = _error_feedback(W, U, perm, scale, zero, scale_fn, g, fmt, act_order, block_size)
    del W, U
    q = spec.quantize_weight_with_scales(W_final, scale, zero, g, fmt)
    return spec.QuantizedWeight(q, scale, zero, g, fmt)
