"""Spec section 5: INT4 packing, two nibbles per byte along K (element 2i low, 2i+1 high).

``docs/spec.md §5``, :mod:`fptq.spec.packing`.
"""

from hypothesis import given

from . import hypothesis_helpers as hh
from .pytest_helpers import call_backend, check_op, compare


@given(case=hh.pack_cases())
def test_pack_int4(backend, case):
    check_op(backend, "pack_int4", case)


@given(case=hh.unpack_cases())
def test_unpack_int4(backend, case):
    """Arbitrary bytes, every nibble pattern; an odd K's padding nibble is ignored whatever it holds."""
    check_op(backend, "unpack_int4", case)


@given(case=hh.pack_cases())
def test_pack_unpack_int4(backend, case):
    """The backend's unpack inverts the backend's pack."""
    q, signed = case["q"], case["signed"]
    packed = call_backend(backend, "pack_int4", case)
    back = call_backend(backend, "unpack_int4", {"packed": packed, "k": q.shape[1], "signed": signed})
    msg = compare("unpack(pack(q))", back, q, "unpack_int4")
    assert msg is None, msg
