"""Spec section 4: groupwise INT4 weights, symmetric and asymmetric, ragged last group.

``docs/spec.md §4``, :mod:`fptq.spec.weights`.
"""

import numpy as np
import pytest
from hypothesis import given

from fptq import spec
from fptq.spec import MAX_GROUP_SIZE, WeightFormat

from . import hypothesis_helpers as hh
from .pytest_helpers import check_op, clause, to_backend


@given(case=hh.weight_cases())
def test_weight_scales(backend, case):
    check_op(backend, "weight_scales", case)


@given(case=hh.weight_with_scales_cases())
def test_quantize_weight_with_scales(backend, case):
    check_op(backend, "quantize_weight_with_scales", case)


@given(case=hh.weight_cases())
def test_quantize_weight(backend, case):
    check_op(backend, "quantize_weight", case)


@given(case=hh.dequantize_weight_cases())
def test_dequantize_weight(backend, case):
    check_op(backend, "dequantize_weight", case)


#: (N, K, group_size, the G it resolves to): an explicit G, G > K, per-channel, K = 0
RESOLVED = [(3, 10, 4, 4), (2, 5, 128, 128), (2, 6, -1, 6), (2, 6, None, 6), (2, 0, -1, 1), (1, 8, MAX_GROUP_SIZE,
                                                                                            MAX_GROUP_SIZE)]


@pytest.mark.parametrize("fmt", list(WeightFormat), ids=lambda f: f.value)
@pytest.mark.parametrize("n,k,group_size,resolved", RESOLVED, ids=[f"K{k}-G{g}" for _, k, g, _ in RESOLVED])
def test_quantize_weight_result_is_a_quantized_weight(backend, n, k, group_size, resolved, fmt):
    """§4.4: a ``QuantizedWeight`` whose ``group_size`` is the resolved G (a Python int) and
    whose ``fmt`` is the ``WeightFormat`` member, whatever form the caller passed."""
    w = (np.arange(n * k, dtype=np.float32).reshape(n, k) - np.float32(2.5)) * np.float32(0.25)
    r = backend.quantize_weight(to_backend(backend, w), group_size, fmt.value)
    where = f"[{clause('quantize_weight')} §4.4 QuantizedWeight]"
    assert isinstance(r, spec.QuantizedWeight), f"returned {type(r).__name__}, not a QuantizedWeight {where}"
    assert type(r.group_size) is int and r.group_size == resolved, \
        f"group_size = {r.group_size!r} ({type(r.group_size).__name__}), but should be the int {resolved} {where}"
    assert type(r.fmt) is WeightFormat and r.fmt is fmt, f"fmt = {r.fmt!r}, but should be {fmt!r} {where}"
    check_op(backend, "quantize_weight", {"w": w, "group_size": group_size, "fmt": fmt.value})


@pytest.mark.parametrize("op", ["weight_scales", "quantize_weight", "quantize_weight_with_scales", "dequantize_weight"])
def test_largest_group_size_on_a_narrow_weight(backend, op):
    """G = 2**20 on K = 8 (one group of 8 columns): bit-exact, and cheap in any kernel that does not pad to G."""
    w = (np.arange(64 * 8, dtype=np.float32).reshape(64, 8) - np.float32(100.5)) * np.float32(0.125)
    r = spec.quantize_weight(w, MAX_GROUP_SIZE)
    case = {"weight_scales": {"w": w, "group_size": MAX_GROUP_SIZE},
            "quantize_weight": {"w": w, "group_size": MAX_GROUP_SIZE},
            "quantize_weight_with_scales": {"w": w, "scale": r.scale, "zero": None, "group_size": MAX_GROUP_SIZE},
            "dequantize_weight": {"q": r.q, "scale": r.scale, "zero": None, "group_size": MAX_GROUP_SIZE}}[op]
    check_op(backend, op, case)
