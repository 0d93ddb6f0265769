"""Folding equalization scales offline, exactly (up to float32 rounding).

For a group with scales ``s`` over its input channels (see :mod:`fptq.models.plan`):

* each linear of the group: ``W'[:, j] = W[:, j] * s_j`` (:func:`fptq.spec.lae_apply_weight`);
* the producer of the input gets ``1 / s`` (true float32 divisions):

  - ``rms`` norm: ``w'_j = w_j / s_j``;
  - ``rms_one_plus`` norm (Gemma): ``w'_j = (1 + w_j) / s_j - 1``, so ``1 + w'_j = (1 + w_j) / s_j``;
  - ``layernorm``: ``w'_j = w_j / s_j``, ``b'_j = b_j / s_j``;
  - a linear (v_proj for o_proj, up_proj/fc1 for down): output row r and bias
    entry r divided by ``s_fold[r]``.

Then ``X' W'^T = (X / s)(W * s)^T = X W^T``: the float model's outputs are
unchanged up to rounding (tests check this on every architecture).
"""

from __future__ import annotations

import numpy as np

from .. import spec
from .arch import Arch, get_submodule
from .plan import GroupPlan

__all__ = ["fold_group", "scale_input_columns"]


def scale_input_columns(linear, s: np.ndarray) -> None:
    """``linear.weight[:, j] *= s_j`` via :func:`fptq.spec.lae_apply_weight` (bit-exact float32)."""
    import torch

    w = linear.weight.detach().cpu().numpy().astype(np.float32)
    linear.weight.data = torch.from_numpy(spec.lae_apply_weight(w, s)).to(linear.weight.dtype)


def _divide_rows(linear, s_rows: np.ndarray) -> None:
    import torch

    s = torch.from_numpy(s_rows.astype(np.float32))
    if linear.weight.shape[0] != s.shape[0]:
        raise ValueError(f"fold: {linear.weight.shape[0]} output rows but {s.shape[0]} scales")
    linear.weight.data = linear.weight.data / s[:, None]
    if linear.bias is not None:
        linear.bias.data = linear.bias.data / s


def _fold_norm(norm, s_np: np.ndarray, norm_kind: str) -> None:
    import torch

    s = torch.from_numpy(s_np.astype(np.float32))
    if norm.weight.shape != s.shape:
        raise ValueError(f"fold: norm weight shape {tuple(norm.weight.shape)} vs {tuple(s.shape)} scales")
    if norm_kind == "rms":
        norm.weight.data = norm.weight.data / s
    elif norm_kind == "rms_one_plus":
        norm.weight.data = (1.0 + norm.weight.data) / s - 1.0
    elif norm_kind == "layernorm":
        norm.weight.data = norm.weight.data / s
        if getattr(norm, "bias", None) is not None:
            norm.bias.data = norm.bias.data / s
    else:
        raise ValueError(f"unknown norm kind {norm_kind!r}")


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
        producer = get_submodule(layer, arch.v if gp.group == "o" else arch.down_fold)
        _divide_rows(producer, gp.s_fold)
