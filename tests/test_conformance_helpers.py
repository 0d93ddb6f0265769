"""The conformance suite's own helpers (issue 25): the mismatch locator, reproducers that end with the
failing comparison, strided views, group sums at register edges, ``--fptq-op`` selection."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO / "tests"), str(REPO)) if p not in sys.path]

from conformance import hard_cases, layouts, pytest_helpers  # noqa: E402
from fptq import spec  # noqa: E402


def _bad(shape, rows=None, cols=None, groups=None) -> np.ndarray:
    bad = np.zeros(shape, bool)
    idx = [slice(None) if v is None else v for v in (rows, cols, groups)][:len(shape)]
    bad[tuple(idx)] = True
    return bad


@pytest.mark.parametrize("shape,rows,cols", [((3, 5), slice(1, 3), None), ((4, 2), None, slice(1, 2)),
                                             ((32, 5), slice(16, 32), None), ((20, 5), slice(17, 20), None)])
def test_locator_names_no_partial_tile_where_there_is_none(shape, rows, cols):
    """3 rows, N = 2, a full last tile (32 = 2 x 16), a suffix not starting at a tile edge: no partial tile."""
    text = pytest_helpers.where_bad(_bad(shape, rows, cols))
    assert text and "partial" not in text, text


@pytest.mark.parametrize("shape,rows,cols,want", [
    ((17, 5), slice(16, 17), None, "the last partial tile along M (rows 16..16 after 1 full tiles of 16)"),
    ((4, 129), None, slice(128, 129), "the last partial tile along N (columns 128..128 after 1 full tiles of 128)"),
    ((65, 3), slice(64, 65), None, "the last partial tile along M (rows 64..64 after 1 full tiles of 64)"),
])
def test_locator_names_the_partial_tile(shape, rows, cols, want):
    assert want in pytest_helpers.where_bad(_bad(shape, rows, cols))


def test_locator_names_a_ragged_group_only_when_ragged():
    bad = _bad((3, 4, 5), groups=slice(4, 5))
    assert "the last group, which is ragged" in pytest_helpers.where_bad(bad, ragged=True)
    assert "ragged" not in pytest_helpers.where_bad(bad, ragged=False)


def _reproducer_outcome(code: str) -> str:
    try:
        exec(compile(code, "<reproducer>", "exec"), {})
    except AssertionError as e:
        return f"AssertionError: {e}"
    return "ok"


def test_reproducer_ends_with_the_failing_comparison(capsys):
    case = {"x": np.array([[2.5, -0.5, 1.5, 127.5]], np.float32), "scale": np.float32(1.0)}
    bad = pytest_helpers.reproducer("planted_bugs:RoundHalfAwayPerTensor", "quantize_act_per_tensor", case)
    assert bad.rstrip().endswith('print("no difference")'), bad
    assert "elements differ" in _reproducer_outcome(bad)
    good = pytest_helpers.reproducer("numpy", "quantize_act_per_tensor", case,
                                     layouts={"x": "col_stride"})
    assert _reproducer_outcome(good) == "ok" and "no difference" in capsys.readouterr().out


def test_reproducer_of_a_rejection_checks_the_error():
    case = {"x": np.array([[np.nan]], np.float32), "scale": np.float32(1.0)}
    code = pytest_helpers.reproducer("numpy", "quantize_act_per_tensor", case, rejected=True)
    assert "want_error" in code and _reproducer_outcome(code) == "ok"


@pytest.mark.parametrize("layout", list(layouts.LAYOUTS))
@pytest.mark.parametrize("shape", [(3, 5), (7,), (2, 3, 4)])
def test_layout_views_hold_the_values(layout, shape):
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    v = layouts.numpy_view(a, layout)
    assert np.array_equal(v, a)
    if layout == "offset" and a.ndim in layouts.LAYOUTS[layout]:
        assert v.ctypes.data != v.base.ctypes.data  # starts inside its buffer
    elif layout != "contiguous" and a.ndim in layouts.LAYOUTS[layout]:
        assert not v.flags.c_contiguous


@pytest.mark.parametrize("p,fmt", hard_cases.register_edge_ids())
def test_register_edge_sums_are_exact(p, fmt):
    case = hard_cases.register_edge_case(p, fmt)
    acc = spec.w4a8_group_sums(**case)[0, :, 0].tolist()
    if p == "max":
        big = 1920 * 2**20 if fmt == "asym" else 2**30
        assert max(acc) == big and min(acc) == (-big if fmt == "asym" else -896 * 2**20)
    else:
        assert acc == hard_cases.register_targets(p, hard_cases.FORMATS[fmt])
        assert any(t >= 2**p for t in acc) and any(abs(t - 2**p) <= 2**10 for t in acc)


def test_op_of_names_the_operation():
    from conformance.plugin import op_of

    class Item:
        def __init__(self, name, params=None):
            self.name, self.originalname = name, name.split("[")[0]
            self.callspec = type("C", (), {"params": params})() if params is not None else None

    assert op_of(Item("test_quantize_weight_with_scales")) == "quantize_weight_with_scales"
    assert op_of(Item("test_w4a8_matmul_big_tiles")) == "w4a8_matmul"
    assert op_of(Item("test_strided_inputs[unpack_int4]", {"op": "unpack_int4"})) == "unpack_int4"
    assert op_of(Item("test_int_format_table")) is None
