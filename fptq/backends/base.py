"""The backend interface: the spec's primitives on a framework's own arrays.

A backend is a small class with a ``name`` that imports its framework in
``__init__`` (raising :class:`BackendUnavailable` with the reason when it
cannot start) and implements the operations of :class:`Backend` on its own
array type. ``from_numpy`` / ``to_numpy`` are the only boundary the
conformance suite crosses: it converts the spec's inputs with ``from_numpy``,
calls the operation, and compares ``to_numpy`` of the result with the
reference, exactly.

Every operation has the signature and semantics of the function of the same
name in :mod:`fptq.spec` (see ``docs/spec.md``); ``None`` stands for "no zero
point" / "no bias". Weight formats are :class:`fptq.spec.WeightFormat` values.

**What a model needs** besides the spec's primitives (what
:class:`fptq.models.qlinear.W4A8Linear` uses, the same way for every backend):

* ``device`` (where the backend's arrays live, e.g. ``"cpu"``, ``cuda:0``)
  and ``array_type`` (the class of those arrays: ``numpy.ndarray``,
  ``torch.Tensor``...): a model hands a backend whose ``array_type`` is its own
  tensor class the tensors directly (moved to ``device``), any other backend
  NumPy arrays through ``from_numpy``/``to_numpy``;
* the **prepared-linear path**: ``prepare_linear(...)`` checks one layer's
  weights once and returns the backend's prepared form of them (an opaque
  object), ``linear_forward(x, prepared)`` checks ``x`` and computes
  ``w4a8_matmul(quantize(x))`` with the layer's policy: same bits as the
  public operations. :class:`LinearPath` is a default any backend gets for
  free (``ReferenceFallback`` includes it): it checks the weights by one
  call of the backend's own ``w4a8_matmul`` and computes each forward with
  the public operations. Fast backends override both methods to prepare the
  weight once (unpacking, layout) and to run the unchecked kernels after
  checking ``x`` once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import spec
from ..spec import ActPolicy, WeightFormat

__all__ = ["Backend", "BackendUnavailable", "ReferenceFallback", "LinearPath", "PreparedLinear", "OPERATIONS"]

#: The operations every backend provides (the conformance suite tests each one).
OPERATIONS = (
    "act_scale_from_amax",
    "quantize_act_per_tensor",
    "quantize_act_per_token",
    "dequantize_act",
    "lae_scales",
    "lae_apply_activation",
    "lae_apply_weight",
    "weight_scales",
    "quantize_weight_with_scales",
    "quantize_weight",
    "dequantize_weight",
    "pack_int4",
    "unpack_int4",
    "w4a8_group_sums",
    "w4a8_epilogue",
    "w4a8_matmul",
    "select_policies",
)


class BackendUnavailable(ImportError):
    """A backend that exists but cannot start here (missing package, no GPU, ...)."""


@runtime_checkable
class Backend(Protocol):
    """What a W4A8 backend provides. Arrays are the backend's own type."""

    name: str
    device: Any          # where the arrays live: "cpu", torch.device("cuda", 0), ...
    array_type: type     # the class of the arrays the operations take and return

    def from_numpy(self, a: np.ndarray) -> Any: ...
    def to_numpy(self, t: Any) -> np.ndarray: ...
    def describe(self) -> str: ...

    # activations (spec section 2)
    def act_scale_from_amax(self, amax): ...
    def quantize_act_per_tensor(self, x, scale): ...
    def quantize_act_per_token(self, x) -> tuple[Any, Any]: ...
    def dequantize_act(self, q, scale): ...
    # LAE (section 3)
    def lae_scales(self, channel_max): ...
    def lae_apply_activation(self, x, s): ...
    def lae_apply_weight(self, w, s): ...
    # weights (section 4)
    def weight_scales(self, w, group_size: int, fmt: WeightFormat = WeightFormat.SYMMETRIC) -> tuple[Any, Any]: ...
    def quantize_weight_with_scales(self, w, scale, zero, group_size: int, fmt: WeightFormat = WeightFormat.SYMMETRIC): ...
    def quantize_weight(self, w, group_size: int, fmt: WeightFormat = WeightFormat.SYMMETRIC) -> spec.QuantizedWeight: ...
    def dequantize_weight(self, q, scale, zero, group_size: int, fmt: WeightFormat = WeightFormat.SYMMETRIC): ...
    # packing (section 5)
    def pack_int4(self, q, signed: bool = True): ...
    def unpack_int4(self, packed, k: int, signed: bool = True): ...
    # matmul (section 6)
    def w4a8_group_sums(self, qx, packed, zero, k: int, group_size: int, fmt: WeightFormat = WeightFormat.SYMMETRIC): ...
    def w4a8_epilogue(self, acc, wscale, xscale, bias=None): ...
    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k: int, group_size: int,
                    fmt: WeightFormat = WeightFormat.SYMMETRIC, bias=None): ...
    # policy (section 7)
    def select_policies(self, v, v0: float = spec.DEFAULT_V0, v1: float = spec.DEFAULT_V1): ...
    # the prepared-linear path of a model (not a spec primitive; see the module docstring)
    def prepare_linear(self, packed, wscale, zero, bias, act_scale, k: int, group_size: int,
                       fmt: WeightFormat = WeightFormat.SYMMETRIC, policy: ActPolicy = ActPolicy.DYNAMIC) -> Any: ...
    def linear_forward(self, x, prepared) -> Any: ...


