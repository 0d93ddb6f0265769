"""Applying a group's equalization to a model, in place (the arithmetic is :mod:`fptq.reference.fold`).

For a group with scales ``s`` (see :func:`fptq.reference.plan_group`): each linear of the
group gets ``W * s`` (:func:`fptq.spec.lae_apply_weight`), and the producer of
its input gets ``1 / s``: the norm before q/k/v or gate/up
(:func:`fptq.reference.fold_into_norm`), v_proj's output rows for o_proj,
up_proj/fc1's output rows for down_proj (:func:`fptq.reference.fold_into_rows`).
Tensors go out of the modules as float32 NumPy arrays and come back in the
parameter's dtype; tests check on every architecture that the float model's
outputs are unchanged up to rounding.
"""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from .. import spec
from .arch import Arch, get_submodule
from ..reference.plan import GroupPlan

__all__ = ["fold_group", "scale_input_columns"]


def _get(p) -> np.ndarray:
    return p.detach().cpu().numpy().astype(np.float32)


def _set(p, a: np.ndarray) -> None:
    import torch

    p.data = torch.from_numpy(np.ascontiguousarray(a)).to(device=p.device, dtype=p.dtype)


def scale_input_columns(linear, s: np.ndarray) -> None:
    """``linear.weight[:, j] *= s_j`` via :func:`fptq.spec.lae_apply_weight` (bit-exact float32)."""
    _set(linear.weight, spec.lae_apply_weight(_get(linear.weight), s))


def _fold_rows(linear, s_rows: np.ndarray) -> None:
    w, b = ref.fold_into_rows(_get(linear.weight), None if linear.bias is None else _get(linear.bias), s_rows)
    _set(linear.weight, w)
    if b is not None:
        _set(linear.bias, b)


def _fold_norm(norm, s: np.ndarray, norm_kind: str) -> None:
    bias = getattr(norm, "bias", None)
    w, b = ref.fold_into_norm(_get(norm.weight), None if bias is None else _get(bias), s, norm_kind)
    _set(norm.weight, w)
    if b is not None and norm_kind == "layernorm":
        _set(bias, b)


def fold_group(layer, arch: Arch, gp: GroupPlan) -> None:
    """Apply one group's equalization to ``layer`` in place (no-op for groups without ``s``)."""
    if gp.s is None:
        return
    for name in gp.linears:
        scale_input_columns(get_submodule(layer, name[len(gp.prefix) + 1:]), gp.s)
    if gp.group in ("qkv", "gate_up"):
        norm = get_submodule(layer, arch.attn_norm if gp.group == "qkv" else arch.mlp_norm)
        _fold_norm(norm, gp.s_fold, arch.norm_kind)
    else:
        _fold_rows(get_submodule(layer, arch.v if gp.group == "o" else arch.down_fold), gp.s_fold)
