"""Deliberately broken backends: the proof that the conformance suite bites.

Each class is the NumPy reference with ONE operation replaced by a plausible
kernel bug (the mistakes a W4A8 kernel author actually makes): rounding,
division, clamps, packing, the epilogue's order and FMA; and the GPU-style
bugs of a tiled matmul, simulated in NumPy (``_TiledKernel``: the last
partial tile in M or N skipped or computed twice, split-K partials added in
another order, a ragged last group read as full width, the zero-point term
using G instead of the group's width, products accumulated in float32, a
stale shared-memory tile on the last K iteration). The suite must fail every
one of them with the ``ci`` profile; ``tests/test_conformance_bites.py``
checks that, and that the honest reference and the *legitimate* variants at
the end (which differ from the reference only where the spec allows) pass.

Select one like any backend: ``pytest conformance/ --backend planted_bugs:FmaEpilogue``
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np

from fptq import spec
from fptq.backends.numpy_backend import NumpyBackend
from fptq.spec import INT4_SYM, INT8_ACT, WeightFormat
from fptq.spec.formats import FLOAT


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """C's ``roundf``: ties away from zero (2.5 -> 3, -0.5 -> -1), instead of half to even."""
    return np.copysign(np.floor(np.abs(y) + FLOAT(0.5)), y).astype(FLOAT)


def _act_quantize(x, scale, rounding=np.rint, lo=INT8_ACT.qmin, hi=INT8_ACT.qmax, divide=True):
    with np.errstate(over="ignore", divide="ignore"):
        y = x / scale if divide else x * (FLOAT(1) / scale).astype(FLOAT)
        return np.clip(rounding(y.astype(FLOAT)), lo, hi).astype(np.int8)


class _Planted(NumpyBackend):
    name = "planted"
    #: the section file(s) whose tests must catch this bug, and the test names expected to fail
    catches: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{type(self).__name__}: the NumPy reference with a planted bug ({self.__doc__.splitlines()[0]})"


# --------------------------------------------------------------------------- rounding


class RoundHalfAwayPerTensor(_Planted):
    """quantize_act_per_tensor rounds ties away from zero (roundf) instead of to even."""

    catches = ("test_activation.py::test_quantize_act_per_tensor",)

    def quantize_act_per_tensor(self, x, scale):
        spec.quantize_act_per_tensor(x, scale)  # the spec's input checks
        s = np.asarray(scale, FLOAT).reshape(-1)[0]
        return _act_quantize(np.asarray(x, FLOAT), s, rounding=_round_half_away)


class RoundHalfAwayPerToken(_Planted):
    """quantize_act_per_token rounds ties away from zero instead of to even."""

    catches = ("test_activation.py::test_quantize_act_per_token",)

    def quantize_act_per_token(self, x):
        _, scale = spec.quantize_act_per_token(x)
        return _act_quantize(np.asarray(x, FLOAT), scale[:, None], rounding=_round_half_away), scale


class RoundHalfAwayWeights(_Planted):
    """quantize_weight_with_scales rounds ties away from zero instead of to even."""

    catches = ("test_weights.py::test_quantize_weight_with_scales",)

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        ref = spec.quantize_weight_with_scales(w, scale, zero, group_size, fmt)
        f = spec.formats.weight_format_spec(fmt)
        n, k = ref.shape
        g = spec.validate.check_group_size(group_size, k)
        with np.errstate(over="ignore"):
            y = _round_half_away(np.asarray(w, FLOAT) / np.repeat(scale, g, axis=1)[:, :k])
        if WeightFormat(fmt) is WeightFormat.ASYMMETRIC:
            y = y + np.repeat(zero, g, axis=1)[:, :k].astype(FLOAT)
        return np.clip(y, f.qmin, f.qmax).astype(np.int8)


# --------------------------------------------------------------------------- division


