"""Planted bugs of the GPU kind, each one hook of the fresh backend broken (issue 25).

Each class is :class:`fresh_backend.GpuStyleBackend` (a NumPy backend written
from docs/spec.md, structured like a tiled GPU kernel) with ONE hook broken the
way real kernels break. The first group is the table of issue 25 (bugs that an
earlier suite missed under every profile, or caught only by luck); the second
is five (and one) more of the same kind. ``catches`` names the tests that
must fail with the ``ci`` profile; ``triggers(case)`` says which fixed
tile-edge cases of ``conformance/large_cases.py`` meet a tiled bug.
``tests/test_conformance_bites.py`` runs each against its tests.

Select one like any backend: ``pytest conformance/ --backend planted_gpu_bugs:AmaxFirst128``
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np

from fptq.spec import INT8_ACT
from fresh_backend import BIG_M, F32, TILE_K, GpuStyleBackend

TINY = F32(np.finfo(np.float32).tiny)  # 2**-126, the smallest normal float32


def _flush(a):
    """Subnormal values to zero of the same sign (FTZ / DAZ)."""
    return np.where(np.abs(a) < TINY, (a * F32(0)).astype(F32), a).astype(F32)


def _wrap(acc, bits: int):
    """An int held in a ``bits``-bit two's complement register."""
    half = np.int64(1) << np.int64(bits - 1)
    return ((acc.astype(np.int64) + half) % (2 * half) - half).astype(np.int32)


class _PlantedGpu(GpuStyleBackend):
    catches: tuple[str, ...] = ()

    @staticmethod
    def triggers(c) -> bool:
        return True

    def describe(self) -> str:
        return f"{type(self).__name__}: the fresh GPU-style backend with a planted bug ({self.__doc__.splitlines()[0]})"


# --------------------------------------------------------------------------- the table of issue 25


class DazScales(_PlantedGpu):
    """the epilogue treats subnormal weight and activation scales as zero (denormals-are-zero)."""

    catches = ("test_matmul.py::test_w4a8_epilogue_big_tiles", "test_large.py::test_w4a8_matmul_large")
    triggers = staticmethod(lambda c: c.scales != "similar")

    def _epilogue(self, acc, wscale, xscale, bias):
        return super()._epilogue(acc, _flush(wscale), _flush(xscale), bias)


class FmaLastGroup(_PlantedGpu):
    """the last group's ``y + t * ws`` is fused into one FMA (one rounding)."""

    catches = ("test_matmul.py::test_w4a8_epilogue",)

    def _group_step(self, y, t, ws, gi, ng, big):
        if gi != ng - 1:
            return super()._group_step(y, t, ws, gi, ng, big)
        return (y.astype(np.float64) + t.astype(np.float64) * ws.astype(np.float64)).astype(F32)


