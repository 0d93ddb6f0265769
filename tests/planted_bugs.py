"""Deliberately broken backends: the proof that the conformance suite bites.

Each class is the NumPy reference with ONE operation replaced by a plausible
kernel bug (the mistakes a W4A8 kernel author actually makes). The suite must
fail every one of them with the ``ci`` Hypothesis profile;
``tests/test_conformance_bites.py`` checks that, and that the honest
reference and the two *legitimate* variants at the end (which differ from the
reference only where the spec allows) pass.

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


def _epilogue(acc, wscale, xscale, bias, order=None, fma=False, flush=False):
    spec.w4a8_epilogue(acc, wscale, xscale, bias)  # the spec's checks
    acc, wscale = np.asarray(acc), np.asarray(wscale, FLOAT)
    m, n, ng = acc.shape
    xs = np.asarray(xscale, FLOAT).reshape(-1)
    xs = np.full(m, xs[0], FLOAT) if xs.shape[0] == 1 else xs
    y = np.zeros((m, n), FLOAT)
    with np.errstate(over="ignore", invalid="ignore"):
        for g in (range(ng) if order is None else order(ng)):
            t = acc[:, :, g].astype(FLOAT)
            if fma:  # one rounding of y + t * w (the float64 product of two float32 is exact)
                y = (y.astype(np.float64) + t.astype(np.float64) * wscale[None, :, g].astype(np.float64)).astype(FLOAT)
            else:
                y = (y + (t * wscale[None, :, g]).astype(FLOAT)).astype(FLOAT)
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
           if isinstance(cls, type) and issubclass(cls, _Planted) and cls is not _Planted]
#: the variants that differ from the reference only where the spec allows
LEGITIMATE = [IntegerCoreReordered, Float32Log2]