@dataclass(frozen=True)
class PreparedLinear:
    """One linear layer's W4A8 weights on a backend, checked once (:meth:`LinearPath.prepare_linear`).

    ``packed``, ``wscale``, ``zero``, ``bias``, ``act_scale`` are the backend's arrays (``zero``,
    ``bias``, ``act_scale`` may be None); ``kernel`` holds whatever else a backend prepared
    (an unpacked weight, contiguous copies...), None for the default path.
    """

    k: int
    n: int
    group_size: int
    fmt: WeightFormat
    policy: ActPolicy
    packed: Any
    wscale: Any
    zero: Any
    bias: Any
    act_scale: Any
    kernel: Any = None


class LinearPath:
    """Mixin: the prepared-linear path built from a backend's public operations.

    Any backend that subclasses it (``ReferenceFallback`` does) has a correct
    :meth:`prepare_linear` / :meth:`linear_forward`; overriding them is an
    optimisation only and must give the same bits.
    """

    def prepare_linear(self, packed, wscale, zero, bias, act_scale, k, group_size,
                       fmt=WeightFormat.SYMMETRIC, policy=ActPolicy.DYNAMIC) -> PreparedLinear:
        """Check one layer's weights once and keep them for :meth:`linear_forward`.

        Args (the backend's arrays): packed uint8 [N, ceil(K/2)]; wscale float32 [N, ng];
        zero uint8 [N, ng] or None; bias float32 [N] or None; act_scale float32 [1] for the
        static policies (None for ``dynamic``); k, group_size, fmt as in ``w4a8_matmul``;
        policy: :class:`fptq.spec.ActPolicy`.
        Raises the backend's own ``ValueError``/``TypeError`` naming the bad argument.
        """
        fmt, policy = WeightFormat(fmt), ActPolicy(policy)
        k = int(k)
        if policy is ActPolicy.DYNAMIC:
            if act_scale is not None:
                raise ValueError("act_scale: the dynamic policy takes no static scale")
        elif act_scale is None:
            raise ValueError(f"act_scale: policy {policy.value} needs a static activation scale")
        qx0 = self.from_numpy(np.zeros((1, k), np.int8))
        if act_scale is not None:  # the backend's own checks of the scale, once
            self.quantize_act_per_tensor(self.from_numpy(np.zeros((1, k), np.float32)), act_scale)
        xs = act_scale if act_scale is not None else self.from_numpy(np.ones(1, np.float32))
        # one call of the backend's checked matmul validates every weight argument
        y = self.w4a8_matmul(qx0, xs, packed, wscale, zero, k, group_size, fmt, bias)
        n = int(np.shape(self.to_numpy(y))[1])
        g = spec.validate.check_group_size(group_size, k)
        return PreparedLinear(k, n, g, fmt, policy, packed, wscale, zero, bias, act_scale)

    def linear_forward(self, x, prepared: PreparedLinear):
        """``y = w4a8_matmul(quantize(x))`` for float32 x [M, K] per the prepared layer's policy."""
        if prepared.policy is ActPolicy.DYNAMIC:
            qx, xs = self.quantize_act_per_token(x)
        else:
            qx, xs = self.quantize_act_per_tensor(x, prepared.act_scale), prepared.act_scale
        return self.w4a8_matmul(qx, xs, prepared.packed, prepared.wscale, prepared.zero, prepared.k,
                                prepared.group_size, prepared.fmt, prepared.bias)


