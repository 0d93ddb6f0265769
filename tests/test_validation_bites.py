"""The conformance tests of issue 9's spec gaps bite: a lax or divergent backend fails them.

Each backend here is the NumPy reference with ONE operation doing what the
spec text used to leave open (or what a backend did before the gap was
closed): truncating ``k = 5.7``, taking ``group_size = 2.0``, flattening a
[1, 1] scale, returning shape (1,) for a 0-d q, accepting an infinite
threshold or a complex array, not range-checking ``dequantize_weight``'s q,
checking its arguments in another order, refusing float64 or uint16, naming
no argument, adding ``2 + m`` in float64 in ``lae_scales``, returning an
unresolved ``group_size``. Each must FAIL the conformance test written for
it, while the honest reference passes the same test. The tests run in
process on the suite's own test functions (Hypothesis ones derandomized).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from conformance import test_activation as TA  # noqa: E402
from conformance import test_lae as TL  # noqa: E402
from conformance import test_validation as TV  # noqa: E402
from conformance import test_weights as TW  # noqa: E402
from fptq import spec  # noqa: E402
from fptq.backends.numpy_backend import NumpyBackend  # noqa: E402
from fptq.spec.formats import FLOAT  # noqa: E402

F32 = np.float32
_SETTINGS = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                     suppress_health_check=list(HealthCheck))


class _Lax(NumpyBackend):
    name = "lax"


class TruncatesK(_Lax):
    """w4a8_group_sums takes k = 5.7 as 5 and k = True as 1 (int(k))."""

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=spec.WeightFormat.SYMMETRIC):
        return super().w4a8_group_sums(qx, packed, zero, int(k), group_size, fmt)


class FloatGroupSize(_Lax):
    """weight_scales takes group_size = 2.0, -1.0 or np.bool_ (int(group_size))."""

    def weight_scales(self, w, group_size, fmt=spec.WeightFormat.SYMMETRIC):
        return super().weight_scales(w, int(group_size), fmt)


class FlattensScale(_Lax):
    """quantize_act_per_tensor takes any one-element scale ([1, 1] too): reshape(-1)."""

    def quantize_act_per_tensor(self, x, scale):
        s = np.asarray(scale)
        return super().quantize_act_per_tensor(x, s.reshape(-1) if s.size == 1 else s)


class DequantizeShape1(_Lax):
    """dequantize_act of a 0-d q with a [1] scale returns shape (1,) (broadcasting)."""

    def dequantize_act(self, q, scale):
        return (np.asarray(q).astype(FLOAT) * np.asarray(scale, FLOAT)).astype(FLOAT)


class InfiniteThreshold(_Lax):
    """select_policies takes v1 = inf as "never dynamic"."""

    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        big = float(np.finfo(F32).max)
        return super().select_policies(v, min(v0, big), min(v1, big))


class RealPartOfComplex(_Lax):
    """quantize_act_per_token takes a complex x as its real part."""

    def quantize_act_per_token(self, x):
        x = np.asarray(x)
        return super().quantize_act_per_token(x.real if np.iscomplexobj(x) else x)


class UncheckedDequantizeWeight(_Lax):
    """dequantize_weight does not check q's range (9 in int4_sym, 16 in uint4_asym pass)."""

    def dequantize_weight(self, q, scale, zero, group_size, fmt=spec.WeightFormat.SYMMETRIC):
        q = np.asarray(q)
        ok = spec.formats.weight_format_spec(fmt)
        return super().dequantize_weight(np.clip(q, ok.qmin, ok.qmax).astype(q.dtype), scale, zero, group_size, fmt)


class ValuesBeforeTypes(_Lax):
    """quantize_weight_with_scales looks at w's values before scale's dtype (another order than §9.2)."""

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=spec.WeightFormat.SYMMETRIC):
        w = np.asarray(w)
        if w.dtype.kind == "f" and not np.isfinite(w).all():
            raise ValueError("w contains a non-finite value")
        return super().quantize_weight_with_scales(w, scale, zero, group_size, fmt)


class WeightScaleFirst(_Lax):
    """w4a8_matmul checks wscale's values before xscale's (signature order is xscale first)."""

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=spec.WeightFormat.SYMMETRIC,
                    bias=None):
        if np.asarray(wscale).size and not (np.asarray(wscale) > 0).all():
            raise ValueError("wscale must be > 0")
        return super().w4a8_matmul(qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)


class Float32Only(_Lax):
    """act_scale_from_amax refuses every dtype but float32 (and the wide unsigned integers)."""

    def act_scale_from_amax(self, amax):
        if np.asarray(amax).dtype != F32:
            raise TypeError(f"amax: expected float32, got {np.asarray(amax).dtype}")
        return super().act_scale_from_amax(amax)


class NamesNothing(_Lax):
    """lae_apply_weight raises a framework-style error that names no argument."""

    def lae_apply_weight(self, w, s):
        try:
            return super().lae_apply_weight(w, s)
        except (TypeError, ValueError) as e:
            raise type(e)("unsupported input") from None


