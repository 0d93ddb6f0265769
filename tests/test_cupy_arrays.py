"""The cupy backend's array adapter (:mod:`fptq.backends.cupy_arrays`), run over NumPy.

The adapter compares float32 arrays through their bit patterns because CuPy's
own comparison kernels flush subnormals (``-ftz=true``). Over NumPy the same
code must agree with the spec's adapter on every value, subnormals, signed
zeros and infinities included, and the spec's checks must accept and reject
exactly the same arguments through either adapter.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq.backends.cupy_arrays import DeviceArrays, Float32Bits, unwrap
from fptq.spec import validate as V
from fptq.spec.arrays import NUMPY

F32 = np.float32
XP = DeviceArrays(np, "numpy-as-device")
TINY = np.float32(1e-45)  # the smallest subnormal

EDGE_VALUES = np.array([0.0, -0.0, TINY, -TINY, 2.0**-126, -(2.0**-126), 1.0, -1.0, 3.4e38, -3.4e38,
                        np.inf, -np.inf], dtype=F32)


@pytest.mark.parametrize("c", [0, 0.0, -0.0, 1e-45, -1e-45, 1, -1, 2.0**-126, 3.4e38])
def test_comparisons_match_ieee_on_every_edge_value(c):
    a = XP.asarray(EDGE_VALUES, "a")
    assert isinstance(a, Float32Bits)
    with np.errstate(over="ignore"):
        cf = np.float32(c)
    np.testing.assert_array_equal(a > c, EDGE_VALUES > cf)
    np.testing.assert_array_equal(a >= c, EDGE_VALUES >= cf)
    np.testing.assert_array_equal(a < c, EDGE_VALUES < cf)
    np.testing.assert_array_equal(a <= c, EDGE_VALUES <= cf)


def test_isfinite_and_unwrap():
    vals = np.array([1.0, np.nan, np.inf, -np.inf, TINY, -0.0], F32)
    a = XP.asarray(vals, "a")
    np.testing.assert_array_equal(XP.isfinite(a), np.isfinite(vals))
    assert unwrap(a) is vals and unwrap(vals) is vals
    assert XP.first_true(~XP.isfinite(a)) == (1,)
    assert XP.first_true(np.zeros((0, 3), bool)) is None
    assert XP.item(a, (4,)) == float(TINY)


def test_to_float32_keeps_subnormals_and_rounds_to_nearest():
    h = np.array([1e-45, 1.0000000596046448, 1e39], np.float64)
    a = XP.to_float32(XP.asarray(h, "x"))
    assert XP.dtype(a) == "float32"
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(unwrap(a).view(np.uint32), h.astype(F32).view(np.uint32))


def _outcome(fn, *args):
    try:
        out = fn(*args)
    except (TypeError, ValueError) as e:
        return type(e), str(e)
    return "ok", out


def _same(cases):
    for fn, args in cases:
        want = _outcome(fn, NUMPY, *args)
        got = _outcome(fn, XP, *args)
        assert got[0] == want[0], (fn.__name__, args, got, want)
        if want[0] != "ok":
            assert got[1] == want[1], fn.__name__


def test_spec_checks_give_the_same_verdicts_through_the_adapter():
    x = np.array([[1.0, -2.5], [0.0, 3.0]], F32)
    ws = np.full((2, 1), TINY, F32)           # subnormal scales are valid
    cases = [
        (V.quantize_act_per_tensor, (x, np.array(TINY, F32))),
        (V.quantize_act_per_tensor, (x, np.array(0.0, F32))),
        (V.quantize_act_per_tensor, (x, np.array(-0.0, F32))),
        (V.quantize_act_per_tensor, (x, np.array(-TINY, F32))),
        (V.quantize_act_per_tensor, (np.array([[1.0, np.nan]], F32), np.array(1.0, F32))),
        (V.lae_scales, (np.array([0.0, TINY, 5.0], F32),)),
        (V.lae_scales, (np.array([0.0, -TINY], F32),)),
        (V.act_scale_from_amax, (np.array([1.0, -1.0], F32),)),
        (V.select_policies, (np.array([1.0, 20.0], np.float64), 15.0, 150.0)),
        (V.w4a8_epilogue, (np.zeros((1, 2, 1), np.int32), ws, np.array(0.5, F32), None)),
        (V.w4a8_epilogue, (np.zeros((1, 2, 1), np.int32), -ws, np.array(0.5, F32), None)),
        (V.pack_int4, (np.array([[8, 0]], np.int8), True)),
        (V.pack_int4, (np.array([[7, -8]], np.int8), True)),
    ]
    _same(cases)