class ReciprocalPerToken(_Planted):
    """quantize_act_per_token multiplies by a float32 reciprocal 1/scale instead of dividing."""

    catches = ("test_activation.py::test_quantize_act_per_token",)

    def quantize_act_per_token(self, x):
        _, scale = spec.quantize_act_per_token(x)
        return _act_quantize(np.asarray(x, FLOAT), scale[:, None], divide=False), scale


class ReciprocalPerTensor(_Planted):
    """quantize_act_per_tensor multiplies by a float32 reciprocal 1/scale instead of dividing."""

    catches = ("test_activation.py::test_quantize_act_per_tensor",)

    def quantize_act_per_tensor(self, x, scale):
        spec.quantize_act_per_tensor(x, scale)
        return _act_quantize(np.asarray(x, FLOAT), np.asarray(scale, FLOAT).reshape(-1)[0], divide=False)


# --------------------------------------------------------------------------- clamps and scales


class ClampActTo128(_Planted):
    """quantize_act_per_tensor clips to the storage range [-128, 127] instead of [-127, 127]."""

    catches = ("test_activation.py::test_quantize_act_per_tensor",)

    def quantize_act_per_tensor(self, x, scale):
        spec.quantize_act_per_tensor(x, scale)
        return _act_quantize(np.asarray(x, FLOAT), np.asarray(scale, FLOAT).reshape(-1)[0], lo=-128)


class ClampWeightsTo7(_Planted):
    """quantize_weight_with_scales clips symmetric weights to [-7, 7] instead of [-8, 7]."""

    catches = ("test_weights.py::test_quantize_weight_with_scales",)

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        q = spec.quantize_weight_with_scales(w, scale, zero, group_size, fmt)
        if WeightFormat(fmt) is WeightFormat.SYMMETRIC:
            q = np.maximum(q, -INT4_SYM.qmax).astype(np.int8)
        return q


class PerColumnScale(_Planted):
    """quantize_act_per_token takes amax over each column (axis 0) instead of each row."""

    catches = ("test_activation.py::test_quantize_act_per_token",)

    def quantize_act_per_token(self, x):
        spec.quantize_act_per_token(x)
        x = np.asarray(x, FLOAT)
        amax = np.abs(x).max(axis=0) if x.shape[0] else np.zeros(x.shape[1], FLOAT)
        scale = spec.act_scale_from_amax(amax)
        return _act_quantize(x, scale[None, :]), scale


class Divisor127_5(_Planted):
    """act_scale_from_amax divides by 127.5 (an asymmetric-range habit) instead of 127."""

    catches = ("test_activation.py::test_act_scale_from_amax",)

    def act_scale_from_amax(self, amax):
        spec.act_scale_from_amax(amax)
        return np.maximum(np.asarray(amax, FLOAT) / FLOAT(127.5), spec.MIN_SCALE).astype(FLOAT)


# --------------------------------------------------------------------------- packing


class SwappedNibbles(_Planted):
    """pack_int4/unpack_int4 put element 2i in the HIGH nibble (self-consistent, so a round trip passes)."""

    catches = ("test_packing.py::test_pack_int4", "test_packing.py::test_unpack_int4")

    def pack_int4(self, q, signed=True):
        p = spec.pack_int4(q, signed)
        return ((p << np.uint8(4)) | (p >> np.uint8(4))).astype(np.uint8)

    def unpack_int4(self, packed, k, signed=True):
        spec.unpack_int4(packed, k, signed)
        p = np.asarray(packed, np.uint8)
        return spec.unpack_int4(((p << np.uint8(4)) | (p >> np.uint8(4))).astype(np.uint8), k, signed)


# --------------------------------------------------------------------------- matmul


class NoZeroPointCorrection(_Planted):
    """w4a8_group_sums forgets the asymmetric term - z * sum(qx over the group)."""

    catches = ("test_matmul.py::test_w4a8_group_sums",)

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        spec.w4a8_group_sums(qx, packed, zero, k, group_size, fmt)
        if WeightFormat(fmt) is WeightFormat.ASYMMETRIC:
            zero = np.zeros_like(np.asarray(zero))
        return spec.w4a8_group_sums(qx, packed, zero, k, group_size, fmt)


