"""Spec section 6: the integer W4A8 matmul and its pinned float32 epilogue.

``docs/spec.md §6``, :mod:`fptq.spec.matmul`. Group sums are exact int32;
the epilogue's float32 bits are pinned (ascending group order, every op
rounded, no FMA), for a per-tensor and a per-token activation scale, with and
without bias; with M >= 64 (a kernel's big-tile path) and subnormal scales and
results; and with group sums next to every power of two a narrower register
would hold (:mod:`.hard_cases`).
"""

import numpy as np
import pytest
from hypothesis import given

from . import hard_cases as hc
from . import hypothesis_hard as hx
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


@given(data=hh.st.data())
def test_w4a8_matmul_big_tiles(backend, data):
    """M >= 64 (both sides of the 64-, 128- and 256-row tiles) with subnormal scales and results favoured."""
    check_op(backend, "w4a8_matmul", data.draw(hx.big_tile_matmul_cases(), label="case"))


@given(data=hh.st.data())
def test_w4a8_epilogue_big_tiles(backend, data):
    check_op(backend, "w4a8_epilogue", data.draw(hx.big_tile_epilogue_cases(), label="case"))


REGISTER_EDGES = hc.register_edge_ids()


@pytest.mark.parametrize("p,fmt", REGISTER_EDGES, ids=[f"2^{p}-{f}" if p != "max" else f"max-{f}"
                                                       for p, f in REGISTER_EDGES])
def test_w4a8_group_sums_register_edges(backend, p, fmt):
    """Exact group sums within 2**10 of +-2**p (p = 15, 16, 24..30: a narrower accumulator wraps there) and
    at the extremes the overflow bound admits (§6.3: 2**30 symmetric, 1920 * 2**20 asymmetric)."""
    case = hc.register_edge_case(p, fmt, per_channel=p == "max" or p % 2 == 1)
    want = check_op(backend, "w4a8_group_sums", case)
    if p != "max":
        assert want[0, :, 0].tolist() == hc.register_targets(p, hc.FORMATS[fmt]), "conformance suite bug"
    check_op(backend, "w4a8_matmul", hc.register_edge_matmul(case, per_token=fmt == "asym"))


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_w4a8_epilogue_signed_zero(backend, with_bias):
    """§1.4 rule 9: -t * tiny underflows to -0.0; adding a +0.0 bias gives +0.0 (a skipped zero bias keeps -0.0)."""
    acc = np.array([[[-1, 1], [1, -1], [-1, 0]]], np.int32)  # y = -0.25, 0.25, -0.375 before xscale
    wscale = np.array([[0.5, 0.25], [0.75, 0.5], [0.375, 1.0]], np.float32)
    xscale = np.array(2.0**-149, np.float32)
    bias = np.array([0.0, -0.0, 0.0], np.float32) if with_bias else None
    check_op(backend, "w4a8_epilogue", {"acc": acc, "wscale": wscale, "xscale": xscale, "bias": bias})
