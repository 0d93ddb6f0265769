"""CupyBackend's host code over NumPy, every kernel emulated (used by tests/test_cupy_simulation.py).

``EmulatedCupyBackend`` is ``CupyBackend`` with the cupy module replaced by
NumPy and each kernel by a NumPy transcription of its .cu source that reads
the launch's arguments in the kernel's order: the GEMMs by the thread-level
transcriptions of :mod:`cupy_sim`, ``w4a8_group_sums`` / ``w4a8_epilogue`` /
``unpack_int4`` by their own index math (not by the spec), the rest by array
expressions of their formulas. Every launch's arguments are checked against
the kernel's parameters as read from the .cu source
(``cupy_compile.check_launch_args``: np.int32 for ``int``, np.int64 for
``i64``, dtypes of pointers), so an i32/i64 mismatch fails here, off the GPU.
Off the GPU this is the only run of the host code; the same class can run the
conformance suite::

    PYTHONPATH=tests pytest conformance --backend test_cupy_simulation:EmulatedCupyBackend
"""

from __future__ import annotations

import numpy as np

from cupy_sim import F32, sim_decode, sim_prefill
from fptq import spec
from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L
from fptq.spec import WeightFormat


class _NumpyAsCupy:
    """The parts of the cupy module the backend uses, over NumPy (``asnumpy`` copies, as cupy's does)."""

    __name__ = "numpy-as-cupy"
    ndarray = np.ndarray
    int8, uint8, int32, float32 = np.int8, np.uint8, np.int32, np.float32

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.array(a, copy=True)


def _grid_stride(grid, block, n):
    """The indices FPTQ_FOR visits in a launch of grid x block threads: i = thread + j * stride for every
    thread and j >= 0 with i < n, that is each of [0, n) once (given any threads at all)."""
    assert grid[0] * block[0] > 0
    return np.arange(n, dtype=np.int64)


def _rint_clip(y, lo, hi):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(np.rint(y), lo, hi)


def _div(a, b):
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return (a / b).astype(F32)


def _k_act_scale(grid, block, amax, out, n):
    out.reshape(-1)[:n] = np.maximum(_div(amax.reshape(-1)[:n], F32(127)), spec.MIN_SCALE)


def _k_quant_tensor(grid, block, x, scale, q, n):
    q.reshape(-1)[:n] = _rint_clip(_div(x.reshape(-1)[:n], scale.reshape(-1)[0]), -127, 127)


def _k_quant_token(grid, block, x, q, scale, k):
    assert grid == (x.shape[0],) and block == (L.ROW_THREADS,)
    amax = np.abs(x).max(axis=1) if k else np.zeros(x.shape[0], F32)
    scale[:] = np.maximum(_div(amax, F32(127)), spec.MIN_SCALE)
    q[:] = _rint_clip(_div(x, scale[:, None]), -127, 127)


def _k_dequant_act(grid, block, q, scale, out, n, k, per_row):
    s = np.repeat(scale.reshape(-1), k)[:n] if per_row else scale.reshape(-1)[0]
    out.reshape(-1)[:n] = (q.reshape(-1)[:n].astype(F32) * s).astype(F32)


def _k_lae_scales(grid, block, m, s, n):
    m = m.reshape(-1)[:n]
    l2 = np.log2((m + F32(2)).astype(F32).astype(np.float64)).astype(F32)
    s.reshape(-1)[:n] = np.where(m < spec.MIN_SCALE, F32(1), _div(m, l2))


