"""The ``cupy`` backend: every spec primitive as a raw CUDA kernel, on CuPy arrays.

The kernels live in ``fptq/backends/cuda/*.cu`` (package data) and are compiled
at first use by NVRTC for the device's architecture with pinned float options
(:mod:`fptq.backends.cupy_compile`: no fast math, no FMA contraction, no flush
to zero, IEEE division), then loaded with ``cupy.RawModule``. Results are the
spec's bits (``lae_scales`` within ``spec.LAE_SCALE_ULP_TOLERANCE``: it uses
CUDA's double-precision ``log2``, rounded once to float32 like the reference).

Every float operation happens inside fptq's own kernels: CuPy's elementwise
operators are compiled with ``-ftz=true`` and would flush subnormals. A
:class:`fptq.backends.base.BackendBase`: the base class checks each
operation's arguments once with the spec's own checks over the adapter
``xp`` (:class:`fptq.backends.cupy_arrays.DeviceArrays`, whose float
comparisons work on bit patterns for the same reason) and calls the hooks
``_<op>_unchecked`` here; the model-facing methods (``prepare_linear``,
``linear_forward``, ``linear_forward_finite``) come from the base class and
run on these hooks.

The W4A8 matmul takes one of three paths with identical bits
(:mod:`fptq.backends.cupy_launch`): ``decode`` (M <= 16, ``__dp4a``),
``prefill`` (M > 16, int8 tensor cores) or ``generic`` (shapes the fast paths
do not take); ``CupyBackend(force_path=...)`` pins one, for tests.

Arrays are ``cupy.ndarray`` on the current device; ``from_numpy`` copies a
NumPy array there and ``to_numpy`` copies back. A NumPy argument is accepted
too (copied to the device first).
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat, num_groups
from . import cupy_compile as CC
from . import cupy_launch as L
from .base import BackendBase, BackendUnavailable
from .cupy_arrays import DeviceArrays, unwrap

__all__ = ["CupyBackend", "MIN_ARCH"]

#: The oldest architecture the kernels compile for: cp.async and mma.sync m16n8k32 s8 need sm_80.
MIN_ARCH = 80

_I64, _I32, _F32 = np.int64, np.int32, np.float32


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailable(f"the cupy backend needs CuPy: pip install cupy-cuda13x (or cupy-cuda12x); {e}") \
            from e
    return cupy


class CupyBackend(BackendBase):
    """Raw CUDA kernels (compiled by NVRTC, loaded by CuPy) for every operation of
    :class:`fptq.backends.Backend`.

    Args:
        force_path: ``None`` (choose by shape), or ``"decode"`` / ``"prefill"`` /
            ``"generic"`` to run every W4A8 matmul on that path where it can run
            (a ValueError where it cannot); tests use it to cover each kernel.

    Raises :class:`BackendUnavailable` without CuPy, without a CUDA device or
    driver, on a GPU older than sm_80, or without NVRTC.
    """

    name = "cupy"
    #: Where the arrays live (``__init__`` sets the current device's id).
    device = "cuda:0"

    @property
    def array_type(self) -> type:
        """``cupy.ndarray``: a model hands this backend NumPy arrays through ``from_numpy``/``to_numpy``."""
        return self.cp.ndarray

    def __init__(self, force_path: str | None = None):
        cp = _import_cupy()
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # noqa: BLE001 - CUDARuntimeError without a driver: the reason is the message
            raise BackendUnavailable(f"cupy {cp.__version__} finds no usable CUDA device: {type(e).__name__}: "
                                     f"{e}") from e
        if count == 0:
            raise BackendUnavailable(f"cupy {cp.__version__} finds no CUDA device")
        dev = cp.cuda.Device()
        cc = int(dev.compute_capability)
        if cc < MIN_ARCH:
            raise BackendUnavailable(f"the cupy backend's kernels need sm_{MIN_ARCH} or newer (cp.async, int8 "
                                     f"mma.sync m16n8k32); this GPU is sm_{cc}")
        try:
            self.nvrtc_version = CC.nvrtc_version()
        except (ImportError, RuntimeError) as e:
            raise BackendUnavailable(f"the cupy backend compiles its kernels with NVRTC: {e}") from e
        if force_path is not None:
            L.choose_path(1, 1, 32, 32, force=force_path)  # validates the name
        self.cp = cp
        self.device = f"cuda:{dev.id}"
        self.force_path = force_path
        self.arch = str(cc)
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"?")
        self.device_name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        self.sm_count = int(props.get("multiProcessorCount") or L.SM_COUNT_DEFAULT)
        self.xp = DeviceArrays(cp, "cupy")
        self._functions: dict[tuple[str, str], object] = {}
        self._compiled: dict[str, CC.CompiledModule] = {}
        self._dummy = cp.zeros(16, dtype=cp.uint8)  # stands for an absent zero point / bias
        self.last_path: str | None = None

    # -- boundary -----------------------------------------------------------------------------
    def from_numpy(self, a):
        """A copy of ``a`` on the current device (dtype and shape kept; a memory copy, no arithmetic)."""
        return self.cp.asarray(np.asarray(a))

    def to_numpy(self, t) -> np.ndarray:
        return self.cp.asnumpy(t) if isinstance(t, self.cp.ndarray) else np.asarray(t)

    def describe(self) -> str:
        return (f"cupy {self.cp.__version__}, NVRTC {'.'.join(map(str, self.nvrtc_version))}, on "
                f"{self.device_name} (sm_{self.arch}, {self.sm_count} SMs); raw CUDA kernels"
                + (f"; matmul path forced to {self.force_path}" if self.force_path else ""))

    # -- kernels ------------------------------------------------------------------------------
    def compiled(self, module: str) -> CC.CompiledModule:
        """The compiled module (NVRTC at first use, then the disk cache)."""
        if module not in self._compiled:
            self._compiled[module] = CC.compile_module(module, self.arch)
        return self._compiled[module]

    def _fn(self, module: str, kernel: str):
        key = (module, kernel)
        f = self._functions.get(key)
        if f is None:
            mod = self.compiled(module)
            # the whole cubin, checked against its ELF extent (CuPy's getCUBIN drops a byte; cupy_compile)
            raw = self.cp.RawModule(path=str(CC.cubin_file(mod)))
            for k, entry in mod.entries.items():
                self._functions[(module, k)] = raw.get_function(entry)
            f = self._functions[key]
        return f

    def _launch(self, module, kernel, grid, block, args):
        self._fn(module, kernel)(grid, block, args)

    def _elementwise(self, module, kernel, n, args):
        if n > 0:
            grid, block = L.elementwise_grid(n, self.sm_count)
            self._launch(module, kernel, grid, block, args)

    def _c(self, a):
        """A C-contiguous array of the same shape (``ascontiguousarray`` alone makes a 0-d array 1-d)."""
        a = unwrap(a)
        return a if a.flags.c_contiguous else self.cp.ascontiguousarray(a).reshape(a.shape)

    def _opt(self, a):
        return self._dummy if a is None else self._c(a)

    @staticmethod
    def _ptr(a) -> int:
        """The device address of an array (the fast paths need 16-byte aligned ones)."""
        return a.data.ptr

    # -- activations (spec section 2): the hooks of BackendBase, on checked arguments -----------
    def _act_scale_from_amax_unchecked(self, amax):
        a = self._c(amax)
        out = self.cp.empty_like(a)
        self._elementwise("activation", "act_scale_from_amax", a.size, (a, out, _I64(a.size)))
        return out

    def _quantize_act_per_tensor_unchecked(self, x, scale):
        x, scale = self._c(x), self._c(scale)
        q = self.cp.empty(x.shape, dtype=self.cp.int8)
        self._elementwise("activation", "quantize_act_per_tensor", x.size, (x, scale, q, _I64(x.size)))
        return q

    def _quantize_act_per_token_unchecked(self, x):
        x = self._c(x)
        m, k = x.shape
        q = self.cp.empty((m, k), dtype=self.cp.int8)
        scale = self.cp.empty((m,), dtype=self.cp.float32)
        if m:
            self._launch("activation", "quantize_act_per_token", (m,), (L.ROW_THREADS,), (x, q, scale, _I64(k)))
        return q, scale

    def _dequantize_act_unchecked(self, q, scale, per_token):
        q, scale = self._c(q), self._c(scale)
        out = self.cp.empty(q.shape, dtype=self.cp.float32)
        k = q.shape[1] if per_token else 1
        if k:
            self._elementwise("activation", "dequantize_act", q.size,
                              (q, scale, out, _I64(q.size), _I64(k), _I32(per_token)))
        return out

    # -- LAE (section 3) -----------------------------------------------------------------------
    def _lae_scales_unchecked(self, channel_max):
        m = self._c(channel_max)
        s = self.cp.empty_like(m)
        self._elementwise("lae", "lae_scales", m.size, (m, s, _I64(m.size)))
        return s

    def _lae_apply(self, kernel, a, s):
        a, s = self._c(a), self._c(s)
        out = self.cp.empty(a.shape, dtype=self.cp.float32)
        self._elementwise("lae", kernel, a.size, (a, s, out, _I64(a.size), _I64(a.shape[1])))
        return out

    def _lae_apply_activation_unchecked(self, x, s):
        return self._lae_apply("lae_apply_activation", x, s)

    def _lae_apply_weight_unchecked(self, w, s):
        return self._lae_apply("lae_apply_weight", w, s)

    # -- weights (section 4) -------------------------------------------------------------------
    def _weight_scales_unchecked(self, w, g, fmt):
        """The kernel writes an infinite scale where a group's range overflowed (BackendBase raises)."""
        w = self._c(w)
        n, k = w.shape
        ng = num_groups(k, g)
        asym = fmt is WeightFormat.ASYMMETRIC
        scale = self.cp.empty((n, ng), dtype=self.cp.float32)
        zero = self.cp.zeros((n, ng), dtype=self.cp.uint8) if asym else None
        if n * ng:
            grid, block = L.warp_per_item_grid(n * ng)
            self._launch("weights", "weight_scales", grid, block,
                         (w, scale, self._opt(zero), _I64(n), _I64(k), _I64(g), _I64(ng), _I32(asym)))
        return scale, zero

    def _groupwise(self, kernel, a, scale, zero, g, fmt, out_dtype):
        """One elementwise weights kernel over a [N, K] with its per-(row, group) scale (and zero)."""
        a, scale = self._c(a), self._c(scale)
        n, k = a.shape
        out = self.cp.empty((n, k), dtype=out_dtype)
        self._elementwise("weights", kernel, n * k,
                          (a, scale, self._opt(zero), out, _I64(n), _I64(k), _I64(g), _I64(num_groups(k, g)),
                           _I32(fmt is WeightFormat.ASYMMETRIC)))
        return out

    def _quantize_weight_with_scales_unchecked(self, w, scale, zero, g, fmt):
        return self._groupwise("quantize_weight_with_scales", w, scale, zero, g, fmt, self.cp.int8)

    def _dequantize_weight_unchecked(self, q, scale, zero, g, fmt):
        return self._groupwise("dequantize_weight", q, scale, zero, g, fmt, self.cp.float32)

    # -- packing (section 5) -------------------------------------------------------------------
    def _pack_int4_unchecked(self, q, signed):
        q = self._c(q)
        n, k = q.shape
        packed = self.cp.empty((n, spec.packed_width(k)), dtype=self.cp.uint8)
        self._elementwise("packing", "pack_int4", packed.size, (q, packed, _I64(n), _I64(k)))
        return packed

    def _unpack_int4_unchecked(self, packed, k, signed):
        packed = self._c(packed)
        n = packed.shape[0]
        q = self.cp.empty((n, k), dtype=self.cp.int8)
        self._elementwise("packing", "unpack_int4", n * k, (packed, q, _I64(n), _I64(k), _I32(signed)))
        return q

    # -- matmul (section 6) --------------------------------------------------------------------
    def _group_sums_into(self, acc, qx, packed, zero, k, g, fmt):
        m, n, ng = acc.shape
        self._elementwise("matmul", "w4a8_group_sums", acc.size,
                          (qx, packed, self._opt(zero), acc, _I64(m), _I64(n), _I64(k), _I64(g), _I64(ng),
                           _I32(fmt is WeightFormat.ASYMMETRIC)))

    def _epilogue_into(self, out, acc, wscale, xscale, bias):
        m, n, ng = acc.shape
        self._elementwise("matmul", "w4a8_epilogue", m * n,
                          (acc, wscale, xscale, self._opt(bias), out, _I64(m), _I64(n), _I64(ng),
                           _I32(xscale.size > 1), _I32(bias is not None)))

    def _w4a8_group_sums_unchecked(self, qx, packed, zero, k, g, fmt):
        qx, packed = self._c(qx), self._c(packed)
        acc = self.cp.empty((qx.shape[0], packed.shape[0], num_groups(k, g)), dtype=self.cp.int32)
        self._group_sums_into(acc, qx, packed, None if zero is None else self._c(zero), k, g, fmt)
        return acc

    def _w4a8_epilogue_unchecked(self, acc, wscale, xscale, bias):
        acc = self._c(acc)
        out = self.cp.empty(acc.shape[:2], dtype=self.cp.float32)
        self._epilogue_into(out, acc, self._c(wscale), self._c(xscale).reshape(-1),
                            None if bias is None else self._c(bias))
        return out

    def _w4a8_matmul_unchecked(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias=None):
        launch, out = self._launcher(qx, xscale, packed, wscale, zero, k, g, fmt, bias)
        launch()
        return out

    def matmul_launcher(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC,
                        bias=None):
        """Check the arguments of :meth:`w4a8_matmul` once; return ``(launch, out)``.

        ``launch()`` runs the matmul's kernel(s) on the current stream, writing the
        float32 [M, N] result into ``out``, with no check and no host synchronization,
        so it can be called in a loop or captured in a CUDA graph (the benchmark
        does). The arrays are the checked, contiguous ones: keep them unmodified.
        """
        return self._launcher(*self._check("w4a8_matmul", qx, xscale, packed, wscale, zero, k, group_size, fmt,
                                           bias))

    def _launcher(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias):
        """``(launch, out)`` of the matmul on checked arguments; the path is chosen by shape."""
        qx, packed, wscale = self._c(qx), self._c(packed), self._c(wscale)
        xscale = self._c(xscale).reshape(-1)
        zero = None if zero is None else self._c(zero)
        bias = None if bias is None else self._c(bias)
        m, n, ng = qx.shape[0], packed.shape[0], num_groups(k, g)
        path = L.choose_path(m, n, k, g, (self._ptr(qx), self._ptr(packed)), force=self.force_path)
        self.last_path = path
        out = self.cp.empty((m, n), dtype=self.cp.float32)
        asym = fmt is WeightFormat.ASYMMETRIC
        if path == "generic" or m == 0 or n == 0:
            acc = self.cp.empty((m, n, ng), dtype=self.cp.int32)

            def launch():
                self._group_sums_into(acc, qx, packed, zero, k, g, fmt)
                self._epilogue_into(out, acc, wscale, xscale, bias)
            return launch, out
        args = (qx, xscale, packed, wscale, self._opt(zero), self._opt(bias), out, _I32(m), _I32(n), _I32(k),
                _I32(g), _I32(ng), _I32(asym), _I32(xscale.size > 1), _I32(bias is not None))
        if path == "decode":
            grid, block = L.decode_grid(n)
            fn = self._fn("gemm_decode", L.decode_kernel_name(L.decode_mt(m)))
        else:
            tile = L.choose_prefill_tile(m, n, self.sm_count)
            grid, block = L.prefill_grid(m, n, tile)
            fn = self._fn("gemm_prefill", L.prefill_kernel_name(tile))
        return (lambda: fn(grid, block, args)), out

    # -- policy (section 7) --------------------------------------------------------------------
    def _select_policies_unchecked(self, v, t0, t1):
        v = self._c(v)
        codes = self.cp.empty(v.shape, dtype=self.cp.uint8)
        self._elementwise("policy", "select_policies", v.size, (v, codes, _I64(v.size), _F32(t0), _F32(t1)))
        return codes
