"""Numba-specific tests of the ``numba`` backend (the conformance suite covers the spec itself:
``pytest conformance/ --backend numba``).

Here: the three matmul paths give identical bits; both weight formats, odd K,
ragged and odd groups, M around the 4-row blocks; inputs on which an FMA or a
reciprocal multiplication would change the float32 bits; every kernel compiled
with ``cache=True`` and without fast-math, and a second process loading the
cache instead of compiling; the SIMD instruction the W4A8 kernel is built on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed (pip install 'fptq[numba]')")

from fptq import spec  # noqa: E402
from fptq.backends import get_backend  # noqa: E402
from fptq.backends.numba_backend import NumbaBackend  # noqa: E402
from fptq.spec import WeightFormat  # noqa: E402

SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def same_bits(got, want, what: str) -> None:
    """dtype, shape and every byte equal (floats compared by bit pattern)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, want {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    if got.tobytes() != want.tobytes():
        g = got.view(np.uint32) if got.dtype == np.float32 else got
        w = want.view(np.uint32) if want.dtype == np.float32 else want
        bad = tuple(int(i) for i in np.argwhere(g != w)[0])
        raise AssertionError(f"{what}: [{bad}] = {got[bad]!r}, want {want[bad]!r}")


def matmul_case(rng, m: int, n: int, k: int, g: int, fmt: WeightFormat, per_token: bool = True):
    """Random W4A8 operands (qx covers the whole int8 range, -128 included)."""
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 3.0, (n, 1)).astype(np.float32)
    qw = spec.quantize_weight(w, g, fmt)
    packed = spec.pack_int4(qw.q, signed=fmt is SYM)
    qx = rng.integers(-128, 128, (m, k)).astype(np.int8)
    xs = (rng.uniform(0.001, 0.1, m) if per_token else rng.uniform(0.001, 0.1, 1)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return qx, xs, packed, qw.scale, qw.zero, bias


# ------------------------------------------------------------------------------------------- matmul paths

# (M, N, K, G): 4-row blocks and their remainders, odd K, ragged last groups, G % 64 != 0,
# groups of exactly 16/32/64 bytes (the 4-groups-at-once kernel) with and without a remainder,
# per-channel, tiny and empty shapes.
SHAPES = [
    (1, 7, 256, 128), (1, 9, 255, 32), (3, 5, 130, 64), (4, 3, 512, 128), (5, 70, 300, 128),
    (7, 4, 97, 96), (8, 66, 1024, 64), (17, 33, 200, 2), (2, 5, 257, 256), (6, 3, 33, 34),
    (1, 3, 4096, 4096), (20, 130, 160, 32), (9, 2, 1, 2), (0, 4, 64, 32), (3, 0, 64, 32), (2, 3, 0, 8),
]


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", SHAPES)
def test_matmul_paths_identical_to_spec(nb, m, n, k, g, fmt):
    rng = np.random.default_rng([m, n, k, g, fmt is SYM])
    qx, xs, packed, ws, zero, bias = matmul_case(rng, m, n, k, g, fmt)
    for b in (None, bias):
        want = spec.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, b)
        for path in ("decode", "tiled", "generic") + (("blocked",) if g % 8 == 0 else ()):
            same_bits(nb.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, b, path=path), want,
                      f"w4a8_matmul path={path} M={m} N={n} K={k} G={g} {fmt.value} bias={b is not None}")
        same_bits(nb.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, b), want, "w4a8_matmul (auto path)")
    same_bits(nb.w4a8_group_sums(qx, packed, zero, k, g, fmt), spec.w4a8_group_sums(qx, packed, zero, k, g, fmt),
              f"w4a8_group_sums M={m} N={n} K={k} G={g} {fmt.value}")


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("g", [1, 3, 5, 127])
def test_matmul_odd_group_size(nb, g, fmt):
    """Odd G: groups end mid-byte, only the generic path applies (and is chosen)."""
    rng = np.random.default_rng(g)
    m, n, k = 6, 9, 131
    qx, xs, packed, ws, zero, bias = matmul_case(rng, m, n, k, g, fmt, per_token=False)
    same_bits(nb.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, bias),
              spec.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, bias), f"w4a8_matmul G={g}")
    with pytest.raises(ValueError, match="even group size"):
        nb.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, bias, path="decode")


def test_decode_and_tiled_agree_across_the_threshold():
    """The same product through NumbaBackend(decode_max_m=0) (always tiled) and the default."""
    rng = np.random.default_rng(7)
    args = matmul_case(rng, 16, 96, 640, 128, SYM)
    qx, xs, packed, ws, zero, bias = args
    tiled_only = NumbaBackend(decode_max_m=0)
    same_bits(tiled_only.w4a8_matmul(qx, xs, packed, ws, zero, 640, 128, SYM, bias),
              get_backend("numba").w4a8_matmul(qx, xs, packed, ws, zero, 640, 128, SYM, bias), "decode vs tiled")


