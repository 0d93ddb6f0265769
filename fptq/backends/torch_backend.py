"""The ``torch`` and ``torch-cuda`` backends: the spec's primitives on torch tensors.

Every operation has the name, signature and semantics of the :mod:`fptq.spec`
function of the same name and returns the same bits (``lae_scales`` within
``spec.LAE_SCALE_ULP_TOLERANCE``; it computes log2 in float64 like the
reference, so it normally matches exactly). Tensors stay on the backend's
device: ``TorchBackend`` computes on the CPU, ``TorchCudaBackend`` on the
current CUDA device. ``from_numpy`` puts an array there, ``to_numpy`` brings a
tensor back. Every operation runs the spec's own check of the same name once
(:mod:`fptq.spec.validate` over :class:`fptq.backends.torch_arrays.TorchArrays`),
so it rejects exactly what the reference rejects, with the same exception and
message (a tensor on another device is a ``TypeError`` naming the argument),
then an unchecked implementation; results are never re-checked. The check
is :class:`fptq.backends.base.BackendBase`'s; this module supplies the hooks
``_<op>_unchecked`` (run without autograd recording: nothing here is
differentiable).

Float rules kept: every float op is one float32 torch kernel (IEEE division
``x / s``, never a reciprocal; ``torch.round`` is half to even; no fused
multiply-add: ``addcmul``/``torch.compile`` are not used), reductions are
only ``amax``/``amin`` (order-free).

The W4A8 matmul (:mod:`fptq.backends.torch_matmul`) computes int8 x int4 ->
int32 group sums with ``torch._int_mm`` where a start-up probe found it exact
on this device, else with an exact float64 product, then the pinned epilogue.
Besides the spec's primitives there is a hot path for models that keep a
weight for many calls::

    prep = backend.prepare_weight(packed, zero, k, group_size, fmt)   # unpack once
    y = backend.w4a8_matmul_prepared(qx, xscale, prep, wscale, bias)  # same bits as w4a8_matmul
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .. import spec
from ..spec import MIN_SCALE, WeightFormat, num_groups
from ..spec.formats import POLICY_CODES, ActPolicy, weight_format_spec
from .base import BackendBase, BackendUnavailable

try:
    import torch
except ImportError as _e:  # pragma: no cover - exercised only without torch
    torch = None
    _TORCH_ERROR = _e
else:
    from . import torch_matmul as MM
    from .torch_arrays import TorchArrays

__all__ = ["TorchBackend", "TorchCudaBackend"]


def _no_grad(fn):
    """Run an operation without autograd recording (nothing here is differentiable)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


