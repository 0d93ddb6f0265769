"""Spec section 2: INT8 activations, per-tensor static and per-token dynamic.

``docs/spec.md §2``, :mod:`fptq.spec.activation`. Every result is compared
bit for bit with the spec (see ``pytest_helpers.check_op``).
"""

import numpy as np
import pytest
from hypothesis import given

from . import hypothesis_hard as hx
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


@given(case=hx.long_token_cases())
def test_quantize_act_per_token_long_rows(backend, case):
    """K from 129 to 5000 with each row's amax in the last column, past column 128, or anywhere."""
    check_op(backend, "quantize_act_per_token", case)


@given(case=hh.dequantize_act_cases())
def test_dequantize_act(backend, case):
    check_op(backend, "dequantize_act", case)


@pytest.mark.parametrize("q_shape,scale_shape", [((), ()), ((), (1,)), ((3,), (1,)), ((1, 4), (1,)), ((2, 0), ()),
                                                 ((1, 3), (1,)), ((2, 3, 2), ())])
def test_dequantize_act_keeps_the_shape_of_q(backend, q_shape, scale_shape):
    """§2.4: one scale (shape () or [1]) dequantizes q of any shape to q's shape; a 0-d q gives a 0-d result."""
    q = (np.arange(int(np.prod(q_shape)), dtype=np.int64) * 37 % 255 - 127).astype(np.int8).reshape(q_shape)
    check_op(backend, "dequantize_act", {"q": q, "scale": np.full(scale_shape, 0.375, np.float32)})