def test_extreme_integer_sums(nb):
    """All qx = -128 against all-(-8) symmetric / all-15 asymmetric (z = 0) nibbles: the largest
    |group sums| the formats allow (1024 * G and 1920 * G)."""
    k, g = 512, 256
    qx = np.full((5, k), -128, np.int8)
    for fmt, q, zero in ((SYM, np.full((3, k), -8, np.int8), None),
                         (ASYM, np.full((3, k), 15, np.int8), np.zeros((3, 2), np.uint8))):
        packed = spec.pack_int4(q, signed=fmt is SYM)
        same_bits(nb.w4a8_group_sums(qx, packed, zero, k, g, fmt), spec.w4a8_group_sums(qx, packed, zero, k, g, fmt),
                  f"extreme group sums {fmt.value}")
        xs, ws = np.ones(5, np.float32), np.full((3, 2), 0.25, np.float32)
        for path in ("decode", "blocked"):
            same_bits(nb.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt, path=path),
                      spec.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt), f"extreme sums, {path} matmul {fmt.value}")


def test_zero_points_outside_the_nibble_range_are_refused(nb):
    """zero > 15 would break the int32 bound (and the kernels' nibble arithmetic): refused as by the spec."""
    rng = np.random.default_rng(3)
    qx, xs, packed, ws, zero, bias = matmul_case(rng, 3, 4, 64, 32, ASYM)
    zero = zero.copy()
    zero[1, 0] = 200
    for call in (lambda: nb.w4a8_matmul(qx, xs, packed, ws, zero, 64, 32, ASYM, bias),
                 lambda: nb.w4a8_group_sums(qx, packed, zero, 64, 32, ASYM)):
        with pytest.raises(ValueError, match=r"zero points must be in \[0, 15\], got 200 at index \(1, 0\)"):
            call()


def test_non_contiguous_inputs(nb):
    rng = np.random.default_rng(11)
    qx, xs, packed, ws, zero, bias = matmul_case(rng, 5, 8, 96, 32, ASYM)
    qx_f, packed_f, ws_f = np.asfortranarray(qx), np.asfortranarray(packed), ws.T.copy().T
    same_bits(nb.w4a8_matmul(qx_f, xs, packed_f, ws_f, zero, 96, 32, ASYM, bias[::1]),
              spec.w4a8_matmul(qx, xs, packed, ws, zero, 96, 32, ASYM, bias), "Fortran-ordered inputs")
    x = rng.standard_normal((40, 30)).astype(np.float32)[::2, ::3]
    for got, want in zip(nb.quantize_act_per_token(x), spec.quantize_act_per_token(x)):
        same_bits(got, want, "quantize_act_per_token of a strided view")


# ------------------------------------------------------------------------- the other operations, randomized

