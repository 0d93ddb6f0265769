"""Spec section 6 at the tile edges of tiled (GPU) kernels: fixed large cases and Hypothesis tile-edge sizes.

``docs/spec.md §6.1`` (integer core) and ``§6.2`` (pinned epilogue), on the
sizes where tiled kernels break (:mod:`.large_cases`): M over decode and
prefill sizes and both sides of 16..256-row tiles, N and K at tile multiples
plus or minus one, K up to 30000 with ragged last groups deep inside K, int32
sums past 2**24, and products of up to 5.8e9 multiply-adds.

``test_w4a8_matmul_large`` runs the reduced set by default (``--fptq-profile
ci`` or ``thorough``: every case of at most ``large_cases.CI_MACS``
multiply-adds) and every case with ``--fptq-profile large``. Their answers
come from the spec's integer core, or above ``large_cases.SPEC_MACS`` from an
exact BLAS path that ``test_exact_group_sums_is_the_spec`` checks against the
spec on this machine first. ``test_w4a8_matmul_tile_edges`` draws tile-edge
sizes with Hypothesis (small: at most 2**19 multiply-adds per example).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given

from fptq import spec

from . import hypothesis_hard as hx
from . import large_cases as lc
from .pytest_helpers import check_op


def pytest_generate_tests(metafunc):
    if "large_case" in metafunc.fixturenames:
        full = metafunc.config.getoption("fptq_profile", None) == "large"
        cases = [c for c in lc.all_cases() if full or c.ci]
        metafunc.parametrize("large_case", cases, ids=[c.id for c in cases])


def test_exact_group_sums_is_the_spec():
    """The fast path equals the spec's integer core, bit for bit, on this machine's BLAS (ragged groups,
    both formats, float32 and float64 paths, saturating sums): the large cases' answers may be trusted."""
    for c in lc.all_cases():
        if c.macs > lc.SPEC_MACS:
            continue
        args = lc.group_sums_args(lc.build(c))
        want, got = spec.w4a8_group_sums(**args), lc.exact_group_sums(**args)
        assert got.dtype == want.dtype and got.shape == want.shape, c.id
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (f"large_cases.exact_group_sums differs from spec.w4a8_group_sums on {c.id} at flat "
                               f"index {bad[0]}: this machine's BLAS is not exact; the large cases cannot be checked")


def test_w4a8_matmul_large(backend, large_case):
    """One fixed case: the group sums (where they fit in memory) and the whole matmul, exactly."""
    case = lc.build(large_case)
    acc, y = lc.expected(case)
    if lc.check_group_sums_too(case):
        check_op(backend, "w4a8_group_sums", lc.group_sums_args(case), expected=acc,
                 rebuild=lc.rebuild_code(large_case, "w4a8_group_sums"))
    del acc
    check_op(backend, "w4a8_matmul", case, expected=y, rebuild=lc.rebuild_code(large_case))


@given(case=hx.tile_edge_matmul_cases())
def test_w4a8_matmul_tile_edges(backend, case):
    """Hypothesis draws tile-edge sizes; the integer core and the whole matmul must equal the spec."""
    check_op(backend, "w4a8_group_sums", lc.group_sums_args(case))
    check_op(backend, "w4a8_matmul", case)
