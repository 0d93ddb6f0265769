"""The ``torch`` and ``torch-cuda`` backends: the spec's primitives on torch tensors.

Every operation has the name, signature and semantics of the :mod:`fptq.spec`
function of the same name and returns the same bits (``lae_scales`` within
``spec.LAE_SCALE_ULP_TOLERANCE``; it computes log2 in float64 like the
reference, so it normally matches exactly). Tensors stay on the backend's
device: ``TorchBackend`` computes on the CPU, ``TorchCudaBackend`` on the
current CUDA device. ``from_numpy`` puts an array there, ``to_numpy`` brings a
tensor back. A tensor on another device, a wrong dtype or shape, or NaN/Inf is
refused with a ``ValueError``/``TypeError`` naming the argument
(:mod:`fptq.backends.torch_checks`).

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

import functools

import numpy as np

from .. import spec
from ..spec import MIN_SCALE, WeightFormat, num_groups
from ..spec.formats import weight_format_spec
from ..spec.policy import policy_thresholds
from ..spec.validate import check_group_size, check_k
from .base import BackendUnavailable

try:
    import torch
except ImportError as _e:  # pragma: no cover - exercised only without torch
    torch = None
    _TORCH_ERROR = _e
else:
    from . import torch_checks as C
    from . import torch_matmul as MM

__all__ = ["TorchBackend", "TorchCudaBackend"]


def _no_grad(fn):
    """Run an operation without autograd recording (nothing here is differentiable)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


