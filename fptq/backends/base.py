"""The backend interface and the one base class every backend derives from (einops style).

A backend is a small class with a ``name`` that imports its framework in
``__init__`` (raising :class:`BackendUnavailable` with the reason when it
cannot start) and supplies the spec's primitives on its own array type.
``from_numpy`` / ``to_numpy`` are the only boundary the conformance suite
crosses: it converts the spec's inputs with ``from_numpy``, calls the
operation, and compares ``to_numpy`` of the result with the reference, exactly.

**The operations** (:data:`OPERATIONS`, derived from :mod:`fptq.spec`: each
public function of the spec that has an argument check of the same name in
:mod:`fptq.spec.validate`) have the signature and semantics of the spec
function of the same name (``docs/spec.md``); ``None`` stands for "no zero
point" / "no bias".

**The base class** :class:`BackendBase` writes each operation once: it runs
the spec's check of the same name over the backend's array adapter ``xp``
(:mod:`fptq.spec.arrays`; NumPy's by default) and hands the checked arguments
to the backend's hook ``_<op>_unchecked`` (see :data:`HOOKS` for what each
hook receives). A hook is never re-checked and its result is never checked
again. Every hook has a default computed by the spec on NumPy copies
(``to_numpy`` in, ``from_numpy`` out), so a new backend overrides only the
hooks it accelerates.

**What a model needs** besides the primitives (what
:class:`fptq.models.qlinear.W4A8Linear` uses, the same way for every backend):

* ``device`` (where the arrays live: ``"cpu"``, ``cuda:0``...) and
  ``array_type`` (their class): a backend whose ``array_type`` is
  ``torch.Tensor`` is handed the model's tensors on its ``device``, any other
  NumPy arrays through ``from_numpy``/``to_numpy``;
* ``prepare_linear(packed, wscale, zero, bias, act_scale, k, group_size, fmt,
  policy)``: checks one layer's weights once and returns a
  :class:`PreparedLinear` (its ``kernel`` field holds whatever a backend
  prepared, hook ``_prepare_kernel``);
* ``linear_forward(x, prepared)``: checks ``x`` once and returns
  ``w4a8_matmul(quantize(x))`` per the layer's policy (hook
  ``_linear_forward_unchecked``), with the same bits as the public operations;
* ``linear_forward_finite(x, prepared) -> (y, finite)``: the same and whether
  ``y`` is all finite (a loaded model refuses NaN/Inf outputs); by default a
  scan of ``y``, a kernel that scans its output anyway overrides it.

:class:`Backend` (a ``Protocol``) names all of it; :data:`MEMBERS` is its list,
which the registry checks on every backend it starts.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import spec
from ..spec import ActPolicy, WeightFormat
from ..spec import validate as V
from ..spec.arrays import NUMPY
from ..spec.rules import cite, finite, float_array, ndim, one_scale, positive
from . import _spec_hooks as S

__all__ = ["Backend", "BackendBase", "BackendUnavailable", "PreparedLinear", "OPERATIONS", "MEMBERS", "HOOKS",
           "check_act_scale", "missing_members"]

#: The operations every backend provides: the spec's public functions that have a check of the
#: same name in fptq.spec.validate, in validate's order (the conformance suite tests each one).
OPERATIONS = tuple(n for n in V.__all__ if n in spec.__all__ and inspect.isfunction(getattr(spec, n)))

#: The unchecked hook of each operation (``_<op>_unchecked``) and what the base class passes it.
HOOKS = {
    "act_scale_from_amax": "(amax)",
    "quantize_act_per_tensor": "(x, scale)",
    "quantize_act_per_token": "(x) -> (q, scale)",
    "dequantize_act": "(q, scale, per_token)",
    "lae_scales": "(channel_max)",
    "lae_apply_activation": "(x, s)",
    "lae_apply_weight": "(w, s)",
    "weight_scales": "(w, G, fmt) -> (scale, zero)",
    "quantize_weight_with_scales": "(w, scale, zero, G, fmt)",
    "quantize_weight": "(w, G, fmt) -> QuantizedWeight (default: the two above)",
    "dequantize_weight": "(q, scale, zero, G, fmt)",
    "pack_int4": "(q, signed)",
    "unpack_int4": "(packed, k, signed)",
    "w4a8_group_sums": "(qx, packed, zero, k, G, fmt)",
    "w4a8_epilogue": "(acc, wscale, xscale, bias)",
    "w4a8_matmul": "(qx, xscale, packed, wscale, zero, k, G, fmt, bias)",
    "select_policies": "(v, t0, t1)",
}


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
    # what a model needs (not spec primitives; see the module docstring)
    def prepare_linear(self, packed, wscale, zero, bias, act_scale, k: int, group_size: int,
                       fmt: WeightFormat = WeightFormat.SYMMETRIC, policy: ActPolicy = ActPolicy.DYNAMIC) -> Any: ...
    def linear_forward(self, x, prepared) -> Any: ...
    def linear_forward_finite(self, x, prepared) -> tuple[Any, bool]: ...


#: Every attribute and method of :class:`Backend`, read off the Protocol itself.
MEMBERS = tuple([*Backend.__annotations__,
                 *(n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_"))])


def missing_members(backend) -> list[str]:
    """The members of :class:`Backend` that ``backend`` lacks (a method must be callable)."""
    methods = set(MEMBERS) - set(Backend.__annotations__)
    return [m for m in MEMBERS if not hasattr(backend, m) or (m in methods and not callable(getattr(backend, m)))]


def check_act_scale(policy, act_scale) -> ActPolicy:
    """The one rule tying a policy to its static scale: ``dynamic`` takes none, the static ones need one.
    Returns the policy as the enum; raises ValueError naming ``act_scale``."""
    policy = ActPolicy(policy)
    if policy is ActPolicy.DYNAMIC and act_scale is not None:
        raise ValueError("act_scale: the dynamic policy takes no static scale [docs/spec.md §7]")
    if policy is not ActPolicy.DYNAMIC and act_scale is None:
        raise ValueError(f"act_scale: policy {policy.value} needs a static activation scale [docs/spec.md §7]")
    return policy


@dataclass(frozen=True)
class PreparedLinear:
    """One linear layer's W4A8 weights on a backend, checked once (:meth:`BackendBase.prepare_linear`).

    ``packed``, ``wscale``, ``zero``, ``bias``, ``act_scale`` are the checked arrays of the backend
    (``zero``, ``bias``, ``act_scale`` may be None); ``kernel`` holds whatever else a backend
    prepared (an unpacked weight, a re-laid-out copy...), None by default.
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


