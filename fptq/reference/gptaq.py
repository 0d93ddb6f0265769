"""GPTAQ: GPTQ with asymmetric calibration (Li et al., 2025, "GPTAQ: Efficient Finetuning-Free
Quantization for Asymmetric Calibration", also called GPTQv2).

Plain GPTQ (:mod:`fptq.reference.gptq`) makes a layer's quantized output match its float output on one
set of inputs: ``||X W^T - X Q^T||^2``. In a model whose earlier layers are already quantized, the layer
really receives other inputs ``X~`` (the quantized model's), and what should be matched is the *float
model's* output on the float inputs ``X``:

    ``E(Q) = ||X W^T - X~ Q^T||^2``          (rows ``X``, ``X~`` [n, K] of the same tokens)

With ``Delta = X - X~``, ``H~ = X~^T X~ / n`` and the cross term ``D = Delta^T X~ / n`` [K, K], per
output row ``w`` (a row of ``W``) and ``e = w - q``:

    ``E / n = e^T H~ e + 2 e^T D^T w + const``

and with GPTQ's dampening ``H~_d = H~ + lambda I`` (``lambda = damp * mean(diag H~)``, dead columns'
diagonal set to 1 first, exactly as :func:`fptq.reference.gptq.gptq_quantize` does), completing the square:

    ``E / n + lambda ||w - q||^2 = (q - w*)^T H~_d (q - w*) + const``,
    ``W* = W + W D H~_d^{-1}``                                   (:func:`asymmetric_target`)

So GPTQ run on the target ``W*`` with the Hessian ``H~`` (which it dampens itself by the same
``lambda``) minimizes the asymmetric objective with the same ``lambda ||w - q||^2`` regularizer as plain
GPTQ's dampened one. It is exact, not an approximation; GPTAQ's paper applies the same correction inside
GPTQ's column loop (cheaper, the same target). When ``X~ = X``, ``Delta = 0`` exactly, ``D = 0`` and
``W* = W`` bit for bit: :func:`gptaq_quantize` is then :func:`~fptq.reference.gptq.gptq_quantize`.

``alpha`` in [0, 1] (GPTAQ's reference code scales its correction by 0.25) takes the target
``W + alpha W D H~_d^{-1}``: exactly the objective with ``X`` replaced by ``X~ + alpha (X - X~)``, i.e. the
float model's output approached part of the way (``alpha = 0``: plain GPTQ on ``X~``; ``1``: ``E`` above).

With a LAE fold ``s`` both inputs are divided by ``s`` and the weight multiplied by it (``X / s``,
``X~ / s``, ``W * s``): :func:`cross_term` takes ``s`` like :func:`~fptq.reference.gptq.equalized_hessian`.

Memory beyond GPTQ's: ``D`` and the dampened Cholesky factor, two float64 [K, K], and the target
float64 [N, K]; :func:`cross_term` holds two float64 copies of the [n, K] rows while it runs.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat
from .gptq import HessianHandoff, dampen, gptq_quantize

__all__ = ["cross_term", "asymmetric_target", "gptaq_quantize", "asymmetric_error"]


def cross_term(x, x_tilde, s=None) -> np.ndarray:
    """``D = (X - X~)^T X~ / n`` (float64 [K, K]) of rows ``x`` (the float model's) and ``x_tilde`` (the
    quantized model's) [n, K] of the same tokens, both divided by ``s`` [K] first when given (a LAE fold).
    ``x == x_tilde`` gives exactly zero."""
    x, x_tilde = np.asarray(x), np.asarray(x_tilde)
    if x.ndim != 2 or x.shape != x_tilde.shape:
        raise ValueError(f"x and x_tilde: expected two [n, K] arrays of one shape, got {x.shape} and {x_tilde.shape}")
    if x.shape[0] == 0:
        raise ValueError("x: no calibration rows")
    xt = x_tilde.astype(np.float64)
    delta = x.astype(np.float64)
    if not (np.isfinite(xt).all() and np.isfinite(delta).all()):
        raise ValueError("x or x_tilde contains a non-finite value; fptq rejects NaN and Inf")
    if s is not None:   # in place: the same quotients as x / s
        s64 = np.asarray(s, np.float64)
        np.divide(xt, s64, out=xt)
        np.divide(delta, s64, out=delta)
    delta -= xt
    d = delta.T @ xt
    d /= x.shape[0]
    return d


def _dampened(H: np.ndarray, damp: float) -> np.ndarray:
    """A copy of ``H`` as GPTQ factors it: dead columns' diagonal 1, then ``+ damp * mean(diag)`` (or ``+ damp``
    when that mean is 0) on the diagonal (:func:`fptq.reference.gptq._inverse_cholesky`)."""
    Hd = np.array(H, dtype=np.float64)
    dead = np.diag(Hd) == 0
    Hd[dead, dead] = 1.0
    dampen(Hd, damp)
    return Hd


def asymmetric_target(w, H, D, damp: float = 0.01, alpha: float = 1.0) -> np.ndarray:
    """``W* = W + alpha W D H_d^{-1}`` (float64 [N, K]; the module docstring): the weight whose GPTQ with ``H``
    minimizes ``||X W^T - X~ Q^T||^2 + lambda ||W - Q||^2`` (``alpha = 1``). ``H``: ``X~^T X~ / n``; ``D``:
    :func:`cross_term`."""
    from scipy.linalg import cho_factor, cho_solve

    W = np.asarray(w, np.float64)
    k = W.shape[1]
    for name, m in (("H", H), ("D", D)):
        if np.shape(m) != (k, k) or not np.isfinite(m).all():
            raise ValueError(f"{name}: expected a finite [{k}, {k}] matrix, got shape {np.shape(m)}")
    if not damp > 0:
        raise ValueError(f"damp: expected > 0, got {damp!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    factor = cho_factor(_dampened(H, damp), lower=True, overwrite_a=True, check_finite=False)
    correction = cho_solve(factor, (W @ np.asarray(D, np.float64)).T, overwrite_b=True, check_finite=False)
    del factor
    correction *= alpha
    return W + correction.T


def gptaq_quantize(w, H, D, group_size: int, fmt: WeightFormat | str = WeightFormat.SYMMETRIC, *,
                   damp: float = 0.01, alpha: float = 1.0, **gptq_options) -> spec.QuantizedWeight:
    """GPTAQ of ``w`` [N, K] float32: :func:`~fptq.reference.gptq.gptq_quantize` of :func:`asymmetric_target`
    with ``H = X~^T X~ / n`` (or a :class:`~fptq.reference.gptq.HessianHandoff` of it) and ``D``
    (:func:`cross_term`), ``alpha`` (:func:`asymmetric_target`); ``gptq_options``: GPTQ's (``act_order``, ``clip``, ``block_size``, ``scale_fn``).
    The target is cast to float32 for GPTQ (``W`` itself when ``D = 0``)."""
    w = spec.validate.as_float32(w, "w")
    spec.validate.check_ndim(w, 2, "w")
    held = H.take() if isinstance(H, HessianHandoff) else H
    target = asymmetric_target(w, held, D, damp, alpha).astype(np.float32)
    if not np.isfinite(target).all():
        raise ValueError("GPTAQ: the asymmetric target W* is not finite (float32 overflow); raise damp")
    H = HessianHandoff(held) if isinstance(H, HessianHandoff) else held
    del held
    return gptq_quantize(target, H, group_size, fmt, damp=damp, **gptq_options)


def asymmetric_error(x, x_tilde, w, wq) -> float:
    """``||X W^T - X~ Wq^T||_F / ||X W^T||_F`` (float64): the objective GPTAQ minimizes, relative; ``wq``: the
    dequantized weight."""
    x64, xt64 = np.asarray(x, np.float64), np.asarray(x_tilde, np.float64)
    ref = x64 @ np.asarray(w, np.float64).T
    return float(np.linalg.norm(ref - xt64 @ np.asarray(wq, np.float64).T) / np.linalg.norm(ref))