def _epilogue(acc, wscale, xscale, bias, order=None, fma=False, flush=False, scale_x=True):
    """The epilogue with a planted change: another group ``order``, an ``fma``, ``flush`` of subnormal
    results; ``scale_x=False`` stops after the group sum (a split-K partial)."""
    spec.w4a8_epilogue(acc, wscale, xscale, bias)  # the spec's checks
    acc, wscale = np.asarray(acc), np.asarray(wscale, FLOAT)
    m, n, ng = acc.shape
    y = np.zeros((m, n), FLOAT)
    with np.errstate(over="ignore", invalid="ignore"):
        for g in (range(ng) if order is None else order(ng)):
            t = acc[:, :, g].astype(FLOAT)
            if fma:  # one rounding of y + t * w (the float64 product of two float32 is exact)
                y = (y.astype(np.float64) + t.astype(np.float64) * wscale[None, :, g].astype(np.float64)).astype(FLOAT)
            else:
                y = (y + (t * wscale[None, :, g]).astype(FLOAT)).astype(FLOAT)
    return _finish(y, xscale, bias, flush) if scale_x else y


def _finish(y, xscale, bias, flush=False):
    """``y * xscale`` (per-tensor or per-token), optionally flushed, then ``+ bias``: each op rounded."""
    m = y.shape[0]
    xs = np.asarray(xscale, FLOAT).reshape(-1)
    xs = np.full(m, xs[0], FLOAT) if xs.shape[0] == 1 else xs
    with np.errstate(over="ignore", invalid="ignore"):
        y = (y * xs[:, None]).astype(FLOAT)
        if flush:
            y = np.where(np.abs(y) < spec.MIN_SCALE, FLOAT(0), y).astype(FLOAT)
        if bias is not None:
            y = (y + np.asarray(bias, FLOAT)[None, :]).astype(FLOAT)
    return y


class FmaEpilogue(_Planted):
    """w4a8_epilogue contracts y + t * wscale into one fused multiply-add (one rounding instead of two)."""

    catches = ("test_matmul.py::test_w4a8_epilogue",)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return _epilogue(acc, wscale, xscale, bias, fma=True)


class ReversedGroups(_Planted):
    """w4a8_epilogue sums the groups in descending order (a split-K kernel's natural order)."""

    catches = ("test_matmul.py::test_w4a8_epilogue",)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return _epilogue(acc, wscale, xscale, bias, order=lambda ng: range(ng - 1, -1, -1))


class FlushSubnormals(_Planted):
    """w4a8_epilogue flushes subnormal results to zero (fast-math FTZ)."""

    catches = ("test_matmul.py::test_w4a8_epilogue",)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return _epilogue(acc, wscale, xscale, bias, flush=True)


# --------------------------------------------------------------------------- GPU-style bugs of a tiled matmul
#
# Each class is the reference restructured the way a tiled GPU kernel computes the W4A8 matmul
# (output tiles of TILE_M x TILE_N, K walked in TILE_K steps, int32 accumulators, one group at a
# time), simulated in NumPy, with ONE step wrong. The integer core carries the bug; the matmul is
# the buggy core followed by the epilogue, as in a fused kernel.

TILE_M, TILE_N, TILE_K = 16, 16, 32


def _unpacked(packed, k, fmt) -> np.ndarray:
    return spec.unpack_int4(packed, k, signed=WeightFormat(fmt) is WeightFormat.SYMMETRIC).astype(np.int64)