@pytest.mark.parametrize("seed", range(4))
def test_all_operations_match_spec(nb, seed):
    rng = np.random.default_rng(100 + seed)
    m, k, n = int(rng.integers(1, 9)), int(rng.integers(1, 300)), int(rng.integers(1, 20))
    x = (rng.standard_normal((m, k)) * rng.choice([0.01, 1, 30, 3000])).astype(np.float32)
    x[0, : k // 3] = 0  # zero runs, an all-zero row when k < 3
    x = np.where(rng.random(x.shape) < 0.05, np.round(x) + 0.5, x).astype(np.float32)  # ties
    amax = np.abs(x).max(axis=0)
    s = spec.lae_scales(amax)
    w = rng.standard_normal((n, k)).astype(np.float32)
    same_bits(nb.act_scale_from_amax(amax), spec.act_scale_from_amax(amax), "act_scale_from_amax")
    sc = np.float32(rng.uniform(1e-3, 2))
    same_bits(nb.quantize_act_per_tensor(x, sc), spec.quantize_act_per_tensor(x, sc), "quantize_act_per_tensor")
    q, qs = spec.quantize_act_per_token(x)
    for got, want in zip(nb.quantize_act_per_token(x), (q, qs)):
        same_bits(got, want, "quantize_act_per_token")
    same_bits(nb.dequantize_act(q, qs), spec.dequantize_act(q, qs), "dequantize_act per token")
    same_bits(nb.dequantize_act(q, sc), spec.dequantize_act(q, sc), "dequantize_act per tensor")
    same_bits(nb.lae_scales(amax), spec.lae_scales(amax), "lae_scales")
    same_bits(nb.lae_apply_activation(x, s), spec.lae_apply_activation(x, s), "lae_apply_activation")
    same_bits(nb.lae_apply_weight(w, s), spec.lae_apply_weight(w, s), "lae_apply_weight")
    for fmt in (SYM, ASYM):
        for g in (1, 2, 7, 32, 128, -1):
            sw, zw = spec.weight_scales(w, g, fmt)
            got_s, got_z = nb.weight_scales(w, g, fmt)
            same_bits(got_s, sw, f"weight_scales G={g} {fmt.value}")
            if zw is None:
                assert got_z is None
            else:
                same_bits(got_z, zw, f"weight zero points G={g}")
            qw = spec.quantize_weight(w, g, fmt)
            r = nb.quantize_weight(w, g, fmt)
            same_bits(r.q, qw.q, f"quantize_weight G={g} {fmt.value}")
            same_bits(nb.quantize_weight_with_scales(w, sw, zw, g, fmt),
                      spec.quantize_weight_with_scales(w, sw, zw, g, fmt), "quantize_weight_with_scales")
            same_bits(nb.dequantize_weight(qw.q, qw.scale, qw.zero, g, fmt),
                      spec.dequantize_weight(qw.q, qw.scale, qw.zero, g, fmt), "dequantize_weight")
            packed = spec.pack_int4(qw.q, fmt is SYM)
            same_bits(nb.pack_int4(qw.q, fmt is SYM), packed, "pack_int4")
            same_bits(nb.unpack_int4(packed, k, fmt is SYM), spec.unpack_int4(packed, k, fmt is SYM), "unpack_int4")
            acc = spec.w4a8_group_sums(q, packed, qw.zero, k, g, fmt)
            same_bits(nb.w4a8_epilogue(acc, qw.scale, qs), spec.w4a8_epilogue(acc, qw.scale, qs), "w4a8_epilogue")
    v = np.abs(rng.standard_normal(50) * 100).astype(np.float32)
    v[:3] = [15, 150, np.nextafter(np.float32(15), np.float32(0))]
    same_bits(nb.select_policies(v), spec.select_policies(v), "select_policies")
    same_bits(nb.select_policies(v, 1.0, 2.5), spec.select_policies(v, 1.0, 2.5), "select_policies(1, 2.5)")


def test_every_operation_is_a_numba_kernel():
    """No operation's hook is inherited (e.g. the spec's NumPy default): every ``_<op>_unchecked`` is
    defined here, but quantize_weight's (the base class's composition of two hooks defined here)."""
    from fptq.backends import OPERATIONS
    missing = [op for op in OPERATIONS if op != "quantize_weight" and f"_{op}_unchecked" not in vars(NumbaBackend)]
    assert not missing, f"NumbaBackend does not define {missing}"


def test_errors_name_the_tensor(nb):
    x = np.ones((2, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"x contains a non-finite value"):
        nb.quantize_act_per_token(x)
    with pytest.raises(TypeError, match="qx: expected dtype int8"):
        nb.w4a8_matmul(np.ones((1, 4), np.int16), np.ones(1, np.float32), np.zeros((1, 2), np.uint8),
                       np.ones((1, 1), np.float32), None, 4, 4)
    with pytest.raises(ValueError, match="wscale: expected shape"):
        nb.w4a8_matmul(np.ones((1, 4), np.int8), np.ones(1, np.float32), np.zeros((1, 2), np.uint8),
                       np.ones((1, 2), np.float32), None, 4, 4)
    with pytest.raises(ValueError, match="zero: the symmetric format has no zero point"):
        nb.w4a8_group_sums(np.ones((1, 4), np.int8), np.zeros((1, 2), np.uint8), np.zeros((1, 1), np.uint8), 4, 4)
    with pytest.raises(ValueError, match="unknown matmul path"):
        nb.w4a8_matmul(np.ones((1, 4), np.int8), np.ones(1, np.float32), np.zeros((1, 2), np.uint8),
                       np.ones((1, 1), np.float32), None, 4, 4, path="fast")


@pytest.mark.parametrize("which", ["numba", "numpy"])
def test_foreign_tensors_get_a_type_error_naming_the_argument(nb, which):
    """torch tensors a NumPy array cannot hold losslessly (bf16, requires_grad, meta) are a TypeError
    naming the argument and citing §9, not a raw framework error; plain CPU tensors are read as arrays."""
    torch = pytest.importorskip("torch")
    from fptq.backends.numpy_backend import NumpyBackend

    be = nb if which == "numba" else NumpyBackend()
    x = torch.ones((2, 3))
    for bad in (x.to(torch.bfloat16), x.clone().requires_grad_(True), torch.ones((2, 3), device="meta")):
        with pytest.raises(TypeError, match=r"^x: cannot read a torch\.Tensor as a NumPy array .*§9"):
            be.quantize_act_per_token(bad)
    with pytest.raises(TypeError, match=r"^s: cannot read a torch\.Tensor"):
        be.lae_apply_weight(np.ones((2, 3), np.float32), torch.ones(3, dtype=torch.bfloat16))
    q, s = be.quantize_act_per_token(x)
    ref = spec.quantize_act_per_token(x.numpy())
    assert np.array_equal(q, ref[0]) and s.tobytes() == ref[1].tobytes()


def test_checks_are_the_specs_own(nb):
    """The numba backend runs fptq.spec.validate's check of each operation: the same message, word for word."""
    cases = [("quantize_act_per_tensor", (np.ones((2, 2), np.float32), np.ones((1, 1), np.float32))),
             ("w4a8_group_sums", (np.ones((1, 4), np.int8), np.zeros((1, 2), np.uint8), None, 4.0, 4)),
             ("weight_scales", (np.ones((2, 4), np.float32), np.bool_(True))),
             ("dequantize_weight", (np.full((1, 4), 9, np.int8), np.ones((1, 1), np.float32), None, 4)),
             ("select_policies", (np.ones(2, np.float32), 1.0, np.inf))]
    for op, args in cases:
        with pytest.raises((TypeError, ValueError)) as want:
            getattr(spec, op)(*args)
        with pytest.raises(want.type) as got:
            getattr(nb, op)(*args)
        assert str(got.value) == str(want.value) and "docs/spec.md §9" in str(got.value)


# ------------------------------------------------------------------ float rounding: no FMA, no reciprocal


def _fma32(a, b, c) -> np.float32:
    """Exactly rounded float32 of a * b + c (what a fused multiply-add returns)."""
    return np.float32(float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))))


