"""Spec section 7: the layerwise activation policy (static / LAE + static / dynamic).

``docs/spec.md §7``, :mod:`fptq.spec.policy`. Thresholds are compared in float32.
"""

from hypothesis import given

from . import hypothesis_helpers as hh
from .pytest_helpers import check_op


@given(case=hh.policy_cases())
def test_select_policies(backend, case):
    check_op(backend, "select_policies", case)