class BackendBase(S.SpecHooks):
    """The base class of every backend: each operation checked once, then its unchecked hook.

    Subclasses set ``name`` (and ``device``, ``array_type``, ``xp`` when their arrays are not host
    NumPy arrays), define ``from_numpy``/``to_numpy``, and override the hooks ``_<op>_unchecked``
    they accelerate (:data:`HOOKS`); the defaults compute with the spec (:class:`SpecHooks`).
    """

    name = "base"
    device = "cpu"
    array_type = np.ndarray
    #: The array adapter the spec's checks read this backend's arrays with (fptq.spec.arrays).
    xp = NUMPY

    def from_numpy(self, a):
        return np.asarray(a)

    def to_numpy(self, t) -> np.ndarray:
        return np.asarray(t)

    def describe(self) -> str:
        return f"{self.name} (numpy {np.__version__})"

    def _check(self, op: str, *args):
        """``fptq.spec.validate.<op>(self.xp, *args)``: the one place a backend's arguments are checked."""
        return getattr(V, op)(self.xp, *args)

    # ------------------------------------------------------------------ activations (section 2)
    def act_scale_from_amax(self, amax):
        return self._act_scale_from_amax_unchecked(self._check("act_scale_from_amax", amax))

    def quantize_act_per_tensor(self, x, scale):
        return self._quantize_act_per_tensor_unchecked(*self._check("quantize_act_per_tensor", x, scale))

    def quantize_act_per_token(self, x):
        return self._quantize_act_per_token_unchecked(self._check("quantize_act_per_token", x))

    def dequantize_act(self, q, scale):
        return self._dequantize_act_unchecked(*self._check("dequantize_act", q, scale))

    # ------------------------------------------------------------------ LAE (section 3)
    def lae_scales(self, channel_max):
        return self._lae_scales_unchecked(self._check("lae_scales", channel_max))

    def lae_apply_activation(self, x, s):
        return self._lae_apply_activation_unchecked(*self._check("lae_apply_activation", x, s))

    def lae_apply_weight(self, w, s):
        return self._lae_apply_weight_unchecked(*self._check("lae_apply_weight", w, s))

    # ------------------------------------------------------------------ weights (section 4)
    def weight_scales(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._weight_scales_checked_range(*self._check("weight_scales", w, group_size, fmt))

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._quantize_weight_with_scales_unchecked(
            *self._check("quantize_weight_with_scales", w, scale, zero, group_size, fmt))

    def quantize_weight(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._quantize_weight_unchecked(*self._check("quantize_weight", w, group_size, fmt))

    def dequantize_weight(self, q, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._dequantize_weight_unchecked(*self._check("dequantize_weight", q, scale, zero, group_size, fmt))

    def _weight_scales_checked_range(self, w, g, fmt):
        """``_weight_scales_unchecked``, then the one check of its result: an asymmetric scale is
        infinite exactly when its group's range overflowed float32 (spec.weights.RANGE_OVERFLOW)."""
        scale, zero = self._weight_scales_unchecked(w, g, fmt)
        if fmt is WeightFormat.ASYMMETRIC and self.xp.first_true(~self.xp.isfinite(scale)) is not None:
            raise ValueError(spec.weights.RANGE_OVERFLOW)
        return scale, zero

    def _quantize_weight_unchecked(self, w, g, fmt):
        scale, zero = self._weight_scales_checked_range(w, g, fmt)
        return spec.QuantizedWeight(self._quantize_weight_with_scales_unchecked(w, scale, zero, g, fmt),
                                    scale, zero, g, fmt)

    # ------------------------------------------------------------------ packing (section 5)
    def pack_int4(self, q, signed=True):
        return self._pack_int4_unchecked(self._check("pack_int4", q, signed), bool(signed))

    def unpack_int4(self, packed, k, signed=True):
        return self._unpack_int4_unchecked(*self._check("unpack_int4", packed, k, signed), bool(signed))

    # ------------------------------------------------------------------ matmul (section 6)
    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._w4a8_group_sums_unchecked(*self._check("w4a8_group_sums", qx, packed, zero, k, group_size, fmt))

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return self._w4a8_epilogue_unchecked(*self._check("w4a8_epilogue", acc, wscale, xscale, bias))

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        return self._w4a8_matmul_unchecked(
            *self._check("w4a8_matmul", qx, xscale, packed, wscale, zero, k, group_size, fmt, bias))

    # ------------------------------------------------------------------ policy (section 7)
    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        return self._select_policies_unchecked(*self._check("select_policies", v, v0, v1))

    # ------------------------------------------------------------------ what a model needs
    def prepare_linear(self, packed, wscale, zero, bias, act_scale, k, group_size,
                       fmt=WeightFormat.SYMMETRIC, policy=ActPolicy.DYNAMIC) -> PreparedLinear:
        """Check one layer's weights once and keep them for :meth:`linear_forward`.

        Args (the backend's arrays): packed uint8 [N, ceil(K/2)]; wscale float32 [N, ng];
        zero uint8 [N, ng] or None; bias float32 [N] or None; act_scale float32 [1] for the
        static policies (None for ``dynamic``); k, group_size, fmt as in ``w4a8_matmul``;
        policy: :class:`fptq.spec.ActPolicy`. The checks are ``w4a8_matmul``'s for the weight
        side (``op`` ``prepare_linear`` in the messages). The hook ``_prepare_kernel(prepared)``
        returns the backend's own prepared form (``PreparedLinear.kernel``; None by default).
        """
        op = "prepare_linear"
        policy = check_act_scale(policy, act_scale)
        packed, zero, k, g, fmt = self._check("packed_weight", packed, zero, k, group_size, fmt, op)
        n = self.xp.shape(packed)[0]
        wscale = self._check("weight_scale_side", wscale, n, spec.num_groups(k, g), op)
        bias = self._check("bias_side", bias, n, op)
        if act_scale is not None:
            act_scale = float_array(self.xp, act_scale, "act_scale", op)
            one_scale(self.xp, act_scale, "act_scale", op)
            positive(self.xp, act_scale, "act_scale", op)
        prep = PreparedLinear(k, n, g, fmt, policy, packed, wscale, zero, bias, act_scale)
        kernel = self._prepare_kernel(prep)
        return prep if kernel is None else dataclasses.replace(prep, kernel=kernel)

    def _prepare_kernel(self, prepared: PreparedLinear):
        """Hook: the backend's own prepared form of a checked layer (None: the default path)."""
        return None

    def _check_linear_x(self, x, prepared: PreparedLinear):
        """The one check of a model's input ``x``: float32 [M, K] (other real dtypes converted), finite.
        The messages are the layer's quantizer's (``x`` is its argument), as the spec words them."""
        op = "quantize_act_per_token" if prepared.policy is ActPolicy.DYNAMIC else "quantize_act_per_tensor"
        x = float_array(self.xp, x, "x", op)
        ndim(self.xp, x, 2, "x", op)
        if self.xp.shape(x)[1] != prepared.k:
            raise ValueError(f"x: expected K={prepared.k} columns to match the layer, got shape "
                             f"{self.xp.shape(x)}{cite(op)}")
        finite(self.xp, x, "x", op)
        return x

    def linear_forward(self, x, prepared: PreparedLinear):
        """``y = w4a8_matmul(quantize(x))`` for x [M, K] per the prepared layer's policy; x checked once."""
        return self._linear_forward_unchecked(self._check_linear_x(x, prepared), prepared)

    def linear_forward_finite(self, x, prepared: PreparedLinear):
        """``(linear_forward(x, prepared), whether the output is all finite)``."""
        y = self.linear_forward(x, prepared)
        return y, self.xp.first_true(~self.xp.isfinite(y)) is None

    def _linear_forward_unchecked(self, x, prepared: PreparedLinear):
        """Hook: the forward of a checked ``x``: the quantizer's and the matmul's unchecked hooks."""
        if prepared.policy is ActPolicy.DYNAMIC:
            qx, xs = self._quantize_act_per_token_unchecked(x)
        else:
            qx, xs = self._quantize_act_per_tensor_unchecked(x, prepared.act_scale), prepared.act_scale
        return self._w4a8_matmul_unchecked(qx, xs, prepared.packed, prepared.wscale, prepared.zero, prepared.k,
                                           prepared.group_size, prepared.fmt, prepared.bias)