def _fma_sensitive(rng, count: int, integer_a: bool = False, b=None):
    """``count`` float32 triples (a, b, c), a > 0 and b > 0 (an integer a if ``integer_a``;
    the given b if one is given), where round(round(a * b) + c) != fma(a, b, c)."""
    out = []
    while len(out) < count:
        a = np.float32(rng.integers(1 << 20, 1 << 24)) if integer_a else np.float32(rng.uniform(1, 2))
        bb = np.float32(rng.uniform(1e-3, 2)) if b is None else np.float32(b)
        c = np.float32(-(np.float64(a) * np.float64(bb)) * rng.uniform(0.5, 1.0))
        if np.float32(np.float32(a * bb) + c) != _fma32(a, bb, c):
            out.append((a, bb, c))
    return out


def test_epilogue_group_sum_is_not_contracted_to_fma(nb):
    """Two groups per output: y = float32(-1) * (-c) = c, then y + float32(acc1) * ws1 with
    (acc1, ws1, c) chosen so that fma(acc1, ws1, y) has other bits."""
    cases = _fma_sensitive(np.random.default_rng(5), 8, integer_a=True)
    acc = np.array([[[-1, int(a)] for a, _, _ in cases]], np.int32)        # [1, N, 2]
    ws = np.array([[-c, b] for _, b, c in cases], np.float32)              # [N, 2], > 0
    xs = np.ones(1, np.float32)
    want = spec.w4a8_epilogue(acc, ws, xs)
    fused = np.array([_fma32(a, b, c) for a, b, c in cases], np.float32)
    assert (fused.view(np.uint32) != want[0].view(np.uint32)).all(), "inputs do not separate FMA from mul + add"
    same_bits(nb.w4a8_epilogue(acc, ws, xs), want, "w4a8_epilogue, group accumulation")


def test_epilogue_scale_and_bias_are_not_contracted_to_fma(nb):
    """One group with acc = 1, so y = wscale[n] = a; then y * xscale + bias = a * b + c with an
    FMA-sensitive (a, b, c) per output column: checked in w4a8_epilogue and in every matmul
    path (K = 2, G = 2, qx = (1, 0), q = (1, 0)), for one row and for five (the 4-row kernel)."""
    cases = _fma_sensitive(np.random.default_rng(9), 8, b=0.8125)
    n = len(cases)
    ws = np.array([[a] for a, _, _ in cases], np.float32)
    xs = np.array([cases[0][1]], np.float32)
    bias = np.array([c for _, _, c in cases], np.float32)
    fused = np.array([_fma32(a, b, c) for a, b, c in cases], np.float32)
    want = spec.w4a8_epilogue(np.ones((1, n, 1), np.int32), ws, xs, bias)
    assert (fused.view(np.uint32) != want[0].view(np.uint32)).all(), "inputs do not separate FMA from mul + add"
    same_bits(nb.w4a8_epilogue(np.ones((1, n, 1), np.int32), ws, xs, bias), want, "w4a8_epilogue, xscale and bias")
    packed = spec.pack_int4(np.tile(np.array([[1, 0]], np.int8), (n, 1)))
    for m in (1, 5):
        qx = np.tile(np.array([[1, 0]], np.int8), (m, 1))
        want = spec.w4a8_matmul(qx, xs, packed, ws, None, 2, 2, SYM, bias)
        assert (want[-1].view(np.uint32) != fused.view(np.uint32)).all()
        for path in ("decode", "tiled", "generic"):
            same_bits(nb.w4a8_matmul(qx, xs, packed, ws, None, 2, 2, SYM, bias, path=path), want,
                      f"w4a8_matmul path={path} M={m}")


