"""Hypothesis strategies for the inputs where fast kernels break (docs/spec.md §2.3, §6; issue 25).

Built from the blocks of :mod:`conformance.hypothesis_helpers` and the
constructions of :mod:`conformance.hard_cases`:

* :func:`tile_edge_matmul_cases`: M, N, K at tile multiples and one either
  side, ragged groups deep inside K, sums past 2**24, subnormal scales;
* :func:`long_token_cases`: per-token rows with K up to 5000, each row's amax
  in the last column, past column 128, or anywhere;
* :func:`big_tile_matmul_cases` / :func:`big_tile_epilogue_cases`: M >= 64
  (both sides of the 64-, 128- and 256-row tiles), subnormal scales and
  subnormal or signed-zero results favoured, at most 2**18 multiply-adds;
* :func:`layouts`: the strided view each array argument is passed as
  (:mod:`conformance.layouts`).
"""

from __future__ import annotations

from hypothesis import strategies as st

from . import hard_cases as H
from . import large_cases as LC
from . import pieces as P
from .hypothesis_helpers import (
    BIG_TILE_REGIME_WEIGHTS, branch, epilogue_cases, group_shapes, matmul_cases, mixes, packed_weights, seeds,
    weight_formats, weighted,
)
from .layouts import layouts_for
from .pieces import Source

# ---------------------------------------------------------------------------
# matmul at the tile edges of tiled kernels (spec section 6; fixed large cases: large_cases.py)

#: multiples of 16/32/64/128 and one either side: where a tiled kernel's last tile is partial
TILE_EDGE_SIZES = tuple(sorted({t + d for t in (16, 32, 64, 128) for d in (-1, 0, 1)}))


def tile_edges(hi: int) -> st.SearchStrategy[int]:
    """A size at a tile edge (3/4 of draws) or any size in [1, hi]."""
    return branch((3, st.sampled_from([s for s in TILE_EDGE_SIZES if s <= hi])), (1, st.integers(1, hi)))


@st.composite
def tile_edge_matmul_cases(draw, max_macs: int = 2**19) -> dict:
    """The W4A8 linear with sizes where tiled kernels break: M, N, K at multiples of 16..128 and one
    either side (the last partial tile in M, N and K), G in {16, 32, 64, 128, per-channel} or not a
    power of two (``edges``); K from 1000 to 4200 with a ragged last group deep inside K (``deep``);
    int32 group sums past 2**24 with K up to 30000 (``saturating``, where a float32 accumulator of the
    products rounds). Both formats, both scale kinds, bias or not, subnormal weight or activation scales
    with subnormal results in a third of the examples; at most ``max_macs`` multiply-adds."""
    kind = draw(weighted({"edges": 6, "deep": 2, "saturating": 2}))
    fmt = draw(st.sampled_from(["sym", "asym"]))
    if kind == "edges":
        m, n, k = draw(tile_edges(65)), draw(tile_edges(129)), draw(tile_edges(257))
        g = draw(st.sampled_from([16, 32, 64, 128, -1, 48, 33]))
    elif kind == "deep":
        m, n = draw(st.integers(1, 4)), draw(st.integers(1, 17))
        k = draw(st.integers(1000, 4200) | st.sampled_from([4095, 4096, 4097, 2049]))
        g = draw(st.sampled_from([32, 64, 128, 256, -1, 96]))
    else:
        m, n = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        k = draw(st.integers(20000, 30000))
        g = draw(st.sampled_from([-1, 20000]))
    while m * n * k > max_macs and m > 1:
        m = (m + 1) // 2
    while m * n * k > max_macs and n > 1:
        n = (n + 1) // 2
    gran = draw(st.sampled_from(["per_tensor", "per_token"]))
    scales = draw(weighted({"similar": 4, "subnormal_w": 1, "subnormal_x": 1}))
    bias = draw(st.booleans()) and scales == "similar"  # a bias would swamp subnormal results
    return LC.make_case(Source(draw(seeds())), m, n, k, g, fmt, gran, bias,
                        "saturating" if kind == "saturating" else "random", scales)


# ---------------------------------------------------------------------------
# long per-token rows (spec section 2.3)

#: K of a long per-token row: past one 128-column tile, at tile edges, up to 5000
LONG_K = (129, 130, 255, 256, 257, 511, 1024, 1025, 2049, 4095, 4096, 4097)


@st.composite
def long_token_cases(draw) -> dict:
    """``{x}``: float32 [M, K], M in 1..3, K in 129..5000 (tile edges favoured); each row's amax moved to the
    last column, past the first 128 columns, the first column or anywhere (:func:`hard_cases.move_amax`)."""
    m = draw(st.integers(1, 3))
    k = draw(branch((2, st.sampled_from(LONG_K)), (1, st.integers(129, 5000))))
    w = draw(mixes(P.TOKEN_ROW_KINDS, favour=("generic", "ties")))
    where = draw(weighted(H.AMAX_POSITIONS))
    return {"x": H.long_token_matrix(Source(draw(seeds())), m, k, w, where)}


# ---------------------------------------------------------------------------
# big tiles: M >= 64 (spec section 6)

#: M on both sides of the 64-, 128- and 256-row tiles
BIG_M = (64, 65, 127, 128, 129, 191, 255, 256, 257)


def big_rows() -> st.SearchStrategy[int]:
    """M >= 64: a tile edge (3/4 of draws) or any M in [64, 300]."""
    return branch((3, st.sampled_from(BIG_M)), (1, st.integers(64, 300)))


@st.composite
def big_tile_sums_cases(draw, max_macs: int = 2**18) -> dict:
    """``w4a8_group_sums`` arguments with M >= 64 and N, K small enough for ``max_macs`` multiply-adds."""
    k, g = draw(group_shapes(max_ng=3))
    m = draw(big_rows())
    n = draw(branch((3, st.integers(1, 8)), (1, st.sampled_from([15, 16, 17, 31, 32, 33]))))
    n = max(1, min(n, max_macs // max(m * k, 1)))
    fmt = draw(weight_formats())
    src = Source(draw(seeds()))
    qx = P.int8_activations(src, (m, k), draw(mixes(("uniform", "extreme", "zero", "small"), favour=("uniform",))))
    return {"qx": qx, **draw(packed_weights(n, k, g, fmt)), "k": k, "group_size": g, "fmt": fmt}


def big_tile_matmul_cases(granularity: str | None = None) -> st.SearchStrategy[dict]:
    """The W4A8 linear with M >= 64 (:func:`big_tile_sums_cases`), subnormal scales and results favoured."""
    return matmul_cases(granularity, sums=big_tile_sums_cases(), regime_weights=BIG_TILE_REGIME_WEIGHTS)


def big_tile_epilogue_cases(granularity: str | None = None) -> st.SearchStrategy[dict]:
    """The pinned epilogue with M >= 64, subnormal scales and results favoured."""
    return epilogue_cases(granularity, rows=big_rows(), regime_weights=BIG_TILE_REGIME_WEIGHTS)


# ---------------------------------------------------------------------------
# strided, offset and padded inputs


@st.composite
def layouts(draw, case: dict) -> dict:
    """A layout (:mod:`conformance.layouts`) for every array argument of ``case``: mostly strided views."""
    out = {}
    for name, value in case.items():
        if hasattr(value, "ndim") and value.ndim:
            out[name] = draw(st.sampled_from(layouts_for(value.ndim)))
    return out
