"""A generic fake-quantized linear module for experiments and baselines (all float compute).

:class:`FakeQuantLinear` computes ``fake_quant_act(x) @ W_hat^T + b`` with a
weight that was quantized and dequantized offline (``W_hat``, e.g.
:func:`fptq.reference.fake_quant_weight` or
:func:`fptq.reference.fake_quant_weight_int8_per_channel`) or left float, and
activations rounded to the INT8 grid (static or per-token,
:func:`fptq.reference.fake_quant_act`) or left float. Nothing here is integer
compute; the names say so. The baselines of ``fptq compare`` are built from it.
"""

from __future__ import annotations

import numpy as np

from ..spec import ActPolicy
from ._torch import nn, torch
from .qlinear import fake_quant_act

__all__ = ["FakeQuantLinear"]


class FakeQuantLinear(nn.Module):
    """``y = fake_quant_act(x, policy, act_scale) @ weight^T + bias`` (float32 compute).

    Args:
        weight: float32 [N, K] tensor (already fake-quantized, or float).
        bias: float32 [N] or None.
        policy: :class:`fptq.spec.ActPolicy` for INT8 activations, or None for float activations.
        act_scale: static scale (float) for the static policies.
        label: a short description shown in ``repr`` (e.g. ``"w4g128 a8-static"``).
    """

    is_fptq_linear = True

    def __init__(self, weight, bias, policy: ActPolicy | None, act_scale: float | None, label: str = ""):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.policy = None if policy is None else ActPolicy(policy)
        if self.policy not in (None, ActPolicy.DYNAMIC) and act_scale is None:
            raise ValueError(f"policy {self.policy.value} needs a static activation scale")
        self.register_buffer("act_scale", None if act_scale is None or self.policy in (None, ActPolicy.DYNAMIC)
                             else torch.tensor([float(np.float32(act_scale))], dtype=torch.float32))
        self.label = label

    def extra_repr(self) -> str:
        pol = "float" if self.policy is None else self.policy.value
        return f"in={self.in_features}, out={self.out_features}, act={pol}, {self.label}"

    def forward(self, x):
        x2 = x.to(torch.float32).reshape(-1, self.in_features)
        xq = fake_quant_act(x2, self.policy, self.act_scale)
        return torch.nn.functional.linear(xq, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)