def test_prepared_linear_epilogue_is_not_contracted_to_fma(nb):
    """The blocked kernel's epilogue, through linear_forward (static scale 1, so the codes are x):
    (1) group accumulation: group 0 gives y = float32(-1) * (-c) = c, group 1 adds
    float32(a) * b; (2) scale and bias: one group gives y = a, then y * b + c (act_scale b, x = b).
    Each (a, b, c) is chosen so that an FMA would give other bits."""
    rng = np.random.default_rng(13)
    n = 16
    # (1) group sums
    xg = np.array([127, 64, 32, 16, 8, 4, 2, 1], np.float32)
    x = np.concatenate([[1.0], np.zeros(7, np.float32), xg]).astype(np.float32)[None, :]
    q = np.zeros((n, 16), np.int8)
    q[:, 0] = -1
    ws = np.empty((n, 2), np.float32)
    for r in range(n):
        q[r, 8:] = rng.integers(1, 8, 8)
        a = int(q[r, 8:].astype(np.int64) @ xg.astype(np.int64))
        b, c = _sensitive_bc(rng, a)
        ws[r] = (-c, b)
    one = np.array([1.0], np.float32)
    prep = nb.prepare_linear(spec.pack_int4(q), ws, None, None, one, 16, 8, policy=spec.ActPolicy.STATIC)
    want = spec.w4a8_matmul(spec.quantize_act_per_tensor(x, one), one, spec.pack_int4(q), ws, None, 16, 8)
    fused = np.array([_fma32(np.float32(int(q[r, 8:].astype(np.int64) @ xg.astype(np.int64))), ws[r, 1], -ws[r, 0])
                      for r in range(n)], np.float32)
    assert (fused.view(np.uint32) != want[0].view(np.uint32)).all(), "inputs do not separate FMA from mul + add"
    same_bits(nb.linear_forward(x, prep), want, "linear_forward, group accumulation")
    # (2) activation scale and bias
    cases = _fma_sensitive(rng, n, b=0.8125)
    b = np.array([cases[0][1]], np.float32)
    ws = np.array([[a] for a, _, _ in cases], np.float32)
    bias = np.array([c for _, _, c in cases], np.float32)
    q = np.zeros((n, 8), np.int8)
    q[:, 0] = 1
    x = np.zeros((5, 8), np.float32)
    x[:, 0] = b[0]
    prep = nb.prepare_linear(spec.pack_int4(q), ws, None, bias, b, 8, 8, policy=spec.ActPolicy.STATIC)
    want = spec.w4a8_matmul(spec.quantize_act_per_tensor(x, b), b, spec.pack_int4(q), ws, None, 8, 8, SYM, bias)
    fused = np.array([_fma32(a, bb, c) for a, bb, c in cases], np.float32)
    assert (fused.view(np.uint32) != want[0].view(np.uint32)).all(), "inputs do not separate FMA from mul + add"
    same_bits(nb.linear_forward(x, prep), want, "linear_forward, xscale and bias (5 rows: 4-row and 1-row tiles)")


def _sensitive_bc(rng, a: int):
    """(b, c), b > 0 and c < 0, with round(round(a * b) + c) != fma(a, b, c) for the integer a."""
    a = np.float32(a)
    while True:
        b = np.float32(rng.uniform(1e-3, 2))
        c = np.float32(-(np.float64(a) * np.float64(b)) * rng.uniform(0.5, 1.0))
        if np.float32(np.float32(a * b) + c) != _fma32(a, b, c):
            return b, c