class ZeroPointPerKTile(_PlantedGpu):
    """the zero-point term is applied per 64-column K tile with the z of the group where the tile starts."""

    catches = ("test_matmul.py::test_w4a8_group_sums",)

    def _correction(self, x, zero, lo, hi, g, gi):
        out = np.zeros((x.shape[0], zero.shape[0]), np.int32)
        for t0 in range((lo // TILE_K) * TILE_K, hi, TILE_K):
            a, b = max(t0, lo), min(t0 + TILE_K, hi)
            out += zero[None, :, t0 // g].astype(np.int32) * self._xsum(x[:, a:b])[:, None]
        return out


class SwappedNibbleOddK(_PlantedGpu):
    """odd K: the last byte of each row is read high nibble first (its element comes from the padding)."""

    catches = ("test_packing.py::test_unpack_int4", "test_matmul.py::test_w4a8_group_sums")

    def _nibbles(self, packed, k, signed):
        if k % 2 and packed.shape[1]:
            packed = packed.copy()
            last = packed[:, -1]
            packed[:, -1] = ((last << np.uint8(4)) | (last >> np.uint8(4))).astype(np.uint8)
        return super()._nibbles(packed, k, signed)


class Bf16OutputBigM(_PlantedGpu):
    """the M >= 64 path stores its output through bfloat16 (rounded to nearest even)."""

    catches = ("test_matmul.py::test_w4a8_matmul_big_tiles",)

    def _finish(self, y, xs, bias, big):
        y = super()._finish(y, xs, bias, big)
        if not big:
            return y
        u = y.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return np.where(np.isfinite(y), u.astype(np.uint32).view(F32), y).astype(F32)


class PaddingNibbleUsed(_PlantedGpu):
    """odd K: the padding nibble of each row is multiplied with the next value in memory (the next row's qx)."""

    catches = ("test_matmul.py::test_w4a8_group_sums",)

    def _sums(self, qx, packed, zero, k, g, fmt):
        acc = super()._sums(qx, packed, zero, k, g, fmt)
        m, n, ng = acc.shape
        if k % 2 == 0 or not (m and n and ng):
            return acc
        pad = (packed[:, -1] >> np.uint8(4)).astype(np.int64)
        if fmt.value == "int4_sym":
            pad = np.where(pad >= 8, pad - 16, pad)
        nxt = np.concatenate([qx[1:, 0], np.zeros(1, qx.dtype)]).astype(np.int64)
        acc[:, :, ng - 1] = (acc[:, :, ng - 1] + nxt[:, None] * pad[None, :]).astype(np.int32)
        return acc


class SkipZeroBias(_PlantedGpu):
    """the bias add is skipped where the bias is zero (so -0.0 stays -0.0; IEEE gives -0.0 + 0.0 = +0.0)."""

    catches = ("test_matmul.py::test_w4a8_epilogue_signed_zero", "test_matmul.py::test_w4a8_epilogue")

    def _finish(self, y, xs, bias, big):
        out = super()._finish(y, xs, None, big)
        if bias is None:
            return out
        return np.where(bias[None, :] == 0, out, (out + bias[None, :]).astype(F32)).astype(F32)


class AmaxFirst128(_PlantedGpu):
    """per-token amax over the first 128 columns only when K > 128 (one tile's worth)."""

    catches = ("test_activation.py::test_quantize_act_per_token_long_rows",)

    def _row_amax(self, x):
        return super()._row_amax(x[:, :128])


class Register28Bit(_PlantedGpu):
    """int32 group sums held in a 28-bit register (wraps past 2**27)."""

    catches = ("test_matmul.py::test_w4a8_group_sums_register_edges",)

    def _accumulate(self, tiles):
        return _wrap(super()._accumulate(tiles), 28)


class Register31Bit(_PlantedGpu):
    """int32 group sums held in a 31-bit register (wraps past 2**30)."""

    catches = ("test_matmul.py::test_w4a8_group_sums_register_edges",)

    def _sums(self, qx, packed, zero, k, g, fmt):
        return _wrap(super()._sums(qx, packed, zero, k, g, fmt), 31)


class FtzBigM(_PlantedGpu):
    """the M >= 64 path is compiled with flush-to-zero: subnormal scales read as 0, subnormal results flushed."""

    catches = ("test_matmul.py::test_w4a8_matmul_big_tiles", "test_matmul.py::test_w4a8_epilogue_big_tiles",
               "test_large.py::test_w4a8_matmul_large")
    triggers = staticmethod(lambda c: c.m >= BIG_M and c.scales != "similar")

    def _group_step(self, y, t, ws, gi, ng, big):
        if not big:
            return super()._group_step(y, t, ws, gi, ng, big)
        return _flush(super()._group_step(y, t, _flush(ws), gi, ng, big))

    def _finish(self, y, xs, bias, big):
        if not big:
            return super()._finish(y, xs, bias, big)
        y = _flush((y * _flush(xs)[:, None]).astype(F32))
        return y if bias is None else _flush((y + bias[None, :]).astype(F32))


class ReciprocalPow2(_PlantedGpu):
    """per-tensor quantization multiplies by 1/s when s is a power of two (exact, unless 1/s overflows)."""

    catches = ("test_activation.py::test_quantize_act_per_tensor",)

    def _divide(self, x, s):
        if np.ndim(s) == 0 and np.frexp(F32(s))[0] == 0.5:  # a power of two, normal or subnormal
            return (x * (F32(1) / F32(s))).astype(F32)
        return super()._divide(x, s)


# --------------------------------------------------------------------------- five (and one) more of the GPU kind


class ZeroPointSumInt16(_PlantedGpu):
    """the zero-point term's sum(qx) per group is accumulated in int16 (wraps past 32767)."""

    catches = ("test_matmul.py::test_w4a8_group_sums_register_edges",)

    def _xsum(self, x_group):
        return _wrap(super()._xsum(x_group), 16)


class ClampedLastTileN(_PlantedGpu):
    """the last partial 16-column N tile loads the weight rows of a full tile ending at N (no bounds check)
    but stores them at its own start: its outputs belong to other rows."""

    catches = ("test_large.py::test_w4a8_matmul_large", "test_large.py::test_w4a8_matmul_tile_edges")
    triggers = staticmethod(lambda c: c.n > 16 and c.n % 16 != 0)

    def _sums(self, qx, packed, zero, k, g, fmt):
        acc = super()._sums(qx, packed, zero, k, g, fmt)
        n = acc.shape[1]
        start = n - n % 16
        if n > 16 and n % 16:
            acc[:, start:] = acc[:, n - 16:n - 16 + (n - start)].copy()
        return acc


class PerTileScaledPartials(_PlantedGpu):
    """each 64-column K tile's partial sum is converted to float, scaled by the group's weight scale and added
    to the output (split-K in float) instead of being summed in int32 per group first (§6.1)."""

    catches = ("test_matmul.py::test_w4a8_matmul",)

    def _sums(self, qx, packed, zero, k, g, fmt):
        self._tile_partials = []  # [ng] lists of [M, N] int32 tile sums (the last tile carries the correction)
        return super()._sums(qx, packed, zero, k, g, fmt)

    def _accumulate(self, tiles):
        self._tile_partials.append(list(tiles))
        return super()._accumulate(tiles)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt="int4_sym", bias=None):
        y = super().w4a8_matmul(qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)
        acc = super().w4a8_group_sums(qx, packed, zero, k, group_size, fmt)
        parts = self._tile_partials
        if len(parts) != acc.shape[2] or max((len(p) for p in parts), default=0) < 2:
            return y
        ws = np.asarray(wscale, F32)
        out = np.zeros(acc.shape[:2], F32)
        for gi, tiles in enumerate(parts):
            extra = acc[:, :, gi].astype(np.int64) - sum(t.astype(np.int64) for t in tiles)  # the correction
            for j, t in enumerate(tiles):
                part = t.astype(np.int64) + (extra if j == len(tiles) - 1 else 0)
                out = (out + (part.astype(F32) * ws[None, :, gi]).astype(F32)).astype(F32)
        xs = np.asarray(xscale, F32).reshape(-1)
        xs = np.full(out.shape[0], xs[0], F32) if xs.shape[0] != out.shape[0] else xs
        with np.errstate(all="ignore"):
            return self._finish(out, xs, None if bias is None else np.asarray(bias, F32), False)


class InverseScalePerToken(_PlantedGpu):
    """per-token quantization as ``x * fl(127 / amax)`` (one division per row) instead of ``x / scale``."""

    catches = ("test_activation.py::test_quantize_act_per_token",)

    def _per_token_q(self, x, scale, amax):
        qmax = F32(INT8_ACT.qmax)
        inv = np.where(scale > TINY, (qmax / np.where(amax > 0, amax, F32(1))).astype(F32), F32(0))
        fast = self._quantize((x * inv[:, None]).astype(F32))
        return np.where((scale > TINY)[:, None], fast, super()._per_token_q(x, scale, amax))


class Int2FloatTowardZero(_PlantedGpu):
    """the epilogue converts int32 sums to float32 rounding toward zero (``cvt.rz``, ``__int2float_rz``)."""

    catches = ("test_matmul.py::test_w4a8_epilogue",)

    def _to_float(self, acc):
        f = acc.astype(F32)
        over = np.abs(f.astype(np.float64)) > np.abs(acc.astype(np.float64))
        return np.where(over, np.nextafter(f, F32(0)), f).astype(F32)


class IgnoresRowPitch(_PlantedGpu):
    """every input is read from its data pointer as if its rows were packed (strides ignored)."""

    catches = ("test_layouts.py::test_strided_inputs",)

    def _host(self, a):
        if not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.ndim == 0:
            return a
        strides = tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) * a.itemsize for i in range(a.ndim))
        return np.lib.stride_tricks.as_strided(a, shape=a.shape, strides=strides).copy()


#: every bug of this module, in the order the bites test runs them
PLANTED_GPU = [cls for cls in list(globals().values())
               if isinstance(cls, type) and issubclass(cls, _PlantedGpu) and cls is not _PlantedGpu]
#: the bugs of issue 25's table, and the five (and one) more
ISSUE_TABLE = PLANTED_GPU[:PLANTED_GPU.index(ZeroPointSumInt16)]
MORE = PLANTED_GPU[PLANTED_GPU.index(ZeroPointSumInt16):]