def _sums(x: np.ndarray, q: np.ndarray, zero, k: int, g: int, asym: bool) -> np.ndarray:
    """int64 [M, N, ng] group sums of int64 x [M, K] and q [N, K] (asymmetric: minus z * sum(x))."""
    ng = spec.num_groups(k, g)
    acc = np.zeros((x.shape[0], q.shape[0], ng), np.int64)
    for gi in range(ng):
        lo, hi = gi * g, min((gi + 1) * g, k)
        acc[:, :, gi] = x[:, lo:hi] @ q[:, lo:hi].T
        if asym:
            acc[:, :, gi] -= np.asarray(zero, np.int64)[None, :, gi] * x[:, lo:hi].sum(axis=1)[:, None]
    return acc


class _TiledKernel(_Planted):
    """A tiled W4A8 kernel: ``_core`` computes the int32 group sums (subclasses break it), the epilogue
    is ``_epilogue`` (the spec's unless a subclass breaks it), ``w4a8_matmul`` is the two fused."""

    catches = ("test_large.py::test_w4a8_matmul_large", "test_large.py::test_w4a8_matmul_tile_edges")

    @staticmethod
    def triggers(c) -> bool:
        """Whether the fixed case ``c`` (a ``conformance.large_cases.LargeCase``) meets the bug."""
        return True

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        return ref

    def _epilogue(self, acc, wscale, xscale, bias):
        return spec.w4a8_epilogue(acc, wscale, xscale, bias)

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        ref = spec.w4a8_group_sums(qx, packed, zero, k, group_size, fmt)  # the checks, and the honest sums
        g = spec.validate.check_group_size(group_size, int(k))
        acc = self._core(np.asarray(qx), np.asarray(packed), zero, int(k), g, WeightFormat(fmt), ref)
        return np.asarray(acc).astype(np.int32)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        return self._epilogue(acc, wscale, xscale, bias)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        return self.w4a8_epilogue(self.w4a8_group_sums(qx, packed, zero, k, group_size, fmt), wscale, xscale, bias)


def _last_partial(size: int, tile: int) -> slice:
    """The rows/columns of the last tile when it is partial (size not a multiple of tile), else nothing."""
    return slice(size - size % tile, size) if size % tile else slice(0, 0)


class SkipLastPartialTileM(_TiledKernel):
    """w4a8_group_sums: the grid covers M // TILE_M row tiles, so the last partial tile in M is never written (0)."""

    triggers = staticmethod(lambda c: c.m > TILE_M and c.m % TILE_M != 0)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        acc = ref.copy()
        acc[_last_partial(acc.shape[0], TILE_M)] = 0
        return acc


class SkipLastPartialTileN(_TiledKernel):
    """w4a8_group_sums: the last partial tile in N (output columns) is skipped (left 0)."""

    triggers = staticmethod(lambda c: c.n > TILE_N and c.n % TILE_N != 0)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        acc = ref.copy()
        acc[:, _last_partial(acc.shape[1], TILE_N)] = 0
        return acc


class LastPartialTileTwice(_TiledKernel):
    """w4a8_group_sums: the last partial N tile is accumulated twice (a remainder pass after a ceil-divided loop)."""

    triggers = staticmethod(lambda c: c.n > TILE_N and c.n % TILE_N != 0)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        acc = ref.astype(np.int64)
        acc[:, _last_partial(acc.shape[1], TILE_N)] *= 2
        return acc


class SplitKReordered(_TiledKernel):
    """w4a8_epilogue: split-K, two slices of the groups each summed (scaled) on its own, then the partials added."""

    catches = ("test_matmul.py::test_w4a8_epilogue", *_TiledKernel.catches)
    triggers = staticmethod(lambda c: spec.num_groups(c.k, c.k if c.g == -1 else c.g) >= 4)

    def _epilogue(self, acc, wscale, xscale, bias):
        ng = np.asarray(acc).shape[2]
        half = (ng + 1) // 2
        lo = _epilogue(acc, wscale, xscale, None, order=lambda n: range(min(half, n)), scale_x=False)
        hi = _epilogue(acc, wscale, xscale, None, order=lambda n: range(half, n), scale_x=False)
        y = (lo + hi).astype(FLOAT)
        return _finish(y, xscale, bias)


