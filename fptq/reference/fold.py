"""Folding equalization scales offline: the producer of an input absorbs ``1/s`` exactly.

For a group with scales ``s`` over its input channels
(:func:`fptq.reference.equalize.equalization_scales`), each linear of the group
gets ``W'[:, j] = W[:, j] * s_j`` (:func:`fptq.spec.lae_apply_weight`) and the
producer of the input gets ``1 / s`` by true float32 divisions:

* norm ``rms``: ``w'_j = w_j / s_j``;
* norm ``rms_one_plus`` (Gemma, which multiplies by ``1 + w``):
  ``w'_j = (1 + w_j) / s_j - 1``, so ``1 + w'_j = (1 + w_j) / s_j`` up to rounding;
* norm ``layernorm``: ``w'_j = w_j / s_j`` and ``b'_j = b_j / s_j``;
* a linear producer (v_proj for o_proj, up_proj/fc1 for down_proj): output row
  r and bias entry r divided by ``s_fold[r]``.

Then ``X' W'^T = (X / s)(W * s)^T = X W^T``: the float model's outputs are
unchanged up to float32 rounding. Every function takes and returns float32
NumPy arrays and leaves its inputs unmodified.
"""

from __future__ import annotations

import numpy as np

from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_positive_scale

__all__ = ["NORM_KINDS", "fold_into_norm", "fold_into_rows"]

#: how a norm applies its affine weight (see the module docstring)
NORM_KINDS = ("rms", "rms_one_plus", "layernorm")


def _scales(s, n: int, what: str) -> np.ndarray:
    s = as_float32(s, "s")
    if s.shape != (n,):
        raise ValueError(f"fold: {what} has {n} entries but {s.shape} scales")
    check_positive_scale(s, "s")
    return s


def fold_into_norm(weight, bias, s, norm_kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weight', bias')`` of a norm whose output is divided by ``s`` (bias None stays None)."""
    w = as_float32(weight, "norm weight")
    s = _scales(s, w.shape[0] if w.ndim == 1 else -1, f"norm weight of shape {w.shape}")
    if norm_kind == "rms":
        return (w / s).astype(FLOAT), None if bias is None else as_float32(bias, "norm bias")
    if norm_kind == "rms_one_plus":
        return ((FLOAT(1.0) + w) / s - FLOAT(1.0)).astype(FLOAT), None if bias is None else as_float32(bias, "norm bias")
    if norm_kind == "layernorm":
        b = None if bias is None else (as_float32(bias, "norm bias") / s).astype(FLOAT)
        return (w / s).astype(FLOAT), b
    raise ValueError(f"unknown norm kind {norm_kind!r}; choose from {NORM_KINDS}")


def fold_into_rows(weight, bias, s_rows) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W', b')`` of a linear producer whose output row r is divided by ``s_rows[r]``."""
    w = as_float32(weight, "producer weight")
    if w.ndim != 2:
        raise ValueError(f"producer weight: expected a 2-D array, got shape {w.shape}")
    s = _scales(s_rows, w.shape[0], f"a producer with weight {w.shape}")
    b = None if bias is None else (as_float32(bias, "producer bias") / s).astype(FLOAT)
    return (w / s[:, None]).astype(FLOAT), b
