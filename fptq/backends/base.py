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
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import spec
from ..spec import WeightFormat

__all__ = ["Backend", "BackendUnavailable", "ReferenceFallback", "OPERATIONS"]

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


def _opt(fn, a):
    return None if a is None else fn(a)


class ReferenceFallback:
    """Mixin: every operation computed by the NumPy spec, crossing the boundary.

    A backend subclasses it and overrides the operations it accelerates; the
    rest stay correct (and slow). Subclasses define ``from_numpy``/``to_numpy``.
    """

    name = "reference-fallback"

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