def test_division_is_not_a_reciprocal_multiply(nb):
    """x / s differs from x * (1 / s) on these inputs; the backend must divide."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-100, 100, (4, 256)).astype(np.float32)
    s = rng.uniform(0.5, 3, 256).astype(np.float32)
    recip = (x * (np.float32(1) / s)).astype(np.float32)
    assert (recip != x / s).any()
    same_bits(nb.lae_apply_activation(x, s), spec.lae_apply_activation(x, s), "lae_apply_activation")
    sc = np.float32(0.37)
    xq = (np.arange(-300, 300, dtype=np.float32) * sc + sc / 2).astype(np.float32).reshape(1, -1)  # near ties
    assert (np.rint(xq * (np.float32(1) / sc)) != np.rint(xq / sc)).any()
    same_bits(nb.quantize_act_per_tensor(xq, sc), spec.quantize_act_per_tensor(xq, sc), "quantize near ties")


# ------------------------------------------------------------------------------- the prepared linear (blocked)

# (M, N, K, G): M around the 4-row tiles and past the 64-row cache chunk, N not a multiple of the
# 16-row blocks, odd K and ragged last groups (steps of 8 columns), G = 8 (one step per group),
# per-channel G = K, G not a multiple of 8 (the packed fallback), empty M.
LINEAR_SHAPES = [
    (1, 576, 576, 128), (1, 17, 72, 8), (3, 40, 131, 16), (4, 33, 256, 64), (5, 16, 24, 24),
    (9, 50, 300, 32), (70, 20, 136, 128), (2, 7, 13, 8), (6, 5, 70, 6), (0, 9, 64, 32),
    (13, 18, 2500, 1000), (3, 20, 4100, 32),   # K past blocked.K_CHUNK: the groups in ranges, sums carried
]


def _linear_case(seed, m, n, k, g, fmt, policy, bias):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 3.0, (n, 1)).astype(np.float32)
    qw = spec.quantize_weight(w, g, fmt)
    packed = spec.pack_int4(qw.q, signed=fmt is SYM)
    x = (rng.standard_normal((m, k)) * rng.choice([1, 40], k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    act = None if policy is spec.ActPolicy.DYNAMIC else np.array([0.07], np.float32)
    if act is None:
        qx, xs = spec.quantize_act_per_token(x)
    else:
        qx, xs = spec.quantize_act_per_tensor(x, act), act
    want = spec.w4a8_matmul(qx, xs, packed, qw.scale, qw.zero, k, g, fmt, b)
    return (packed, qw.scale, qw.zero, b, act, k, g, fmt, policy), x, want


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "parallel"])
@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", LINEAR_SHAPES)
def test_prepared_linear_identical_to_spec(nb, monkeypatch, m, n, k, g, fmt, parallel):
    """linear_forward (blocked VNNI kernel, quantizer fused) == spec.w4a8_matmul(spec quantize(x)),
    both policies, with and without bias, on one thread and on the parallel kernel."""
    from fptq.backends.numba_kernels import blocked
    monkeypatch.setattr(blocked, "PARALLEL_MIN_MACS", 0 if parallel else 1 << 62)
    for policy, bias in ((spec.ActPolicy.DYNAMIC, True), (spec.ActPolicy.STATIC, False)):
        args, x, want = _linear_case([m, n, k, g, parallel], m, n, k, g, fmt, policy, bias)
        prep = nb.prepare_linear(*args)
        assert (prep.kernel is not None) == (g % 8 == 0), "blocked layout used iff G % 8 == 0"
        got, finite = nb.linear_forward_finite(x, prep)
        same_bits(got, want, f"linear_forward {policy.value}")
        assert finite is True


def test_prepared_linear_extreme_sums(nb):
    """Every |x| equal (all codes +-127) against all-(-8) symmetric / all-15 asymmetric (z = 0) nibbles:
    the largest group sums the quantizer can produce, through the blocked kernel."""
    k, g = 512, 256
    x = np.full((5, k), -3.0, np.float32)
    for fmt, q, zero in ((SYM, np.full((20, k), -8, np.int8), None),
                         (ASYM, np.full((20, k), 15, np.int8), np.zeros((20, 2), np.uint8))):
        packed = spec.pack_int4(q, signed=fmt is SYM)
        ws = np.full((20, 2), 0.5, np.float32)
        prep = nb.prepare_linear(packed, ws, zero, None, None, k, g, fmt)
        qx, xs = spec.quantize_act_per_token(x)
        same_bits(nb.linear_forward(x, prep), spec.w4a8_matmul(qx, xs, packed, ws, zero, k, g, fmt),
                  f"extreme sums {fmt.value}")


@pytest.mark.parametrize("k,g", [(1536, 128), (300, 64), (131, 24), (7, 8), (200, 200), (1000, 72)])
def test_blocked_group_sums_are_exact(k, g):
    """The activation group sums (``blocked._group_sums``: 64-byte vector sums, then 8-byte, then single
    bytes) equal NumPy's int64 sums on every group, ragged last group included, at both extremes
    (all -128 / all 127) and on random codes."""
    from fptq.backends.numba_kernels import blocked
    ng = -(-k // g)
    rng = np.random.default_rng(k + g)
    for row in (np.full(k + 64, -128, np.int8), np.full(k + 64, 127, np.int8),
                rng.integers(-128, 128, k + 64).astype(np.int8)):
        got = np.zeros(ng, np.int32)
        blocked._group_sums(row, k, g, got)
        want = np.array([row[j * g:min((j + 1) * g, k)].astype(np.int64).sum() for j in range(ng)])
        assert np.array_equal(got.astype(np.int64), want), (k, g)


@pytest.mark.parametrize("m", [1, 9], ids=["decode", "tiles-8-1"])
def test_blocked_zero_points_are_one_byte_per_lane(nb, m):
    """The blocked layout stores its zero points as uint8 [nblk, ng, 16] (16 bytes per block-group, not
    64: issue 24's decode traffic), 8 for symmetric weights and 0 on the padding rows past N, and the tile
    reads 16 of them per group: asymmetric weights with zero points 0 and 15 mixed in every group (a load
    of the wrong width or stride mixes lanes or groups) and symmetric ones give the spec's bits."""
    n, k, g = 37, 300, 64
    ng, nblk = spec.num_groups(k, g), (n + 15) // 16
    rng = np.random.default_rng(24)
    x = (rng.standard_normal((m, k)) * 30).astype(np.float32)
    ws = rng.uniform(1e-3, 1e-1, (n, ng)).astype(np.float32)
    zero = np.where(rng.random((n, ng)) < 0.5, 0, 15).astype(np.uint8)
    zero[0], zero[1] = 0, 15
    for fmt, q, z in ((ASYM, rng.integers(0, 16, (n, k)).astype(np.int8), zero),
                      (SYM, rng.integers(-8, 8, (n, k)).astype(np.int8), None)):
        packed = spec.pack_int4(q, signed=fmt is SYM)
        prep = nb.prepare_linear(packed, ws, z, None, None, k, g, fmt)
        zc = prep.kernel.zc
        assert zc.dtype == np.uint8 and zc.shape == (nblk, ng, 16) and zc.nbytes == nblk * ng * 16
        lanes = zc.transpose(0, 2, 1).reshape(nblk * 16, ng)
        assert (lanes[:n] == (zero if fmt is ASYM else 8)).all() and (lanes[n:] == 0).all()
        qx, xs = spec.quantize_act_per_token(x)
        same_bits(nb.linear_forward(x, prep), spec.w4a8_matmul(qx, xs, packed, ws, z, k, g, fmt),
                  f"uint8 zero points {fmt.value}, M = {m}")


def test_prepared_linear_refuses_non_finite_x_with_the_specs_error(nb):
    """The finiteness check is fused into the kernel's quantizer; the error is still the spec's own."""
    args, x, _ = _linear_case(5, 3, 20, 64, 32, SYM, spec.ActPolicy.DYNAMIC, True)
    prep = nb.prepare_linear(*args)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x.copy()
        xb[2, 17] = bad
        with pytest.raises(ValueError) as got:
            nb.linear_forward(xb, prep)
        with pytest.raises(ValueError) as want:
            spec.quantize_act_per_token(xb)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match=r"^x: expected K=64 columns.*\[quantize_act_per_token, docs/spec.md §9\]"):
        nb.linear_forward(x[:, :19], prep)
    # another real dtype is converted to float32 as the spec's quantizer does (same bits)
    assert nb.linear_forward(x.astype(np.float64), prep).tobytes() == nb.linear_forward(x, prep).tobytes()


