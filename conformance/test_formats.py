"""Spec section 1: the one table of formats, layouts and constants; the ranges backends produce.

``docs/spec.md §1``, :mod:`fptq.spec.formats`.
"""

import numpy as np
import pytest
from hypothesis import given

from fptq import spec
from fptq.spec import INT4_SYM, INT8_ACT, UINT4_ASYM, WeightFormat

from . import hypothesis_helpers as hh
from .pytest_helpers import call_backend, clause


def test_int_format_table():
    """Each format's range lies inside its bit width; the scale divisors are the ones the spec names."""
    for f in (INT8_ACT, INT4_SYM, UINT4_ASYM):
        assert f.storage_min <= f.qmin < f.qmax <= f.storage_max, f
        assert f.storage_max - f.storage_min == 2**f.bits - 1, f
    assert (INT8_ACT.bits, INT8_ACT.qmin, INT8_ACT.qmax, INT8_ACT.scale_divisor) == (8, -127, 127, 127)
    assert (INT4_SYM.bits, INT4_SYM.qmin, INT4_SYM.qmax, INT4_SYM.scale_divisor) == (4, -8, 7, 7)
    assert (UINT4_ASYM.bits, UINT4_ASYM.qmin, UINT4_ASYM.qmax, UINT4_ASYM.scale_divisor) == (4, 0, 15, 15)
    assert INT8_ACT.signed and INT4_SYM.signed and not UINT4_ASYM.signed


def test_weight_format_spec():
    assert spec.formats.weight_format_spec(WeightFormat.SYMMETRIC) is INT4_SYM
    assert spec.formats.weight_format_spec("uint4_asym") is UINT4_ASYM
    with pytest.raises(ValueError, match="unknown weight format"):
        spec.formats.weight_format_spec("int3")


def test_constants():
    """MIN_SCALE is the smallest normal float32; MAX_GROUP_SIZE keeps every int32 group sum exact."""
    assert spec.MIN_SCALE.dtype == np.float32 and spec.MIN_SCALE == np.finfo(np.float32).tiny
    worst = (-INT8_ACT.storage_min) * max(INT4_SYM.storage_max - INT4_SYM.storage_min, UINT4_ASYM.qmax)
    assert worst * spec.MAX_GROUP_SIZE <= 2**31 - 1
    assert spec.PACKING is spec.Int4Packing.K_LOW_FIRST
    assert 0 < spec.DEFAULT_V0 < spec.DEFAULT_V1


@given(case=hh.per_token_cases())
def test_int8_act_range(backend, case):
    """A backend's per-token INT8 activations lie in [-127, 127] (-128 is never produced)."""
    q, scale = call_backend(backend, "quantize_act_per_token", case)
    assert q.dtype == np.int8, f"q: dtype {q.dtype}, but should be int8 [{clause('quantize_act_per_token')}]"
    if q.size:
        assert INT8_ACT.qmin <= q.min() and q.max() <= INT8_ACT.qmax, \
            f"q range [{q.min()}, {q.max()}] outside [-127, 127] [{clause('quantize_act_per_token')}]"
    assert (scale >= spec.MIN_SCALE).all(), f"a scale below MIN_SCALE [{clause('act_scale_from_amax')}]"


@given(case=hh.weight_cases())
def test_int4_weight_range(backend, case):
    """A backend's INT4 weights lie in the format's range; zero points in [0, 15]; scales >= MIN_SCALE."""
    f = spec.formats.weight_format_spec(case["fmt"])
    try:
        spec.quantize_weight(**case)
    except ValueError:  # a group whose range overflows float32: test_weights checks the error
        return
    r = call_backend(backend, "quantize_weight", case)
    assert r.q.dtype == np.int8, f"q: dtype {r.q.dtype}, but should be int8 [{clause('quantize_weight')}]"
    if r.q.size:
        assert f.qmin <= r.q.min() and r.q.max() <= f.qmax, \
            f"q range [{r.q.min()}, {r.q.max()}] outside [{f.qmin}, {f.qmax}] ({f.name}) [{clause('quantize_weight')}]"
    assert (r.scale >= spec.MIN_SCALE).all(), f"a scale below MIN_SCALE [{clause('weight_scales')}]"
    if r.zero is not None and r.zero.size:
        assert r.zero.max() <= UINT4_ASYM.qmax, f"zero point above 15 [{clause('weight_scales')}]"