def _opt(fn, a):
    return None if a is None else fn(a)


class ReferenceFallback(LinearPath):
    """Mixin: every operation computed by the NumPy spec, crossing the boundary.

    A backend subclasses it and overrides the operations it accelerates; the
    rest stay correct (and slow), and the prepared-linear path
    (:class:`LinearPath`) comes with it. Subclasses define ``from_numpy``/``to_numpy``,
    and ``device``/``array_type`` when their arrays are not host NumPy arrays.
    """

    name = "reference-fallback"
    device = "cpu"
    array_type = np.ndarray

    def from_numpy(self, a):  # pragma: no cover - overridden
        return a

    def to_numpy(self, t):  # pragma: no cover - overridden
        return np.asarray(t)

    def describe(self) -> str:
        return f"{self.name} (numpy {np.__version__})"

    def _n(self, t):
        return _opt(self.to_numpy, t)

    def _b(self, a):
        return _opt(self.from_numpy, a)

    def act_scale_from_amax(self, amax):
        return self._b(spec.act_scale_from_amax(self._n(amax)))

    def quantize_act_per_tensor(self, x, scale):
        return self._b(spec.quantize_act_per_tensor(self._n(x), self._n(scale)))

    def quantize_act_per_token(self, x):
        q, s = spec.quantize_act_per_token(self._n(x))
        return self._b(q), self._b(s)

    def dequantize_act(self, q, scale):
        return self._b(spec.dequantize_act(self._n(q), self._n(scale)))

    def lae_scales(self, channel_max):
        return self._b(spec.lae_scales(self._n(channel_max)))

    def lae_apply_activation(self, x, s):
        return self._b(spec.lae_apply_activation(self._n(x), self._n(s)))

    def lae_apply_weight(self, w, s):
        return self._b(spec.lae_apply_weight(self._n(w), self._n(s)))

    def weight_scales(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        s, z = spec.weight_scales(self._n(w), group_size, fmt)
        return self._b(s), self._b(z)

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._b(spec.quantize_weight_with_scales(self._n(w), self._n(scale), self._n(zero), group_size, fmt))

    def quantize_weight(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        r = spec.quantize_weight(self._n(w), group_size, fmt)
        return spec.QuantizedWeight(self._b(r.q), self._b(r.scale), self._b(r.zero), r.group_size, r.fmt)

    def dequantize_weight(self, q, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._b(spec.dequantize_weight(self._n(q), self._n(scale), self._n(zero), group_size, fmt))

    def pack_int4(self, q, signed=True):
        return self._b(spec.pack_int4(self._n(q), signed))

    def unpack_int4(self, packed, k, signed=True):
        return self._b(spec.unpack_int4(self._n(packed), k, signed))

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._b(spec.w4a8_group_sums(self._n(qx), self._n(packed), self._n(zero), k, group_size, fmt))

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return self._b(spec.w4a8_epilogue(self._n(acc), self._n(wscale), self._n(xscale), self._n(bias)))

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        return self._b(spec.w4a8_matmul(self._n(qx), self._n(xscale), self._n(packed), self._n(wscale),
                                        self._n(zero), k, group_size, fmt, self._n(bias)))

    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        return self._b(spec.select_policies(self._n(v), v0, v1))
