"""The W4A8 linear module that replaces ``nn.Linear`` in a quantized model.

:class:`W4A8Linear` holds exactly what a checkpoint stores for one layer:

=============  ======================  =============================================
buffer         dtype / shape           meaning
=============  ======================  =============================================
``qweight``    uint8 [N, ceil(K/2)]    INT4 weights, :data:`fptq.spec.PACKING` layout
``wscale``     float32 [N, ng]         per-(row, group) weight scales, ng = ceil(K/G)
``wzero``      uint8 [N, ng]           zero points (``uint4_asym`` only)
``bias``       float32 [N]             the linear's bias (if it has one)
``act_scale``  float32 [1]             static activation scale (static policies only)
=============  ======================  =============================================

plus its activation policy, group size and weight format. Two compute paths:

* ``mode="integer"`` (default): ``x`` is quantized to INT8 by the backend
  (per-tensor with ``act_scale``, or per-token at run time) and multiplied by
  the backend's integer ``w4a8_matmul`` (int32 group sums + the pinned
  epilogue). Any registered backend works: a backend whose arrays are torch
  tensors gets tensors directly, any other gets NumPy arrays through
  ``backend.from_numpy`` / ``to_numpy``; weights are converted once and cached
  (unpacked once via ``prepare_weight`` where the backend offers it).
* ``mode="fake_quant"``: the same INT8 rounding of ``x`` done in torch, then a
  float matmul with the *dequantized* weight. For fast experiments; it agrees
  with the integer path up to float summation order.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import ActPolicy, WeightFormat
from ._torch import nn, torch

__all__ = ["W4A8Linear", "fake_quant_act", "MODES"]

MODES = ("integer", "fake_quant")


def fake_quant_act(x, policy: ActPolicy, act_scale=None):
    """Fake-quantize a float32 torch activation [M, K] to the INT8 grid and back.

    Same arithmetic as the spec: ``scale = max(amax / 127, 2**-126)`` (per row for
    ``DYNAMIC``) or the given static scale; ``x_hat = clip(rint(x / scale), -127, 127) * scale``.
    ``policy=None`` returns ``x`` unchanged.
    """
    if policy is None:
        return x
    fmt = spec.INT8_ACT
    if ActPolicy(policy) is ActPolicy.DYNAMIC:
        if x.shape[-1] == 0:
            return x
        amax = x.abs().amax(dim=-1, keepdim=True)
        scale = torch.clamp_min(amax / float(fmt.scale_divisor), float(spec.MIN_SCALE))
    else:
        scale = act_scale
    return torch.clamp(torch.round(x / scale), fmt.qmin, fmt.qmax) * scale


class W4A8Linear(nn.Module):
    """INT4-weight, INT8-activation linear layer (see the module docstring)."""

    is_fptq_linear = True

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 weight_format=WeightFormat.SYMMETRIC, policy=ActPolicy.DYNAMIC,
                 backend: str = "torch", mode: str = "integer"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.group_size = spec.validate.check_group_size(group_size, self.in_features)
        self.weight_format = WeightFormat(weight_format)
        self.policy = ActPolicy(policy)
        ng = spec.num_groups(self.in_features, self.group_size)
        self.register_buffer("qweight", torch.zeros(self.out_features, spec.packed_width(self.in_features),
                                                    dtype=torch.uint8))
        self.register_buffer("wscale", torch.ones(self.out_features, ng, dtype=torch.float32))
        if self.weight_format is WeightFormat.ASYMMETRIC:
            self.register_buffer("wzero", torch.zeros(self.out_features, ng, dtype=torch.uint8))
        else:
            self.wzero = None
        if bias:
            self.register_buffer("bias", torch.zeros(self.out_features, dtype=torch.float32))
        else:
            self.bias = None
        if self.policy is ActPolicy.DYNAMIC:
            self.act_scale = None
        else:
            self.register_buffer("act_scale", torch.ones(1, dtype=torch.float32))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.backend_name = backend
        self.mode = mode
        self._cache = None

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear, policy, act_scale, group_size: int,
                    weight_format=WeightFormat.SYMMETRIC, backend: str = "torch", mode: str = "integer"):
        """Quantize ``linear`` (round to nearest, :func:`fptq.spec.quantize_weight`) and pack it."""
        fmt = WeightFormat(weight_format)
        w = linear.weight.detach().cpu().numpy().astype(np.float32)
        qw = spec.quantize_weight(w, group_size, fmt)
        return cls.from_quantized(qw, linear.bias, policy, act_scale, backend=backend, mode=mode)

    @classmethod
    def from_quantized(cls, qw, bias, policy, act_scale, backend: str = "torch", mode: str = "integer"):
        """Build from a :class:`fptq.spec.QuantizedWeight` (any weight quantizer's output)."""
        n, k = qw.q.shape
        m = cls(k, n, bias is not None, qw.group_size, qw.fmt, policy, backend, mode)
        m.qweight.copy_(torch.from_numpy(spec.pack_int4(qw.q, signed=qw.fmt is WeightFormat.SYMMETRIC)))
        m.wscale.copy_(torch.from_numpy(qw.scale))
        if m.wzero is not None:
            m.wzero.copy_(torch.from_numpy(qw.zero))
        if bias is not None:
            m.bias.copy_(bias.detach().to(torch.float32))
        if m.act_scale is not None:
            if act_scale is None:
                raise ValueError(f"policy {m.policy.value} needs a static activation scale")
            m.act_scale.fill_(float(np.float32(act_scale)))
        return m

    # ---- configuration ---------------------------------------------------------------
    def set_mode(self, mode: str, backend: str | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if backend is not None:
            self.backend_name = backend
        self._cache = None
        return self

    def release_cache(self) -> None:
        """Drop the cached dequantized / backend copies of the weight (rebuilt on the next call)."""
        self._cache = None

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, "
                f"weight_format={self.weight_format.value}, policy={self.policy.value}, "
                f"mode={self.mode}, backend={self.backend_name}")

    def _np(self, t):
        return None if t is None else t.detach().cpu().numpy()

    def dequantize_weight(self) -> np.ndarray:
        """float32 [N, K]: :func:`fptq.spec.dequantize_weight` of the stored INT4 weight."""
        signed = self.weight_format is WeightFormat.SYMMETRIC
        q = spec.unpack_int4(self._np(self.qweight), self.in_features, signed=signed)
        return spec.dequantize_weight(q, self._np(self.wscale), self._np(self.wzero),
                                      self.group_size, self.weight_format)

    # ---- compute -----------------------------------------------------------------------
    def forward(self, x):
        shape = x.shape
        x2 = x.detach().reshape(-1, self.in_features).to(torch.float32)
        if self.mode == "fake_quant":
            y = self._forward_fake_quant(x2)
        else:
            y = self._forward_integer(x2)
        return y.reshape(*shape[:-1], self.out_features)

    def _forward_fake_quant(self, x2):
        if self._cache is None or self._cache[0] != "fake":
            with torch.inference_mode(False):
                self._cache = ("fake", torch.from_numpy(self.dequantize_weight()))
        xq = fake_quant_act(x2, self.policy, self.act_scale)
        return torch.nn.functional.linear(xq, self._cache[1], self.bias)

    def _backend_arrays(self):
        if self._cache is None or self._cache[0] != "int" or self._cache[1] != self.backend_name:
            from ..backends import get_backend

            be = get_backend(self.backend_name)
            # cached arrays are made outside inference mode (a forward under torch.inference_mode
            # would otherwise make them inference tensors, which have no version counter)
            with torch.inference_mode(False):
                native = isinstance(be.from_numpy(np.zeros(1, np.float32)), torch.Tensor)
                conv = (lambda t: None if t is None else be.from_numpy(np.ascontiguousarray(self._np(t))))
                arrays = {"qweight": conv(self.qweight), "wscale": conv(self.wscale), "wzero": conv(self.wzero),
                          "bias": conv(self.bias), "act_scale": conv(self.act_scale), "prepared": None}
                if hasattr(be, "prepare_weight") and hasattr(be, "w4a8_matmul_prepared"):
                    arrays["prepared"] = be.prepare_weight(arrays["qweight"], arrays["wzero"], self.in_features,
                                                           self.group_size, self.weight_format)
            self._cache = ("int", self.backend_name, be, arrays, native)
        return self._cache[2], self._cache[3], self._cache[4]

    def _forward_integer(self, x2):
        be, a, native = self._backend_arrays()
        if native:  # the backend computes on torch tensors: no NumPy round trip
            xb = x2.contiguous() if not hasattr(be, "device") else x2.to(be.device).contiguous()
        else:
            xb = be.from_numpy(np.ascontiguousarray(x2.cpu().numpy()))
        if self.policy is ActPolicy.DYNAMIC:
            qx, xs = be.quantize_act_per_token(xb)
        else:
            qx, xs = be.quantize_act_per_tensor(xb, a["act_scale"]), a["act_scale"]
        if a["prepared"] is not None:
            y = be.w4a8_matmul_prepared(qx, xs, a["prepared"], a["wscale"], a["bias"])
        else:
            y = be.w4a8_matmul(qx, xs, a["qweight"], a["wscale"], a["wzero"], self.in_features,
                               self.group_size, self.weight_format, a["bias"])
        if native:
            return y.to(x2.device)
        return torch.from_numpy(np.asarray(be.to_numpy(y), dtype=np.float32)).to(x2.device)
