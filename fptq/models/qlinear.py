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

* ``mode="integer"`` (default): the backend's prepared-linear path
  (:class:`fptq.backends.base.Backend`): the weights are handed to
  ``backend.prepare_linear`` once (checked once, prepared in the backend's own
  layout) and every forward calls ``backend.linear_forward(x, prepared)``,
  which checks ``x`` and runs INT8 quantization (per-tensor with
  ``act_scale``, or per-token at run time) and the integer ``w4a8_matmul``
  (int32 group sums + the pinned epilogue). Every backend is treated alike:
  one whose ``array_type`` is ``torch.Tensor`` gets the tensors themselves on
  its ``device``, any other gets NumPy arrays through ``from_numpy`` /
  ``to_numpy`` (views of a float32 CPU input and of the output: no copies).
  A layer loaded from a checkpoint (``origin`` set) also refuses an output
  holding NaN/Inf: it then calls ``backend.linear_forward_finite(x, prepared)
  -> (y, finite)`` instead (part of the interface; numba scans the output
  inside its kernel, the base class's default scans ``y``).
* ``mode="fake_quant"``: the same INT8 rounding of ``x``
  (:func:`fptq.reference.fake_quant_act`), then a float matmul with the
  *dequantized* weight. For fast experiments; it agrees with the integer path
  up to float summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import reference as ref
from .. import spec
from ..backends.base import check_act_scale
from ..defaults import resolve_backend
from ..spec import ActPolicy, WeightFormat
from ._torch import nn, torch

__all__ = ["W4A8Linear", "fake_quant_act", "MODES", "quantized_linears", "set_quantized_mode"]

MODES = ("integer", "fake_quant")


def fake_quant_act(x, policy: ActPolicy | None, act_scale=None):
    """:func:`fptq.reference.fake_quant_act` on a float32 CPU torch tensor [M, K] (``policy=None``: x)."""
    if policy is None:
        return x
    a = None if act_scale is None else np.float32(act_scale.item() if hasattr(act_scale, "item") else act_scale)
    return torch.from_numpy(ref.fake_quant_act(x.detach().cpu().numpy(), policy, a)).to(x.device)


def quantized_linears(model) -> dict:
    """full name -> :class:`W4A8Linear` for every quantized linear in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, W4A8Linear)}


def set_quantized_mode(model, mode: str, backend: str | None = None):
    """Switch every W4A8Linear of ``model`` to ``mode`` (and optionally another backend)."""
    for m in quantized_linears(model).values():
        m.set_mode(mode, backend)
    return model


@dataclass
class _OnBackend:
    """A layer prepared for one backend: its name, the instance, what ``prepare_linear`` returned,
    and whether the backend takes torch tensors (its ``array_type`` is ``torch.Tensor``)."""

    name: str
    backend: object
    prepared: object
    native: bool = False


class W4A8Linear(nn.Module):
    """INT4-weight, INT8-activation linear layer (see the module docstring)."""

    is_fptq_linear = True

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 weight_format=WeightFormat.SYMMETRIC, policy=ActPolicy.DYNAMIC,
                 backend: str | None = None, mode: str = "integer"):
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
        self.backend_name = resolve_backend(backend)  # None: fptq.defaults.default_backend()
        self.mode = mode
        self._fake_weight = None     # dequantized weight (fake_quant mode)
        self._on_backend = None      # _OnBackend (integer mode)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear, policy, act_scale, group_size: int,
                    weight_format=WeightFormat.SYMMETRIC, backend: str | None = None, mode: str = "integer"):
        """Quantize ``linear`` (round to nearest, :func:`fptq.spec.quantize_weight`) and pack it."""
        fmt = WeightFormat(weight_format)
        w = linear.weight.detach().cpu().numpy().astype(np.float32)
        qw = spec.quantize_weight(w, group_size, fmt)
        return cls.from_quantized(qw, linear.bias, policy, act_scale, backend=backend, mode=mode)

    @classmethod
    def from_quantized(cls, qw, bias, policy, act_scale, backend: str | None = None, mode: str = "integer"):
        """Build from a :class:`fptq.spec.QuantizedWeight` (any weight quantizer's output)."""
        n, k = qw.q.shape
        m = cls(k, n, bias is not None, qw.group_size, qw.fmt, policy, backend, mode)
        m.qweight.copy_(torch.from_numpy(spec.pack_int4(qw.q, signed=qw.fmt is WeightFormat.SYMMETRIC)))
        m.wscale.copy_(torch.from_numpy(qw.scale))
        if m.wzero is not None:
            m.wzero.copy_(torch.from_numpy(qw.zero))
        if bias is not None:
            m.bias.copy_(bias.detach().to(torch.float32))
        if m.act_scale is not None:  # a static policy (a dynamic layer ignores act_scale)
            check_act_scale(m.policy, act_scale)
            m.act_scale.fill_(float(np.float32(act_scale)))
        return m

    # ---- configuration ---------------------------------------------------------------
    def set_mode(self, mode: str, backend: str | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if backend is not None:
            self.backend_name = backend
        self.release_cache()
        return self

    def release_cache(self) -> None:
        """Drop the dequantized weight and the backend's prepared layer (rebuilt on the next call)."""
        self._fake_weight = None
        self._on_backend = None

    def _apply(self, fn, *args, **kwargs):
        self.release_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.release_cache()
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
    def _flat(self, x):
        """x as float32 [M, K] (a view when it already is float32)."""
        x2 = x.detach().reshape(-1, self.in_features)
        return x2 if x2.dtype == torch.float32 else x2.to(torch.float32)

    def forward(self, x):
        """y [..., N] for x [..., K] (any float dtype; computed in float32)."""
        origin = self.__dict__.get("origin")  # set by load_quantized: "layer NAME of CHECKPOINT"
        try:
            if self.mode == "fake_quant":
                y = self._forward_fake_quant(self._flat(x)).reshape(*x.shape[:-1], self.out_features)
                finite = None
            else:
                y, finite = self._forward_integer(x, origin is not None)
        except (ValueError, ArithmeticError) as e:
            if not origin:
                raise
            try:
                named = type(e)(f"{origin}: {e}")
            except TypeError:  # an exception class that takes other arguments
                named = ValueError(f"{origin}: {e}")
            raise named from e
        if origin and not (bool(torch.isfinite(y).all()) if finite is None else finite):
            raise ArithmeticError(f"{origin}: the output holds NaN/Inf (its scales or input overflow float32)")
        return y

    def _forward_fake_quant(self, x2):
        if self._fake_weight is None:
            with torch.inference_mode(False):
                self._fake_weight = torch.from_numpy(self.dequantize_weight())
        xq = fake_quant_act(x2, self.policy, self.act_scale)
        return torch.nn.functional.linear(xq, self._fake_weight, self.bias)

    # ---- the backend boundary: the same for every backend -------------------------------
    @staticmethod
    def _native(be) -> bool:
        return isinstance(be.array_type, type) and issubclass(be.array_type, torch.Tensor)

    def _to_backend(self, be, t):
        if t is None:
            return None
        if self._native(be):
            return t.detach().to(be.device).contiguous()
        return be.from_numpy(np.ascontiguousarray(t.detach().cpu().numpy()))

    def _prepared(self) -> _OnBackend:
        if self._on_backend is None or self._on_backend.name != self.backend_name:
            from ..backends import get_backend

            be = get_backend(self.backend_name)
            # prepared arrays are made outside inference mode (a forward under torch.inference_mode
            # would otherwise make them inference tensors, which have no version counter)
            with torch.inference_mode(False):
                conv = [self._to_backend(be, t) for t in (self.qweight, self.wscale, self.wzero, self.bias,
                                                          self.act_scale)]
                prepared = be.prepare_linear(*conv, self.in_features, self.group_size, self.weight_format,
                                             self.policy)
            self._on_backend = _OnBackend(self.backend_name, be, prepared, self._native(be))
        return self._on_backend

    def _forward_integer(self, x, want_finite: bool = False):
        """(y [..., N], whether y is all finite, or None when not asked): the backend's prepared path;
        the backend reports the output's finiteness (``linear_forward_finite``) only when the caller
        checks it (``want_finite``). For a NumPy backend, a float32 CPU x goes in and y comes out as
        NumPy views (no torch reshapes)."""
        ob = self._prepared()
        be = ob.backend
        out_shape = (*x.shape[:-1], self.out_features)
        forward = be.linear_forward_finite if want_finite else be.linear_forward
        if ob.native:
            out = forward(self._to_backend(be, self._flat(x)), ob.prepared)
            y, finite = out if want_finite else (out, None)
            return y.to(x.device).reshape(out_shape), finite
        on_cpu = x.device.type == "cpu"
        if on_cpu and x.dtype == torch.float32:
            xn = x.detach().numpy().reshape(-1, self.in_features)
        else:
            xn = self._flat(x).cpu().numpy()
        out = forward(be.from_numpy(np.ascontiguousarray(xn)), ob.prepared)
        y, finite = out if want_finite else (out, None)
        y = torch.from_numpy(np.asarray(be.to_numpy(y), dtype=np.float32).reshape(out_shape))
        return (y if on_cpu else y.to(x.device)), finite
