"""Spec section 4: groupwise INT4 weights, symmetric and asymmetric, ragged last group.

``docs/spec.md §4``, :mod:`fptq.spec.weights`.
"""

from hypothesis import given

from . import hypothesis_helpers as hh
from .pytest_helpers import check_op


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
