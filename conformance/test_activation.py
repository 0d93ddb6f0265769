"""Spec section 2: INT8 activations, per-tensor static and per-token dynamic.

``docs/spec.md §2``, :mod:`fptq.spec.activation`. Every result is compared
bit for bit with the spec (see ``pytest_helpers.check_op``).
"""

from hypothesis import given

from . import hypothesis_helpers as hh
from .pytest_helpers import check_op


@given(case=hh.amax_cases())
def test_act_scale_from_amax(backend, case):
    check_op(backend, "act_scale_from_amax", case)


@given(case=hh.per_tensor_cases())
def test_quantize_act_per_tensor(backend, case):
    check_op(backend, "quantize_act_per_tensor", case)


@given(case=hh.per_token_cases())
def test_quantize_act_per_token(backend, case):
    check_op(backend, "quantize_act_per_token", case)


@given(case=hh.dequantize_act_cases())
def test_dequantize_act(backend, case):
    check_op(backend, "dequantize_act", case)