class RaggedGroupFullWidth(_TiledKernel):
    """w4a8_group_sums: the ragged last group is read as a full G columns (running into the next row's data)."""

    triggers = staticmethod(lambda c: c.g != -1 and c.k % c.g != 0 and c.m > 1 and c.n > 1)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        m, n, ng = ref.shape
        if k % g == 0 or not ng or not m or not n:
            return ref
        lo = (ng - 1) * g
        x = np.concatenate([np.asarray(qx, np.int64).reshape(-1), np.zeros(g, np.int64)])
        q = _unpacked(packed, k, fmt)
        if fmt is WeightFormat.ASYMMETRIC:
            q = q - np.repeat(np.asarray(zero, np.int64), g, axis=1)[:, :k]
        q = np.concatenate([q.reshape(-1), np.zeros(g, np.int64)])
        xs = np.stack([x[r * k + lo: r * k + lo + g] for r in range(m)])
        qs = np.stack([q[r * k + lo: r * k + lo + g] for r in range(n)])
        acc = ref.astype(np.int64)
        acc[:, :, ng - 1] = xs @ qs.T
        return acc


class ZeroPointUsesG(_TiledKernel):
    """w4a8_group_sums: with unsigned activations u = qx + 128, the term 128 z width uses G, not the group's width."""

    triggers = staticmethod(lambda c: c.fmt == "asym" and c.g != -1 and c.k % c.g != 0)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        # sum (u)(q - z) - 128 sum (q - z) = sum qx (q - z); the kernel computes 128 sum (q - z) as
        # 128 (sum q - z * width) with width = G for every group: wrong by 128 z (G - width) on a ragged one
        m, n, ng = ref.shape
        if fmt is not WeightFormat.ASYMMETRIC or k % g == 0 or not ng:
            return ref
        width = k - (ng - 1) * g
        acc = ref.astype(np.int64)
        acc[:, :, ng - 1] += 128 * np.asarray(zero, np.int64)[None, :, ng - 1] * (g - width)
        return acc