def test_prepared_linear_reports_a_non_finite_output(nb):
    """Scales at the top of float32: the kernel's own output scan says the output is not finite."""
    k, g = 64, 32
    q = np.full((16, k), 7, np.int8)
    ws = np.full((16, 2), 3e38, np.float32)
    prep = nb.prepare_linear(spec.pack_int4(q), ws, None, None, None, k, g)
    with np.errstate(all="ignore"):
        y, finite = nb.linear_forward_finite(np.full((2, k), 5.0, np.float32), prep)
    assert finite is False and not np.isfinite(y).all()
    y, finite = nb.linear_forward_finite(np.zeros((2, k), np.float32), prep)
    assert finite is True


def _tile_runner(t4, t1):
    """An uncached njit driver of a pair of tile intrinsics (4 rows, 1 row) over every block, the
    groups in two ranges (the epilogue sums stored after the first and carried on)."""
    from fptq.backends.numba_kernels import blocked as B

    @numba.njit(error_model="numpy")
    def run(xq, xs, xsum, wb, zc, wsb, bb, g, steps_last, y):
        ng = zc.shape[1]
        for blk in range(wb.shape[0]):
            wp = B._address(wb) + blk * wb.shape[1] * 64
            zp, wsp, bp = B._address(zc) + blk * ng * 16, B._address(wsb) + blk * ng * 64, B._address(bb) + blk * 64
            for g0, g1 in ((0, ng // 2), (ng // 2, ng)):
                m = 0
                while m < xq.shape[0]:
                    args = (wp, B._address(xq) + m * xq.shape[1], np.int64(xq.shape[1]),
                            B._address(xsum) + m * ng * 4, np.int64(ng), zp, wsp, np.int64(ng), np.int64(g // 8),
                            np.int64(steps_last), B._address(xs) + m * 4, bp, np.int64(1),
                            B._address(y) + (m * y.shape[1] + blk * 16) * 4, np.int64(y.shape[1]),
                            np.int64(g0), np.int64(g1), np.int64(g0 == 0), np.int64(g1 == ng))
                    if m + 4 <= xq.shape[0]:
                        t4(*args)
                        m += 4
                    else:
                        t1(*args)
                        m += 1

    return run


def _run_tiles(run, fmt):
    """(the tiles' output, the spec's) for one layer with bias, 6 rows (a 4-row tile and two 1-row tiles)."""
    from fptq.backends.numba_kernels import blocked as B

    args, x, want = _linear_case(9, 6, 37, 136, 32, fmt, spec.ActPolicy.DYNAMIC, True)
    packed, ws, zero, b, _, k, g, _, _ = args
    ng = spec.num_groups(k, g)
    wb, zc = B.repack(packed, np.zeros((37, ng), np.uint8) if zero is None else zero, k, g, fmt is SYM)
    bb = np.zeros(wb.shape[0] * 16, np.float32)
    bb[:37] = b
    xq, xs, xsum, y = B._buffers(x.shape[0], wb, zc)
    assert B.quantize_rows(x, x.view(np.uint32), np.float32(1), True, g, xq, xs, xsum, 0, x.shape[0]) == 0
    run(xq, xs, xsum, wb, zc, B.block_rows(ws, wb.shape[0]), bb, g, (k - (ng - 1) * g + 7) // 8, y)
    return np.ascontiguousarray(y[:, :37]), want


def test_blocked_tile_without_vnni_gives_the_same_bits():
    """The portable tile (plain widening multiplies, for CPUs without AVX-512 VNNI) == the spec."""
    from fptq.backends.numba_kernels import tile as T

    run = _tile_runner(T._make_tile(4, False), T._make_tile(1, False))
    for fmt in (SYM, ASYM):
        same_bits(*_run_tiles(run, fmt), f"portable tile {fmt.value}")


# ---------------------------------------------------------------------------------- compilation settings

def _dispatchers():
    from fptq.backends import numba_kernels as k
    from numba.core.registry import CPUDispatcher
    for mod in (k.activation, k.lae, k.weights, k.packing, k.matmul, k.policy, k.simd, k.blocked):
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher):
                yield f"{mod.__name__}.{name}", obj


def test_every_kernel_is_cached_and_exact():
    from numba.core.caching import NullCache
    found = list(_dispatchers())
    assert len(found) > 30
    for name, d in found:
        assert not isinstance(d._cache, NullCache), f"{name}: compiled without cache=True"
        assert not d.targetoptions.get("fastmath"), f"{name}: fastmath on"
        assert d.targetoptions.get("error_model") == "numpy", f"{name}: error_model"


_CACHE_SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from fptq.backends.numba_kernels import packing
    q = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    packing.pack_int4(q)
    st = packing.pack_int4.stats
    print(json.dumps({"hits": sum(st.cache_hits.values()), "misses": sum(st.cache_misses.values())}))
""")


def test_second_process_loads_the_cache(tmp_path):
    """cache=True: a fresh process with the cache warm loads the machine code (hits, no misses)."""
    import json
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [json.loads(subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, capture_output=True,
                                      text=True, check=True, timeout=300).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0] == {"hits": 0, "misses": 1}, runs
    assert runs[1] == {"hits": 1, "misses": 0}, runs
    assert any(p.suffix == ".nbc" for p in tmp_path.rglob("*"))


def _host_has_vnni() -> bool:
    import llvmlite.binding as llvm
    feats = llvm.get_host_cpu_features()
    return bool(feats.get("avx512vnni") or feats.get("avxvnni"))


@pytest.mark.skipif(not _host_has_vnni(), reason="the host CPU has no AVX-512 VNNI / AVX-VNNI")
def test_simd_dot_compiles_to_vnni():
    """The byte dot product of the packed matmul paths becomes vpdpbusd (64 products per instruction)."""
    from fptq.backends.numba_kernels import simd

    @numba.njit(error_model="numpy")
    def dot(w, xe, xo):
        return simd.dot1_64(simd.address(w), simd.address(xe), simd.address(xo), 64, np.uint8(0x88))

    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, 64).astype(np.uint8)
    xe, xo = rng.integers(-128, 128, (2, 64)).astype(np.int8)
    u = (w ^ 0x88).astype(np.int64)
    assert dot(w, xe, xo) == int(((u & 15) * xe + (u >> 4) * xo).sum())
    asm = dot.inspect_asm(dot.signatures[0])
    assert "vpdpbusd" in asm


@pytest.mark.skipif(not _host_has_vnni(), reason="the host CPU has no AVX-512 VNNI / AVX-VNNI")
def test_blocked_tile_compiles_to_vnni():
    """The prepared linear's tile multiplies with vpdpbusd on 512-bit vectors (16 lanes x 4 products)."""
    from fptq.backends.numba_kernels import blocked as B
    if not B.USE_VNNI:
        pytest.skip("AVX-VNNI without AVX-512: the portable tile is used")
    run = _tile_runner(B.tile4, B.tile1)
    same_bits(*_run_tiles(run, SYM), "VNNI tile")
    asm = run.inspect_asm(run.signatures[0])
    assert "vpdpbusd" in asm and "zmm" in asm


def test_bench_matmul_linear_rows_agree_bit_for_bit(tmp_path):
    """benchmarks/bench_matmul.py on a tiny case: the NAME:linear rows (numpy, numba) agree bit for bit,
    the memory floor is timed at M = 1, and the JSON says so (exit status 0)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_matmul.py"
    spec_ = importlib.util.spec_from_file_location("bench_matmul_under_test", path)
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    out = tmp_path / "b.json"
    rc = bench.main(["--backends", "numpy,numba", "--m", "1,20", "--shapes", "40x72", "--group-size", "8",
                     "--budget", "0.05", "--min-reps", "1", "--max-reps", "3", "--no-baselines",
                     "--omp-wait-policy", "env", "--out", str(out)])
    assert rc == 0
    cases = json.loads(out.read_text())["results"][0]["cases"]
    names = {c["m"]: {r["name"]: r for r in c["variants"]} for c in cases}
    for m in (1, 20):
        assert names[m]["numba:linear"]["bit_exact_agreement"] is True
        assert names[m]["numpy:linear"]["bit_exact_agreement"] is True
    assert names[1]["read weights (floor)"]["reps"] >= 1 and "read weights (floor)" not in names[20]