class TorchBackend(BackendBase):
    """The spec on torch tensors, on the CPU.

    Args:
        int_mm: ``None`` (default) probes ``torch._int_mm`` at start-up and uses
            it if exact; ``False`` forces the exact float64 reference path for
            the integer core (tests compare the two); ``True`` uses ``_int_mm``
            without probing.
        shape: the padding/tiling rules of the integer core
            (:class:`fptq.backends.torch_matmul.IntMMShape`); default: the
            device's. Tests use it to force the tiled and fused epilogue paths.
    """

    name = "torch"

    def __init__(self, int_mm: bool | None = None, shape=None):
        if torch is None:
            raise BackendUnavailable(f"the {self.name} backend needs PyTorch: pip install torch "
                                     f"(CPU build: --index-url https://download.pytorch.org/whl/cpu); {_TORCH_ERROR}")
        self.device = self._select_device()
        self.xp = TorchArrays(self.device)
        self.array_type = torch.Tensor
        if shape is None:
            shape = MM.CUDA_INT_MM_SHAPE if self.device.type == "cuda" else MM.CPU_INT_MM_SHAPE
        self._shape = shape
        self._min_scale = torch.tensor(MIN_SCALE, dtype=torch.float32, device=self.device)
        # divisors are device tensors, never Python scalars: CUDA's div kernel turns
        # "tensor / CPU scalar" into a multiplication by the reciprocal (not IEEE x / s)
        self._divisor = {f.scale_divisor: torch.tensor(float(f.scale_divisor), dtype=torch.float32,
                                                       device=self.device)
                         for f in (spec.INT8_ACT, spec.INT4_SYM, spec.UINT4_ASYM)}
        if int_mm is None:
            self.int_mm_reason = MM.probe_int_mm(self.device, self._shape)
            self.use_int_mm = self.int_mm_reason is None
        else:
            self.use_int_mm = bool(int_mm)
            self.int_mm_reason = None if int_mm else "disabled by the caller (int_mm=False)"

    def _select_device(self):
        return torch.device("cpu")

    # -- boundary -------------------------------------------------------------------------
    def from_numpy(self, a) -> "torch.Tensor":
        """A copy of ``a`` as a tensor on this backend's device (dtype kept)."""
        return self.xp.asarray(np.asarray(a), "a")

    def to_numpy(self, t) -> np.ndarray:
        """A NumPy copy of a tensor (any device); array-likes pass through ``np.asarray``."""
        if isinstance(t, torch.Tensor):
            return t.detach().cpu().numpy().copy()
        return np.asarray(t)

    def describe(self) -> str:
        core = "torch._int_mm (probed exact)" if self.use_int_mm else f"float64 matmul ({self.int_mm_reason})"
        where = (f"cpu, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
                 if self.device.type == "cpu" else f"{self.device}: {torch.cuda.get_device_name(self.device)}")
        return f"torch {torch.__version__} on {where}; integer core: {core}"

    # -- small helpers ----------------------------------------------------------------------
    def _groups(self, t, g: int, fill: float = 0.0):
        """View t [N, K] as [N, ng, G'] (G' = min(G, K): one group when G > K, so memory stays
        O(N K) for any G), zero-padding the ragged last group."""
        n, k = t.shape
        g = max(min(g, k), 1)
        ng = num_groups(k, g)
        if ng * g != k:
            t = torch.nn.functional.pad(t, (0, ng * g - k), value=fill)
        return t.reshape(n, ng, g)

    def _quantize(self, x, scale):
        """``clip(rint(x / scale), -127, 127)`` as int8 (x / s may overflow to inf; the clip saturates)."""
        fmt = spec.INT8_ACT
        return torch.round(x / scale).clamp_(fmt.qmin, fmt.qmax).to(torch.int8)

    @staticmethod
    def _xs(xscale, m: int):
        """A checked activation scale of shape (), [1] or [M] as float32 [M]."""
        xs = xscale.reshape(-1)
        return xs if xs.shape[0] == m else xs.expand(m)

    # -- activations (spec section 2) ----------------------------------------------------------
    def _act_scale_from_amax_unchecked(self, amax):
        return torch.maximum(amax / self._divisor[spec.INT8_ACT.scale_divisor], self._min_scale)

    def _quantize_act_per_tensor_unchecked(self, x, scale):
        return self._quantize(x, scale.reshape([1] * x.dim()))

    def _quantize_act_per_token_unchecked(self, x):
        if x.shape[1] == 0:
            amax = torch.zeros(x.shape[0], dtype=torch.float32, device=self.device)
        else:
            amax = x.abs().amax(dim=1)
        scale = torch.maximum(amax / self._divisor[spec.INT8_ACT.scale_divisor], self._min_scale)
        return self._quantize(x, scale[:, None]), scale

    def _dequantize_act_unchecked(self, q, scale, per_token):
        return q.to(torch.float32) * (scale[:, None] if per_token else scale.reshape(()))

    # -- LAE (section 3) -------------------------------------------------------------------
    def _lae_scales_unchecked(self, m):
        t = m + 2.0                                             # one float32 add
        l2 = torch.log2(t.to(torch.float64)).to(torch.float32)  # as the reference: float64 log2, rounded once
        s = m / l2
        return torch.where(m < self._min_scale, torch.ones_like(s), s)

    def _lae_apply_activation_unchecked(self, x, s):
        return x / s[None, :]

    def _lae_apply_weight_unchecked(self, w, s):
        return w * s[None, :]

    # -- weights (section 4) -----------------------------------------------------------------
    def _weight_scales_unchecked(self, w, g, fmt):
        fs = weight_format_spec(fmt)
        wg = self._groups(w, g)
        n, ng = wg.shape[0], wg.shape[1]
        if fmt is WeightFormat.SYMMETRIC:
            amax = wg.abs().amax(dim=2) if ng else torch.zeros((n, 0), dtype=torch.float32, device=self.device)
            return torch.maximum(amax / self._divisor[fs.scale_divisor], self._min_scale), None
        if ng == 0:
            return (torch.zeros((n, 0), dtype=torch.float32, device=self.device),
                    torch.zeros((n, 0), dtype=torch.uint8, device=self.device))
        zero_f = torch.zeros((), dtype=torch.float32, device=self.device)
        lo = torch.minimum(wg.amin(dim=2), zero_f)
        hi = torch.maximum(wg.amax(dim=2), zero_f)
        scale = torch.maximum((hi - lo) / self._divisor[fs.scale_divisor], self._min_scale)  # inf: overflowed
        zero = torch.round(-lo / scale).clamp_(fs.qmin, fs.qmax).to(torch.uint8)
        return scale, zero

    def _quantize_weight_with_scales_unchecked(self, w, scale, zero, g, fmt):
        fs = weight_format_spec(fmt)
        n, k = w.shape
        wg = self._groups(w, g)
        y = torch.round(wg / scale[:, :, None])
        if zero is not None:
            y = y + zero.to(torch.float32)[:, :, None]
        return y.clamp_(fs.qmin, fs.qmax).to(torch.int8).reshape(n, wg.shape[1] * wg.shape[2])[:, :k].contiguous()

    def _dequantize_weight_unchecked(self, q, scale, zero, g, fmt):
        n, k = q.shape
        qi = self._groups(q.to(torch.int32), g)
        if zero is not None:
            qi = qi - zero.to(torch.int32)[:, :, None]
        return (qi.to(torch.float32) * scale[:, :, None]).reshape(n, qi.shape[1] * qi.shape[2])[:, :k].contiguous()

    # -- packing (section 5) -------------------------------------------------------------------
    def _pack_int4_unchecked(self, q, signed):
        nib = q.view(torch.uint8) & spec.formats.NIBBLE_MASK
        if q.shape[1] % 2:
            nib = torch.nn.functional.pad(nib, (0, 1))
        return nib[:, 0::2] | (nib[:, 1::2] << spec.formats.NIBBLE_BITS)

    def _unpack_int4_unchecked(self, packed, k, signed):
        return MM._unpack_nibbles(packed, signed).view(packed.shape[0], 2 * packed.shape[1])[:, :k].contiguous()

    # -- matmul (section 6) ----------------------------------------------------------------------
    def _w4a8_group_sums_unchecked(self, qx, packed, zero, k, g, fmt):
        prep = MM.prepare_weight(packed, zero, k, g, fmt, self._shape)
        return MM.group_sums(qx, prep, self.use_int_mm)

    def _w4a8_epilogue_unchecked(self, acc, wscale, xscale, bias):
        return MM.epilogue(acc, wscale, self._xs(xscale, acc.shape[0]), bias)

    def _w4a8_matmul_unchecked(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias=None):
        prep = MM.prepare_weight(packed, zero, k, g, fmt, self._shape)
        return MM.matmul_prepared(qx, self._xs(xscale, qx.shape[0]), prep, MM.scales_transposed(wscale, prep),
                                  bias, self.use_int_mm)

    # -- the prepared-weight hot path (not a spec primitive) ------------------------------------
    @_no_grad
    def prepare_weight(self, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC) -> "MM.PreparedWeight":
        """Unpack a packed INT4 weight once for :meth:`w4a8_matmul_prepared`.

        Same arguments and checks as :meth:`w4a8_matmul`'s weight side. Returns a
        :class:`fptq.backends.torch_matmul.PreparedWeight`: int8 [ng, N, G]
        group-major (``q`` or ``q - z``), about N*K bytes on this device.
        """
        packed, zero, k, g, fmt = self._check("packed_weight", packed, zero, k, group_size, fmt, "prepare_weight")
        return MM.prepare_weight(packed, zero, k, g, fmt, self._shape)

    @_no_grad
    def w4a8_matmul_prepared(self, qx, xscale, prepared, wscale, bias=None):
        """``w4a8_matmul(qx, xscale, packed, wscale, zero, k, G, fmt, bias)`` with the weight
        from :meth:`prepare_weight`: the same float32 [M, N] bits, without unpacking per call.

        ``wscale`` float32 [N, ng] and ``bias`` float32 [N] are checked on first use and
        cached in ``prepared`` while the same tensors are passed unmodified.
        """
        op = "w4a8_matmul_prepared"
        if not isinstance(prepared, MM.PreparedWeight):
            raise TypeError(f"prepared: expected the result of prepare_weight, got {type(prepared).__name__}")
        if prepared.device != self.device or prepared.shape != self._shape:
            raise ValueError(f"prepared: made for {prepared.device}, but this backend computes on {self.device}")
        qx, xscale = self._check("activation_side", qx, xscale, prepared.k, op)
        xs = self._xs(xscale, qx.shape[0])
        ws_t = prepared.cached("wscale", wscale if isinstance(wscale, torch.Tensor) else None,
                               lambda t: MM.scales_transposed(
                                   self._check("weight_scale_side", wscale, prepared.n, prepared.ng, op), prepared))
        b = prepared.cached("bias", bias if isinstance(bias, torch.Tensor) else None,
                            lambda t: self._check("bias_side", bias, prepared.n, op))
        return MM.matmul_prepared(qx, xs, prepared, ws_t, b, self.use_int_mm)

    # -- a model's prepared linear (fptq.backends.base.BackendBase) -----------------------------
    def _prepare_kernel(self, prep):
        """The weight unpacked once (:func:`fptq.backends.torch_matmul.prepare_weight`) and its scales
        transposed for the integer core."""
        w = MM.prepare_weight(prep.packed, prep.zero, prep.k, prep.group_size, prep.fmt, self._shape)
        return w, MM.scales_transposed(prep.wscale, w)

    def _linear_forward_unchecked(self, x, prepared):
        """The quantizer's hook, then the integer core on the prepared weight."""
        if prepared.policy is spec.ActPolicy.DYNAMIC:
            qx, xs = self._quantize_act_per_token_unchecked(x)
        else:
            qx = self._quantize_act_per_tensor_unchecked(x, prepared.act_scale)
            xs = prepared.act_scale.reshape(-1).expand(qx.shape[0])
        w, ws_t = prepared.kernel
        return MM.matmul_prepared(qx, xs, w, ws_t, prepared.bias, self.use_int_mm)

    # -- policy (section 7) ------------------------------------------------------------------------
    def _select_policies_unchecked(self, v, t0, t1):
        code = {p: torch.tensor(c, dtype=torch.uint8, device=self.device) for p, c in POLICY_CODES.items()}
        return torch.where(v < float(t0), code[ActPolicy.STATIC],
                           torch.where(v < float(t1), code[ActPolicy.LAE_STATIC], code[ActPolicy.DYNAMIC]))


class TorchCudaBackend(TorchBackend):
    """The spec on torch tensors on the current CUDA device (cuBLASLt int8 for the integer core).

    Raises :class:`BackendUnavailable` when torch sees no CUDA device.
    """

    name = "torch-cuda"

    def _select_device(self):
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"torch-cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False; "
                f"built with CUDA {torch.version.cuda or 'none: this is a CPU-only build'})")
        return torch.device("cuda", torch.cuda.current_device())


def _hooks_without_autograd(cls) -> None:
    """Every compute hook of ``cls`` runs under ``torch.no_grad()`` (nothing here is differentiable)."""
    from .base import OPERATIONS

    for name in [f"_{op}_unchecked" for op in OPERATIONS] + ["_linear_forward_unchecked", "_prepare_kernel"]:
        if name in vars(cls):
            setattr(cls, name, _no_grad(vars(cls)[name]))


if torch is not None:
    _hooks_without_autograd(TorchBackend)