class Float32Accumulator(_TiledKernel):
    """w4a8_group_sums: the int8 x int4 products are accumulated in float32 (exact only up to 2**24)."""

    triggers = staticmethod(lambda c: c.content == "saturating")

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        m, n, ng = ref.shape
        x = np.asarray(qx, np.float32)
        q = _unpacked(packed, k, fmt)
        if fmt is WeightFormat.ASYMMETRIC:
            q = q - np.repeat(np.asarray(zero, np.int64), g, axis=1)[:, :k]
        q = q.astype(np.float32)
        acc = np.zeros((m, n, ng), np.float32)
        for c in range(k):  # one rounded float32 add per product, in K order
            acc[:, :, c // g] = (acc[:, :, c // g] + (x[:, c, None] * q[None, :, c])).astype(np.float32)
        return np.rint(acc).astype(np.int64)


class StaleTileLastK(_TiledKernel):
    """w4a8_group_sums: the last, partial K tile is not loaded into shared memory; the previous tile's data is used."""

    triggers = staticmethod(lambda c: c.k % TILE_K != 0)

    def _core(self, qx, packed, zero, k, g, fmt, ref):
        tail = _last_partial(k, TILE_K)
        if tail.start == tail.stop:
            return ref
        x = np.asarray(qx, np.int64).copy()
        q = _unpacked(packed, k, fmt)
        stale = np.arange(tail.start, tail.stop) - TILE_K  # the same offsets in the previous tile (none: zeros)
        x[:, tail] = x[:, stale] if tail.start >= TILE_K else 0
        q[:, tail] = q[:, stale] if tail.start >= TILE_K else 0
        return _sums(x, q, zero, k, g, fmt is WeightFormat.ASYMMETRIC)


# --------------------------------------------------------------------------- legitimate variants (must PASS)


class IntegerCoreReordered(NumpyBackend):
    """LEGITIMATE: the integer core summed in another order (descending k, int64): the spec allows any order."""

    name = "integer-core-reordered"

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        ref = spec.w4a8_group_sums(qx, packed, zero, k, group_size, fmt)  # checks
        fmt = WeightFormat(fmt)
        g = spec.validate.check_group_size(group_size, k)
        q = spec.unpack_int4(packed, k, signed=fmt is WeightFormat.SYMMETRIC).astype(np.int64)
        if fmt is WeightFormat.ASYMMETRIC:  # sum qx * q - z * sum qx  ==  sum qx * (q - z)
            q = q - np.repeat(np.asarray(zero, np.int64), g, axis=1)[:, :k]
        x = np.asarray(qx, np.int64)
        out = np.zeros(ref.shape, np.int64)
        for col in range(k - 1, -1, -1):
            out[:, :, col // g] += x[:, col, None] * q[None, :, col]
        return out.astype(np.int32)


class TiledSplitKIntegers(NumpyBackend):
    """LEGITIMATE: the integer core as a tiled kernel computes it (16 x 16 output tiles, K in 32-column
    tiles, split-K partial sums added in descending order, in integers): exact, so any order passes."""

    name = "tiled-split-k-integers"

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        ref = spec.w4a8_group_sums(qx, packed, zero, k, group_size, fmt)  # checks
        k, fmt = int(k), WeightFormat(fmt)
        g = spec.validate.check_group_size(group_size, k)
        x, q = np.asarray(qx, np.int64), _unpacked(packed, k, fmt)
        m, n, ng = ref.shape
        acc = np.zeros((m, n, ng), np.int64)
        for gi in range(ng):
            lo, hi = gi * g, min((gi + 1) * g, k)
            starts = list(range(lo, hi, TILE_K))
            for r in range(0, m, TILE_M):
                for c in range(0, n, TILE_N):
                    for k0 in reversed(starts):  # split-K partials, last K tile first
                        k1 = min(k0 + TILE_K, hi)
                        acc[r:r + TILE_M, c:c + TILE_N, gi] += x[r:r + TILE_M, k0:k1] @ q[c:c + TILE_N, k0:k1].T
            if fmt is WeightFormat.ASYMMETRIC:
                acc[:, :, gi] -= np.asarray(zero, np.int64)[None, :, gi] * x[:, lo:hi].sum(axis=1)[:, None]
        return acc.astype(np.int32)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        return spec.w4a8_epilogue(self.w4a8_group_sums(qx, packed, zero, k, group_size, fmt), wscale, xscale, bias)


class Float32Log2(NumpyBackend):
    """LEGITIMATE: lae_scales with a float32 log2 (NumPy's SIMD one), within the spec's ulp tolerance."""

    name = "float32-log2"

    def lae_scales(self, channel_max):
        spec.lae_scales(channel_max)
        m = np.asarray(channel_max, FLOAT)
        t = (m + FLOAT(2)).astype(FLOAT)
        s = (m / np.log2(t).astype(FLOAT)).astype(FLOAT)
        return np.where(m < spec.MIN_SCALE, FLOAT(1), s).astype(FLOAT)




class Unavailable(NumpyBackend):
    """Not a bug: a backend that cannot start here (the suite must skip, giving the reason)."""

    name = "unavailable"

    def __init__(self):
        from fptq.backends import BackendUnavailable
        raise BackendUnavailable("no accelerator here (planted)")


#: every planted bug, in the order the bites test runs them
PLANTED = [cls for cls in list(globals().values())
           if isinstance(cls, type) and issubclass(cls, _Planted) and cls not in (_Planted, _TiledKernel)]
#: the GPU-style bugs of a tiled matmul kernel
GPU_STYLE = [cls for cls in PLANTED if issubclass(cls, _TiledKernel)]
#: the variants that differ from the reference only where the spec allows
LEGITIMATE = [IntegerCoreReordered, TiledSplitKIntegers, Float32Log2]
