"""A W4A8-quantized linear layer in pure NumPy, on top of :mod:`fptq.spec`.

Quantization (offline), for W float32 [N, K], bias [N] or None and a
:class:`~fptq.reference.plan.LayerPlan`::

    W' = W * s                     (LAE, columns; only if the plan has LAE scales)
    q, wscale, zero = quantize_weight(W', G, fmt)        groupwise INT4 (spec section 4)
    packed = pack_int4(q)                                 uint8 [N, ceil(K/2)] (section 5)

Forward (run time), x float32 [..., K]::

    x' = x / s                     (LAE; here applied at run time, folded upstream in a model)
    qx, xscale = quantize_act_per_tensor(x', act_scale), act_scale   (static policies)
               | quantize_act_per_token(x')                          (dynamic)
    y = w4a8_matmul(qx, xscale, packed, wscale, zero, K, G, fmt, bias)   integer core + pinned epilogue

:meth:`QuantizedLinear.fake_quant_forward` computes the same quantities with
dequantized floats, ``dequantize_act(qx) @ dequantize_weight(q)^T + bias``, as a
float32 matmul: it agrees with :meth:`~QuantizedLinear.forward` up to float
rounding (see its docstring), never bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec import (
    DEFAULT_GROUP_SIZE, ActPolicy, WeightFormat, dequantize_act, dequantize_weight, lae_apply_activation,
    lae_apply_weight, pack_int4, quantize_act_per_tensor, quantize_act_per_token, quantize_weight,
    unpack_int4, w4a8_matmul,
)
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_ndim, check_shape
from .plan import LayerPlan

__all__ = ["QuantizedLinear", "quantize_linear"]


@dataclass(frozen=True)
class QuantizedLinear:
    """A W4A8 linear layer: y = x W^T + bias with INT4 weights and INT8 activations.

    Attributes:
        name: layer name. n, k: output and input features.
        packed: uint8 [N, ceil(K/2)], INT4 weights of W' = W * s (K_LOW_FIRST layout).
        wscale: float32 [N, ng] per-(row, group) weight scales.
        zero: uint8 [N, ng] zero points (asymmetric format) or None.
        bias: float32 [N] or None.
        group_size: G (K for per-channel). fmt: :class:`fptq.spec.WeightFormat`.
        policy: activation policy. act_scale: float32 per-tensor scale (static) or None.
        lae_scales: float32 [K] s, applied to x as x / s at run time, or None.
    """

    name: str
    n: int
    k: int
    packed: np.ndarray
    wscale: np.ndarray
    zero: np.ndarray | None
    bias: np.ndarray | None
    group_size: int
    fmt: WeightFormat
    policy: ActPolicy
    act_scale: np.ndarray | None
    lae_scales: np.ndarray | None

    def quantize_input(self, x) -> tuple[np.ndarray, np.ndarray]:
        """``(qx int8 [M, K], xscale float32 [1] or [M])`` for x float32 [M, K], per the plan."""
        x = as_float32(x, f"input of layer {self.name!r}")
        check_ndim(x, 2, f"input of layer {self.name!r}")
        if x.shape[1] != self.k:
            raise ValueError(f"input of layer {self.name!r}: expected [M, {self.k}], got {x.shape}")
        if self.lae_scales is not None:
            with np.errstate(over="ignore"):  # an overflow to inf is then rejected by the quantizer
                x = lae_apply_activation(x, self.lae_scales)
        if self.policy is ActPolicy.DYNAMIC:
            return quantize_act_per_token(x)
        return quantize_act_per_tensor(x, self.act_scale), np.reshape(self.act_scale, 1).astype(FLOAT)

    def _rows(self, x) -> tuple[np.ndarray, tuple]:
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"input of layer {self.name!r}: expected [..., {self.k}], got a scalar")
        return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]), x.shape[:-1]

    def forward(self, x) -> np.ndarray:
        """Integer W4A8 forward: float32 [..., K] -> float32 [..., N] via ``fptq.spec.w4a8_matmul``."""
        rows, lead = self._rows(x)
        qx, xscale = self.quantize_input(rows)
        y = w4a8_matmul(qx, xscale, self.packed, self.wscale, self.zero, self.k, self.group_size,
                        self.fmt, self.bias)
        return y.reshape(*lead, self.n)

    __call__ = forward

    def dequantize_weight(self) -> np.ndarray:
        """The dequantized equalized weight W'_hat float32 [N, K] (``fptq.spec.dequantize_weight``)."""
        q = unpack_int4(self.packed, self.k, signed=self.fmt is WeightFormat.SYMMETRIC)
        return dequantize_weight(q, self.wscale, self.zero, self.group_size, self.fmt)

    def fake_quant_forward(self, x) -> np.ndarray:
        """Dequantized-float forward: ``dequantize_act(qx, xscale) @ W'_hat^T (+ bias)`` in float32.

        Same quantized values as :meth:`forward`, different float ops: here each
        x_hat and w_hat is rounded to float32 and K products are summed in
        BLAS order; there the integer sums are exact and only ng + 3 float ops
        follow. The two differ by at most about ``(K + ng + 4) * 2**-24 *
        (|x_hat| @ |w_hat|^T)`` per element (the standard dot-product rounding
        bound), not bit for bit.
        """
        rows, lead = self._rows(x)
        qx, xscale = self.quantize_input(rows)
        x_hat = dequantize_act(qx, xscale if self.policy is ActPolicy.DYNAMIC else xscale[0])
        y = (x_hat @ self.dequantize_weight().T).astype(FLOAT)
        if self.bias is not None:
            y = (y + self.bias).astype(FLOAT)
        return y.reshape(*lead, self.n)


def quantize_linear(w, bias, plan: LayerPlan, group_size: int = DEFAULT_GROUP_SIZE,
                    fmt: WeightFormat | str = WeightFormat.SYMMETRIC) -> QuantizedLinear:
    """Quantize one linear layer per its plan (round-to-nearest INT4 weights).

    Args:
        w: float32 [N, K] (nn.Linear's [out, in]), finite.
        bias: float32 [N] or None.
        plan: :class:`LayerPlan` for this layer (its LAE scales must have length K).
        group_size: G (default 128), or -1 for per-channel.
        fmt: ``"int4_sym"`` (default) or ``"uint4_asym"``.
    Returns:
        :class:`QuantizedLinear`.
    """
    w = as_float32(w, f"weight of layer {plan.name!r}")
    check_ndim(w, 2, f"weight of layer {plan.name!r}")
    n, k = w.shape
    if bias is not None:
        bias = as_float32(bias, f"bias of layer {plan.name!r}")
        check_shape(bias, (n,), f"bias of layer {plan.name!r}")
    if plan.lae_scales is not None:
        if plan.lae_scales.shape != (k,):
            raise ValueError(f"layer {plan.name!r}: plan has {plan.lae_scales.shape[0]} LAE scales, weight has K={k}")
        w = lae_apply_weight(w, plan.lae_scales)
    if plan.policy is not ActPolicy.DYNAMIC and plan.act_scale is None:
        raise ValueError(f"layer {plan.name!r}: a {plan.policy.value} plan needs an act_scale")
    fmt = WeightFormat(fmt)
    qw = quantize_weight(w, group_size, fmt)
    packed = pack_int4(qw.q, signed=fmt is WeightFormat.SYMMETRIC)
    return QuantizedLinear(plan.name, n, k, packed, qw.scale, qw.zero, bias, qw.group_size, fmt,
                           plan.policy, plan.act_scale, plan.lae_scales)