class TorchBackend:
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
        return C.as_tensor(np.asarray(a), "a", self.device)

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
    def _f32(self, x, name):
        return C.as_float32(x, name, self.device)

    def _int(self, x, dtype, name):
        return C.check_dtype(x, dtype, name, self.device)

    def _groups(self, t, g: int, fill: float = 0.0):
        """View t [N, K] as [N, ng, G], zero-padding the ragged last group."""
        n, k = t.shape
        ng = num_groups(k, g)
        if ng * g != k:
            t = torch.nn.functional.pad(t, (0, ng * g - k), value=fill)
        return t.reshape(n, ng, g)

    def _zero(self, zero, n: int, ng: int, fmt):
        """Zero points as the spec checks them: uint8 [N, ng] in [0, 15] (asymmetric), None (symmetric)."""
        return C.check_zero_points(zero, (n, ng), WeightFormat(fmt) is WeightFormat.ASYMMETRIC, self.device)

    def _quantize(self, x, scale):
        """``clip(rint(x / scale), -127, 127)`` as int8 (x / s may overflow to inf; the clip saturates)."""
        fmt = spec.INT8_ACT
        return torch.round(x / scale).clamp_(fmt.qmin, fmt.qmax).to(torch.int8)

    def _xscale(self, xscale, m: int):
        xs = self._f32(xscale, "xscale").reshape(-1)
        C.check_positive_scale(xs, "xscale")
        if xs.shape[0] == 1:
            return xs.expand(m)
        if xs.shape[0] != m:
            raise ValueError(f"xscale: expected one scale or {m} per-token scales, got shape {tuple(xs.shape)}")
        return xs

    def _bias(self, bias, n: int):
        if bias is None:
            return None
        b = self._f32(bias, "bias")
        C.check_shape(b, (n,), "bias")
        return b

    # -- activations (spec section 2) ----------------------------------------------------------
    @_no_grad
    def act_scale_from_amax(self, amax):
        amax = self._f32(amax, "amax")
        C.check_nonnegative(amax, "amax")
        return torch.maximum(amax / self._divisor[spec.INT8_ACT.scale_divisor], self._min_scale)

    @_no_grad
    def quantize_act_per_tensor(self, x, scale):
        x = self._f32(x, "x")
        scale = self._f32(scale, "scale").reshape(-1)
        if scale.shape != (1,):
            raise ValueError(f"scale: per-tensor quantization takes one scale, got shape {tuple(scale.shape)}")
        C.check_positive_scale(scale, "scale")
        return self._quantize(x, scale.reshape([1] * x.dim()))

    @_no_grad
    def quantize_act_per_token(self, x):
        x = self._f32(x, "x")
        C.check_ndim(x, 2, "x")
        if x.shape[1] == 0:
            amax = torch.zeros(x.shape[0], dtype=torch.float32, device=self.device)
        else:
            amax = x.abs().amax(dim=1)
        scale = torch.maximum(amax / self._divisor[spec.INT8_ACT.scale_divisor], self._min_scale)
        return self._quantize(x, scale[:, None]), scale

    @_no_grad
    def dequantize_act(self, q, scale):
        q = self._int(q, torch.int8, "q")
        scale = self._f32(scale, "scale")
        C.check_positive_scale(scale, "scale")
        if scale.dim() == 1 and scale.shape[0] != 1:
            C.check_ndim(q, 2, "q")
            if scale.shape[0] != q.shape[0]:
                raise ValueError(f"scale: expected shape ({q.shape[0]},) for q of shape {tuple(q.shape)}, "
                                 f"got {tuple(scale.shape)}")
            scale = scale[:, None]
        elif scale.dim() > 1:
            raise ValueError(f"scale: expected a scalar or a 1-D per-row scale, got shape {tuple(scale.shape)}")
        return q.to(torch.float32) * scale

    # -- LAE (section 3) -------------------------------------------------------------------
    @_no_grad
    def lae_scales(self, channel_max):
        m = self._f32(channel_max, "channel_max")
        C.check_ndim(m, 1, "channel_max")
        C.check_nonnegative(m, "channel_max")
        t = m + 2.0                                             # one float32 add
        l2 = torch.log2(t.to(torch.float64)).to(torch.float32)  # as the reference: float64 log2, rounded once
        s = m / l2
        return torch.where(m < self._min_scale, torch.ones_like(s), s)

    def _lae_s(self, s, k: int):
        s = self._f32(s, "s")
        C.check_ndim(s, 1, "s")
        if s.shape[0] != k:
            raise ValueError(f"s: expected {k} channel scales, got {s.shape[0]}")
        C.check_positive_scale(s, "s")
        return s

    @_no_grad
    def lae_apply_activation(self, x, s):
        x = self._f32(x, "x")
        C.check_ndim(x, 2, "x")
        return x / self._lae_s(s, x.shape[1])[None, :]

    @_no_grad
    def lae_apply_weight(self, w, s):
        w = self._f32(w, "w")
        C.check_ndim(w, 2, "w")
        return w * self._lae_s(s, w.shape[1])[None, :]

    # -- weights (section 4) -----------------------------------------------------------------
    @_no_grad
    def weight_scales(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        w = self._f32(w, "w")
        C.check_ndim(w, 2, "w")
        fs = weight_format_spec(fmt)
        g = check_group_size(group_size, w.shape[1])
        wg = self._groups(w, g)
        n, ng = wg.shape[0], wg.shape[1]
        if WeightFormat(fmt) is WeightFormat.SYMMETRIC:
            amax = wg.abs().amax(dim=2) if ng else torch.zeros((n, 0), dtype=torch.float32, device=self.device)
            return torch.maximum(amax / self._divisor[fs.scale_divisor], self._min_scale), None
        if ng == 0:
            return (torch.zeros((n, 0), dtype=torch.float32, device=self.device),
                    torch.zeros((n, 0), dtype=torch.uint8, device=self.device))
        zero_f = torch.zeros((), dtype=torch.float32, device=self.device)
        lo = torch.minimum(wg.amin(dim=2), zero_f)
        hi = torch.maximum(wg.amax(dim=2), zero_f)
        span = hi - lo
        if not bool(torch.isfinite(span).all()):
            raise ValueError("w: a group's range max - min overflows float32")
        scale = torch.maximum(span / self._divisor[fs.scale_divisor], self._min_scale)
        zero = torch.round(-lo / scale).clamp_(fs.qmin, fs.qmax).to(torch.uint8)
        return scale, zero

    @_no_grad
    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        w = self._f32(w, "w")
        C.check_ndim(w, 2, "w")
        fs = weight_format_spec(fmt)
        n, k = w.shape
        g = check_group_size(group_size, k)
        ng = num_groups(k, g)
        scale = self._f32(scale, "scale")
        C.check_shape(scale, (n, ng), "scale")
        C.check_positive_scale(scale, "scale")
        y = torch.round(self._groups(w, g) / scale[:, :, None])
        zero = self._zero(zero, n, ng, fmt)
        if zero is not None:
            y = y + zero.to(torch.float32)[:, :, None]
        return y.clamp_(fs.qmin, fs.qmax).to(torch.int8).reshape(n, ng * g)[:, :k].contiguous()

    def quantize_weight(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        w = self._f32(w, "w")
        C.check_ndim(w, 2, "w")
        g = check_group_size(group_size, w.shape[1])
        scale, zero = self.weight_scales(w, g, fmt)
        q = self.quantize_weight_with_scales(w, scale, zero, g, fmt)
        return spec.QuantizedWeight(q, scale, zero, g, WeightFormat(fmt))

    @_no_grad
    def dequantize_weight(self, q, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        q = self._int(q, torch.int8, "q")
        C.check_ndim(q, 2, "q")
        n, k = q.shape
        g = check_group_size(group_size, k)
        ng = num_groups(k, g)
        scale = self._f32(scale, "scale")
        C.check_shape(scale, (n, ng), "scale")
        C.check_positive_scale(scale, "scale")
        qi = self._groups(q.to(torch.int32), g)
        zero = self._zero(zero, n, ng, fmt)
        if zero is not None:
            qi = qi - zero.to(torch.int32)[:, :, None]
        return (qi.to(torch.float32) * scale[:, :, None]).reshape(n, ng * g)[:, :k].contiguous()

    # -- packing (section 5) -------------------------------------------------------------------
    @_no_grad
    def pack_int4(self, q, signed=True):
        q = self._int(q, torch.int8, "q")
        C.check_ndim(q, 2, "q")
        fs = spec.INT4_SYM if signed else spec.UINT4_ASYM
        if q.numel():
            lo, hi = int(q.min()), int(q.max())
            if lo < fs.storage_min or hi > fs.storage_max:
                raise ValueError(f"q: values must be in [{fs.storage_min}, {fs.storage_max}] for "
                                 f"{'signed' if signed else 'unsigned'} INT4, got [{lo}, {hi}]")
        nib = q.view(torch.uint8) & 0x0F
        if q.shape[1] % 2:
            nib = torch.nn.functional.pad(nib, (0, 1))
        return nib[:, 0::2] | (nib[:, 1::2] << 4)

    @_no_grad
    def unpack_int4(self, packed, k, signed=True):
        packed = self._int(packed, torch.uint8, "packed")
        C.check_ndim(packed, 2, "packed")
        k = check_k(k)
        self._check_width(packed, k)
        return MM._unpack_nibbles(packed, signed).view(packed.shape[0], 2 * packed.shape[1])[:, :k].contiguous()

    @staticmethod
    def _check_width(packed, k):
        if packed.shape[1] != spec.packed_width(k):
            raise ValueError(f"packed: expected {spec.packed_width(k)} bytes per row for K={k}, "
                             f"got {packed.shape[1]}")

    # -- matmul (section 6) ----------------------------------------------------------------------
    def _check_weight(self, packed, zero, k, group_size, fmt):
        """Checks shared by the matmul entry points; returns (packed, zero, k, G, fmt)."""
        k = check_k(k)
        g = check_group_size(group_size, k)
        fmt = WeightFormat(fmt)
        packed = self._int(packed, torch.uint8, "packed")
        C.check_ndim(packed, 2, "packed")
        self._check_width(packed, k)
        zero = self._zero(zero, packed.shape[0], num_groups(k, g), fmt)
        return packed, zero, k, g, fmt

    def _check_qx(self, qx, k):
        qx = self._int(qx, torch.int8, "qx")
        C.check_ndim(qx, 2, "qx")
        if qx.shape[1] != k:
            raise ValueError(f"qx: expected K={k} columns to match the weight, got shape {tuple(qx.shape)}")
        return qx

    def _check_wscale(self, wscale, n, ng):
        ws = self._f32(wscale, "wscale")
        C.check_shape(ws, (n, ng), "wscale")
        C.check_positive_scale(ws, "wscale")
        return ws

    @_no_grad
    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        k = check_k(k)
        check_group_size(group_size, k)
        qx = self._check_qx(qx, k)
        packed, zero, k, g, fmt = self._check_weight(packed, zero, k, group_size, fmt)
        prep = MM.prepare_weight(packed, zero, k, g, fmt, self._shape)
        return MM.group_sums(qx, prep, self.use_int_mm)

    @_no_grad
    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        acc = self._int(acc, torch.int32, "acc")
        C.check_ndim(acc, 3, "acc")
        m, n, ng = acc.shape
        ws = self._check_wscale(wscale, n, ng)
        xs = self._xscale(xscale, m)
        return MM.epilogue(acc, ws, xs, self._bias(bias, n))

    @_no_grad
    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        k = check_k(k)
        check_group_size(group_size, k)
        qx = self._check_qx(qx, k)
        packed, zero, k, g, fmt = self._check_weight(packed, zero, k, group_size, fmt)
        prep = MM.prepare_weight(packed, zero, k, g, fmt, self._shape)
        ws = self._check_wscale(wscale, prep.n, prep.ng)
        xs = self._xscale(xscale, qx.shape[0])
        return MM.matmul_prepared(qx, xs, prep, MM.scales_transposed(ws, prep), self._bias(bias, prep.n),
                                  self.use_int_mm)

    # -- the prepared-weight hot path (not a spec primitive) ------------------------------------
    @_no_grad
    def prepare_weight(self, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC) -> "MM.PreparedWeight":
        """Unpack a packed INT4 weight once for :meth:`w4a8_matmul_prepared`.

        Same arguments and checks as :meth:`w4a8_matmul`'s weight side. Returns a
        :class:`fptq.backends.torch_matmul.PreparedWeight`: int8 [ng, N, G]
        group-major (``q`` or ``q - z``), about N*K bytes on this device.
        """
        packed, zero, k, g, fmt = self._check_weight(packed, zero, k, group_size, fmt)
        return MM.prepare_weight(packed, zero, k, g, fmt, self._shape)

    @_no_grad
    def w4a8_matmul_prepared(self, qx, xscale, prepared, wscale, bias=None):
        """``w4a8_matmul(qx, xscale, packed, wscale, zero, k, G, fmt, bias)`` with the weight
        from :meth:`prepare_weight`: the same float32 [M, N] bits, without unpacking per call.

        ``wscale`` float32 [N, ng] and ``bias`` float32 [N] are checked on first use and
        cached in ``prepared`` while the same tensors are passed unmodified.
        """
        if not isinstance(prepared, MM.PreparedWeight):
            raise TypeError(f"prepared: expected the result of prepare_weight, got {type(prepared).__name__}")
        if prepared.device != self.device or prepared.shape != self._shape:
            raise ValueError(f"prepared: made for {prepared.device}, but this backend computes on {self.device}")
        qx = self._check_qx(qx, prepared.k)
        xs = self._xscale(xscale, qx.shape[0])
        ws_t = prepared.cached("wscale", wscale if isinstance(wscale, torch.Tensor) else None,
                               lambda t: MM.scales_transposed(
                                   self._check_wscale(wscale, prepared.n, prepared.ng), prepared))
        b = prepared.cached("bias", bias if isinstance(bias, torch.Tensor) else None,
                            lambda t: self._bias(bias, prepared.n))
        return MM.matmul_prepared(qx, xs, prepared, ws_t, b, self.use_int_mm)

    # -- policy (section 7) ------------------------------------------------------------------------
    @_no_grad
    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        v = self._f32(v, "v")
        if v.numel() and bool((v < 0).any()):
            raise ValueError("v (activation range) must be >= 0")
        t0, t1 = policy_thresholds(v0, v1)
        one = torch.ones_like(v, dtype=torch.uint8)
        return torch.where(v < float(t0), one * 0, torch.where(v < float(t1), one, one * 2))


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
