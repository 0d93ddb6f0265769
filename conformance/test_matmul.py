"""Spec section 6: the integer W4A8 matmul and its pinned float32 epilogue.

``docs/spec.md §6``, :mod:`fptq.spec.matmul`. Group sums are exact int32;
the epilogue's float32 bits are pinned (ascending group order, every op
rounded, no FMA), for a per-tensor and a per-token activation scale, with and
without bias.
"""

import pytest
from hypothesis import given

from . import hypothesis_helpers as hh
from .pytest_helpers import check_op

VARIANTS = [("per_tensor", False), ("per_tensor", True), ("per_token", False), ("per_token", True)]
IDS = [f"{g}-{'bias' if b else 'nobias'}" for g, b in VARIANTS]


@given(case=hh.group_sums_cases())
def test_w4a8_group_sums(backend, case):
    check_op(backend, "w4a8_group_sums", case)


@pytest.mark.parametrize("granularity,with_bias", VARIANTS, ids=IDS)
@given(data=hh.st.data())
def test_w4a8_epilogue(backend, granularity, with_bias, data):
    check_op(backend, "w4a8_epilogue", data.draw(hh.epilogue_cases(granularity, with_bias), label="case"))


@pytest.mark.parametrize("granularity,with_bias", VARIANTS, ids=IDS)
@given(data=hh.st.data())
def test_w4a8_matmul(backend, granularity, with_bias, data):
    check_op(backend, "w4a8_matmul", data.draw(hh.matmul_cases(granularity, with_bias), label="case"))


#: (M, N, K, G): shapes past common kernel tiles (16, 32, 64, 128 rows; decode vs prefill M),
#: with a ragged last group (576 = 4.5 * 128), an odd group size and per-channel.
TILE_SHAPES = [(1, 257, 576, 128), (17, 33, 576, 128), (130, 65, 256, 64), (33, 129, 99, 33), (64, 17, 200, -1)]


@pytest.mark.parametrize("fmt", [hh.WeightFormat.SYMMETRIC, hh.WeightFormat.ASYMMETRIC], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", TILE_SHAPES, ids=[f"M{m}-N{n}-K{k}-G{g}" for m, n, k, g in TILE_SHAPES])
def test_w4a8_matmul_tile_boundaries(backend, m, n, k, g, fmt):
    """Larger fixed shapes (seeded pieces), per-token scales and a bias: crosses kernel tiles."""
    src = hh.Source(m * 1_000_003 + n * 1009 + k * 7 + g + (fmt is hh.WeightFormat.ASYMMETRIC))
    ng = hh.spec.num_groups(k, k if g == -1 else g)
    signed = fmt is hh.WeightFormat.SYMMETRIC
    case = {
        "qx": hh.P.int8_activations(src, (m, k), {"uniform": 3, "extreme": 1}),
        "xscale": hh.P.similar_scales(src, (m,)),
        "packed": hh.spec.pack_int4(hh.P.nibbles(src, (n, k), signed, "uniform"), signed),
        "wscale": hh.P.similar_scales(src, (n, ng)),
        "zero": None if signed else src.ints(0, 15, (n, ng)).astype("uint8"),
        "k": k, "group_size": g, "fmt": fmt,
        "bias": hh.P.log_uniform(src, (n,), -4, 4),
    }
    check_op(backend, "w4a8_group_sums", {key: case[key] for key in ("qx", "packed", "zero", "k", "group_size", "fmt")})
    check_op(backend, "w4a8_matmul", case)