def _k_lae_act(grid, block, x, s, out, n, k):
    out.reshape(-1)[:n] = _div(x.reshape(-1)[:n], np.tile(s, n // k))


def _k_lae_w(grid, block, w, s, out, n, k):
    out.reshape(-1)[:n] = (w.reshape(-1)[:n] * np.tile(s, n // k)).astype(F32)


def _groups(a, k, g, ng, fill=0):
    pad = ng * g - k
    return np.pad(a, ((0, 0), (0, pad)), constant_values=fill).reshape(a.shape[0], ng, g)


def _k_weight_scales(grid, block, w, scale, zero, n_rows, k, g, ng, asym):
    assert grid[0] * block[0] // 32 >= n_rows * ng
    wg = _groups(w, k, g, ng)
    if not asym:
        scale[:] = np.maximum(_div(np.abs(wg).max(axis=2), F32(7)), spec.MIN_SCALE)
        return
    lo, hi = np.minimum(wg.min(axis=2), F32(0)), np.maximum(wg.max(axis=2), F32(0))
    with np.errstate(over="ignore"):
        span = (hi - lo).astype(F32)
    s = np.maximum(_div(span, F32(15)), spec.MIN_SCALE)
    scale[:] = np.where(np.isinf(span), span, s)
    zero[:] = np.where(np.isinf(span), 0, _rint_clip(_div(-lo, s), 0, 15))


def _per_col(a, k, g):
    return np.repeat(a, g, axis=1)[:, :k]


def _k_quant_w(grid, block, w, scale, zero, q, n_rows, k, g, ng, asym):
    y = np.rint(_div(w, _per_col(scale, k, g)))
    if asym:
        q[:] = _rint_clip((y + _per_col(zero, k, g).astype(F32)).astype(F32), 0, 15)
    else:
        q[:] = _rint_clip(y, -8, 7)


def _k_dequant_w(grid, block, q, scale, zero, out, n_rows, k, g, ng, asym):
    z = _per_col(zero, k, g).astype(np.int32) if asym else 0
    out[:] = ((q.astype(np.int32) - z).astype(F32) * _per_col(scale, k, g)).astype(F32)


def _k_pack(grid, block, q, packed, n_rows, k):
    nib = q.view(np.uint8) & 0xF
    if k % 2:
        nib = np.pad(nib, ((0, 0), (0, 1)))
    packed[:] = nib[:, 0::2] | (nib[:, 1::2] << 4)


def _k_unpack(grid, block, packed, q, n_rows, k, is_signed):
    """packing.cu unpack_int4: element i of [N, K] from byte r * kb + j / 2, high nibble for odd j."""
    kb = (k + 1) // 2
    i = _grid_stride(grid, block, n_rows * k)
    r, j = i // k, i % k
    byte = packed.reshape(-1)[r * kb + j // 2].astype(np.int32)
    v = np.where(j & 1, byte >> 4, byte & 0xF)
    if is_signed:
        v = (v ^ 8) - 8
    q.reshape(-1)[i] = v


def _k_group_sums(grid, block, qx, packed, zero, acc, m_rows, n_rows, k, g, ng, asym):
    """matmul.cu w4a8_group_sums: i -> (m, n, gi); s += x[j] * (q[j] - c) over j in [gi*g, min(gi*g+g, k))."""
    kb = (k + 1) // 2
    i = _grid_stride(grid, block, m_rows * n_rows * ng)
    gi, n, m = i % ng, (i // ng) % n_rows, i // (ng * n_rows)
    c = zero.reshape(-1)[n * ng + gi].astype(np.int64) if asym else 0
    s = np.zeros(i.size, np.int64)
    j1 = np.minimum(gi * g + g, k)
    for off in range(min(g, k)):  # j = gi * g + off < k: no group reaches past column k
        j = gi * g + off
        live = j < j1
        j = np.where(live, j, 0)
        byte = packed.reshape(-1)[n * kb + (j >> 1)].astype(np.int64)
        q = np.where(j & 1, byte >> 4, byte & 0xF)
        if not asym:
            q = (q ^ 8) - 8
        s += np.where(live, qx.reshape(-1)[m * k + j].astype(np.int64) * (q - c), 0)
    acc.reshape(-1)[i] = s


def _k_epilogue(grid, block, acc, wscale, xscale, bias, out, m_rows, n_rows, ng, per_token, has_bias):
    """matmul.cu w4a8_epilogue: y = +0; y = y + float32(acc) * ws for gi ascending; * xscale; + bias."""
    i = _grid_stride(grid, block, m_rows * n_rows)
    n, m = i % n_rows, i // n_rows
    a, ws = acc.reshape(-1), wscale.reshape(-1)
    y = np.zeros(i.size, F32)
    for gi in range(ng):
        y = (y + (a[i * ng + gi].astype(F32) * ws[n * ng + gi]).astype(F32)).astype(F32)
    y = (y * xscale.reshape(-1)[m if per_token else 0]).astype(F32)
    if has_bias:
        y = (y + bias.reshape(-1)[n]).astype(F32)
    out.reshape(-1)[i] = y


def _k_policies(grid, block, v, code, n, t0, t1):
    v = v.reshape(-1)[:n]
    code.reshape(-1)[:n] = np.where(v < t0, 0, np.where(v < t1, 1, 2))


def _gemm_args(qx, xscale, packed, wscale, zero, bias, out, m, n, k, g, ng, asym, per_token, has_bias):
    assert qx.shape == (m, k) and packed.shape == (n, k // 2) and wscale.shape == (n, ng) and out.shape == (m, n)
    fmt = WeightFormat.ASYMMETRIC if asym else WeightFormat.SYMMETRIC
    return dict(qx=qx, xscale=xscale if per_token else xscale.reshape(-1)[:1], packed=packed, wscale=wscale,
                zero=zero if asym else None, k=k, g=g, fmt=fmt, bias=bias[:n] if has_bias else None)


def _k_decode(mt):
    def run(grid, block, *args):
        a = _gemm_args(*args)
        m, n = args[7], args[8]
        assert L.decode_mt(m) == mt and (grid, block) == L.decode_grid(n)
        args[6][:] = sim_decode(**a)
    return run


def _k_prefill(tile):
    def run(grid, block, *args):
        a = _gemm_args(*args)
        m, n = args[7], args[8]
        assert (grid, block) == L.prefill_grid(m, n, tile)
        args[6][:] = sim_prefill(**a, tile=tile)
    return run


_EMULATED = {
    "act_scale_from_amax": _k_act_scale, "quantize_act_per_tensor": _k_quant_tensor,
    "quantize_act_per_token": _k_quant_token, "dequantize_act": _k_dequant_act,
    "lae_scales": _k_lae_scales, "lae_apply_activation": _k_lae_act, "lae_apply_weight": _k_lae_w,
    "weight_scales": _k_weight_scales, "quantize_weight_with_scales": _k_quant_w,
    "dequantize_weight": _k_dequant_w, "pack_int4": _k_pack, "unpack_int4": _k_unpack,
    "w4a8_group_sums": _k_group_sums, "w4a8_epilogue": _k_epilogue, "select_policies": _k_policies,
    **{L.decode_kernel_name(mt): _k_decode(mt) for mt in L.DECODE_MT},
    **{L.prefill_kernel_name(t): _k_prefill(t) for t in L.PREFILL_TILES},
}


def _emulated_class():
    from fptq.backends.cupy_arrays import DeviceArrays
    from fptq.backends.cupy_backend import CupyBackend

    class EmulatedCupyBackend(CupyBackend):
        """CupyBackend's host code over NumPy, every kernel an emulation (see above)."""

        name = "cupy-emulated"

        def __init__(self, force_path=None):  # no CuPy, no GPU: set what CupyBackend.__init__ would
            self.cp = _NumpyAsCupy()
            self.force_path, self.arch, self.sm_count = force_path, "90", L.SM_COUNT_DEFAULT
            self.xp = DeviceArrays(self.cp, "numpy-as-cupy")
            self._functions, self._compiled = {}, {}
            self._dummy = np.zeros(16, np.uint8)
            self.last_path = None
            self.launches = []

        def describe(self):
            return "cupy backend host code over NumPy, kernels emulated (tests/test_cupy_simulation.py)"

        @staticmethod
        def _ptr(a):
            return a.ctypes.data

        def _fn(self, module, kernel):
            assert kernel in CC.MODULES[module], (module, kernel)

            def launch(grid, block, args):
                assert all(isinstance(v, int) and v > 0 for v in grid + block), (kernel, grid, block)
                CC.check_launch_args(module, kernel, args, placeholders=(self._dummy,))
                self.launches.append(kernel)
                _EMULATED[kernel](grid, block, *(a.item() if isinstance(a, np.generic) else a for a in args))
            return launch

    return EmulatedCupyBackend


EmulatedCupyBackend = _emulated_class()