class UnpinnedLaeAdd(_Lax):
    """lae_scales adds 2 + m in float64 (not the pinned float32 add) and its log2 is 1 ulp high."""

    def lae_scales(self, channel_max):
        m = np.asarray(channel_max, F32)
        l2 = np.nextafter(np.log2(2.0 + m.astype(np.float64)).astype(F32), F32(np.inf))
        return np.where(m < spec.MIN_SCALE, F32(1), (m / l2).astype(F32)).astype(F32)


class PinnedLaeAddLog2OneUlp(_Lax):
    """Legitimate: the pinned float32 add, a log2 1 ulp high (within §3.3's tolerance)."""

    def lae_scales(self, channel_max):
        m = np.asarray(channel_max, F32)
        l2 = np.nextafter(np.log2((m + F32(2)).astype(F32).astype(np.float64)).astype(F32), F32(np.inf))
        return np.where(m < spec.MIN_SCALE, F32(1), (m / l2).astype(F32)).astype(F32)


class UnresolvedGroupSize(_Lax):
    """quantize_weight returns the group_size it was given (-1) and the format as a string."""

    def quantize_weight(self, w, group_size, fmt=spec.WeightFormat.SYMMETRIC):
        r = super().quantize_weight(w, group_size, fmt)
        return spec.QuantizedWeight(r.q, r.scale, r.zero, group_size, spec.WeightFormat(fmt).value)


def _cases(table, op=None, what=None):
    return [(o, w, c) for o, w, c in table if (op is None or o == op) and (what is None or what in w)]


def _run_param(fn, table, op=None, what=None):
    """Run a parametrized validation test over its cases; return the messages of the failures."""
    def run(backend):
        failures = []
        for o, w, c in _cases(table, op, what):
            try:
                fn(backend, o, w, c)
            except AssertionError as e:
                failures.append(str(e).splitlines()[0])
        return failures
    return run


def _run_dtypes(op, arg):
    def run(backend):
        failures = []
        for dt in TV.OTHER_REAL:
            try:
                TV.test_converts_other_real_dtypes(backend, op, arg, dt)
            except AssertionError as e:
                failures.append(str(e).splitlines()[0])
        return failures
    return run


_LAE_ADD_ROUNDING = _SETTINGS(TL.test_lae_scales_add_rounding_region)


def _run_hypothesis(fn):
    def run(backend):
        try:
            fn(backend=backend)
        except AssertionError as e:
            return [str(e).splitlines()[0]]
        return []
    return run


def _run_plain(fn, params):
    def run(backend):
        failures = []
        for p in params:
            try:
                fn(backend, *p)
            except AssertionError as e:
                failures.append(str(e).splitlines()[0])
        return failures
    return run


_GAP = TV.test_rejects_what_the_spec_text_rejects
_ORDER = TV.test_reports_the_first_fault_in_the_order_of_section_9

#: lax backend -> the conformance test (over the cases written for its gap) that must fail it
BITES = [
    (TruncatesK, _run_param(_GAP, TV.GAPS, "w4a8_group_sums", "k=")),
    (FloatGroupSize, _run_param(_GAP, TV.GAPS, "weight_scales", "group_size=")),
    (FlattensScale, _run_param(_GAP, TV.GAPS, "quantize_act_per_tensor", "scale shape")),
    (DequantizeShape1, _run_plain(TA.test_dequantize_act_keeps_the_shape_of_q, [((), (1,))])),
    (InfiniteThreshold, _run_param(_GAP, TV.GAPS, "select_policies", "inf")),
    (RealPartOfComplex, _run_param(_GAP, TV.GAPS, "quantize_act_per_token", "complex")),
    (UncheckedDequantizeWeight, _run_param(_GAP, TV.GAPS, "dequantize_weight", " q=")),
    (ValuesBeforeTypes, _run_param(_ORDER, TV.ORDER, "quantize_weight_with_scales", "NaN w and bool scale")),
    (WeightScaleFirst, _run_param(_ORDER, TV.ORDER, "w4a8_matmul", "xscale NaN and wscale 0")),
    (Float32Only, _run_dtypes("act_scale_from_amax", "amax")),
    (NamesNothing, _run_param(TV.test_rejects_bad_input, TV.BAD, "lae_apply_weight")),
    (UnpinnedLaeAdd, _run_hypothesis(_LAE_ADD_ROUNDING)),
    (UnresolvedGroupSize, _run_plain(TW.test_quantize_weight_result_is_a_quantized_weight,
                                     [(2, 6, -1, 6, spec.WeightFormat.SYMMETRIC)])),
]


@pytest.mark.parametrize("lax,run", BITES, ids=[b.__name__ for b, _ in BITES])
def test_lax_backend_fails_the_test_of_its_gap(lax, run):
    failures = run(lax())
    assert failures, f"{lax.__name__} ({lax.__doc__.splitlines()[0]}) passed the test written to catch it"
    assert all("docs/spec.md" in f for f in failures), failures


@pytest.mark.parametrize("lax,run", BITES, ids=[b.__name__ for b, _ in BITES])
def test_reference_passes_the_same_test(lax, run):
    assert run(NumpyBackend()) == []


def test_legitimate_log2_variant_passes_the_add_rounding_region():
    """A 1-ulp log2 on the pinned add stays within the 2-ulp tolerance (§3.3)."""
    assert _run_hypothesis(_LAE_ADD_ROUNDING)(PinnedLaeAddLog2OneUlp()) == []
