"""Strided, offset and padded inputs, in the backend's own (device) arrays: the same bits as contiguous ones.

``docs/spec.md §10``: an operation takes any array of its backend's array type,
including views with a row pitch larger than the row, an offset into a larger
buffer, a column stride, or a transposed layout (:mod:`.layouts`). The suite
builds each view in the backend's arrays (``from_numpy`` of the whole buffer,
then the array type's own slicing: on the device for a GPU backend), compares
the outputs on the host after ``to_numpy``, and puts NaN or 0x55 garbage
outside every view, so a kernel that reads a data pointer as if the rows were
packed is caught.
"""

import pytest
from hypothesis import given, settings

from . import hypothesis_hard as hx
from . import hypothesis_helpers as hh
from .pytest_helpers import check_op

#: op -> the strategy of its cases (the ops whose kernels take large strided inputs)
LAYOUT_OPS = {
    "quantize_act_per_tensor": hh.per_tensor_cases,
    "quantize_act_per_token": hh.per_token_cases,
    "dequantize_act": hh.dequantize_act_cases,
    "quantize_weight_with_scales": hh.weight_with_scales_cases,
    "unpack_int4": hh.unpack_cases,
    "w4a8_group_sums": hh.group_sums_cases,
    "w4a8_matmul": hh.matmul_cases,
}


@pytest.mark.parametrize("op", list(LAYOUT_OPS))
@settings(max_examples=max(10, settings.default.max_examples // 4))  # a quarter of the profile's, per operation
@given(data=hh.st.data())
def test_strided_inputs(backend, op, data):
    case = data.draw(LAYOUT_OPS[op](), label="case")
    check_op(backend, op, case, layouts=data.draw(hx.layouts(case), label="layouts"))
