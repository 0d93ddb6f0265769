"""The cupy backend on a GPU: every W4A8 matmul path against the spec, bit for bit.

The conformance suite (``--backend cupy``) checks every operation on small,
edge-weighted inputs, where most matmuls take the generic kernel. These tests
pin each path (``CupyBackend(force_path=...)``) and run it on shapes that
cross its tiles: decode for M = 1..16, prefill (both tile sizes) for M up to
260, K up to 4096, ragged last groups, per-channel G, both weight formats, a
bias or none, per-token or per-tensor activation scales, int8 -128 and every
nibble. Each output is poisoned (a NaN bit pattern written into the output
array itself, after the argument checks and allocations, just before the
launch) so an unwritten element fails. Larger shapes are compared across paths (every path
is exact, so all must agree), and the elementwise kernels run past one
grid-stride. Inputs are fresh random draws each run; the seed is in the
failure message. Skipped without CuPy or a GPU (``pytest.mark.gpu``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fptq import spec
from fptq.backends import BackendUnavailable
from fptq.spec import WeightFormat

pytestmark = pytest.mark.gpu
F32 = np.float32
SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC
SEED = int(os.environ.get("FPTQ_GPU_SEED", np.random.SeedSequence().entropy % 2**31))


def _backend(force=None):
    from fptq.backends.cupy_backend import CupyBackend
    try:
        return CupyBackend(force_path=force)
    except BackendUnavailable as e:
        pytest.skip(f"cupy backend unavailable: {e}")


@pytest.fixture(scope="module")
def backends():
    return {p: _backend(p) for p in ("decode", "prefill", "generic")} | {"auto": _backend()}


def _case(rng, m, n, k, g, fmt, per_token, with_bias):
    qx = rng.integers(-128, 128, (m, k), dtype=np.int8)
    qx.reshape(-1)[: min(qx.size, 7)] = -128
    signed = fmt is SYM
    q = rng.integers(-8, 8, (n, k), dtype=np.int8) if signed else rng.integers(0, 16, (n, k), dtype=np.int8)
    packed = spec.pack_int4(q, signed)
    gg = k if g == -1 else g
    ng = spec.num_groups(k, gg)
    # scales of similar magnitude (an FMA or a reordered sum shows) and some far apart
    wscale = (rng.uniform(0.5, 2.0, (n, ng)) * 2.0 ** rng.integers(-12, 4, (n, ng))).astype(F32)
    zero = rng.integers(0, 16, (n, ng), dtype=np.uint8) if not signed else None
    xscale = (rng.uniform(0.01, 1.0, m) if per_token else rng.uniform(0.01, 1.0, 1)).astype(F32)
    bias = rng.standard_normal(n).astype(F32) if with_bias else None
    return dict(qx=qx, xscale=xscale, packed=packed, wscale=wscale, zero=zero, k=k, group_size=g, fmt=fmt,
                bias=bias)


#: A signalling-NaN pattern no kernel computes: an output element still holding it was never written.
POISON = 0x7FBADBAD


def _run(b, case):
    """One matmul through ``matmul_launcher`` (the checks, then the allocations), with the output poisoned
    after both and just before the launch: no validation temporary can take the poisoned memory from the
    pool (filling a freed block and hoping the output reuses it could be undone by one), and the fill is
    an integer one (CuPy's float kernels flush subnormals; a NaN fill would not matter, but bits are bits)."""
    cp = b.cp
    dev = {key: (b.from_numpy(v) if isinstance(v, np.ndarray) else v) for key, v in case.items()}
    launch, out = b.matmul_launcher(**dev)
    out.view(cp.uint32).fill(POISON)
    launch()
    y = b.to_numpy(out)
    unwritten = y.view(np.uint32) == POISON
    if unwritten.any():
        raise AssertionError(f"{b.last_path}: {int(unwritten.sum())} of {y.size} output elements never written, "
                             f"first y{[int(i) for i in np.argwhere(unwritten)[0]]} (FPTQ_GPU_SEED={SEED})")
    return y, b.last_path


def _run_public(b, case):
    """The public w4a8_matmul (checks included), for the tests that compare it with the launcher's result."""
    dev = {key: (b.from_numpy(v) if isinstance(v, np.ndarray) else v) for key, v in case.items()}
    return b.to_numpy(b.w4a8_matmul(**dev)), b.last_path


def _assert_bits(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    bad = got.view(np.uint32) != want.view(np.uint32)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: y{list(idx)} = {got[idx]!r} (0x{got.view(np.uint32)[idx]:08x}), spec "
                             f"{want[idx]!r} (0x{want.view(np.uint32)[idx]:08x}); {int(bad.sum())} of {bad.size} "
                             f"differ (FPTQ_GPU_SEED={SEED})")


DECODE_SHAPES = [(m, n, k, g) for m in (1, 2, 3, 5, 8, 13, 16) for (n, k, g) in
                 ((1, 32, 32), (17, 96, 64), (100, 576, 128), (257, 1024, -1), (64, 4096, 128))]
PREFILL_SHAPES = [(m, n, k, g) for m in (1, 17, 64, 65, 130, 260) for (n, k, g) in
                  ((8, 32, 32), (65, 96, 64), (129, 576, 128), (200, 256, -1), (64, 1024, 256))]


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("path,shapes", [("decode", DECODE_SHAPES), ("prefill", PREFILL_SHAPES)])
def test_fast_path_matches_spec(backends, path, shapes, fmt):
    rng = np.random.default_rng([SEED, {"decode": 1, "prefill": 2}[path], int(fmt is ASYM)])
    for i, (m, n, k, g) in enumerate(shapes):
        case = _case(rng, m, n, k, g, fmt, per_token=bool(i % 2), with_bias=bool(i % 3))
        y, used = _run(backends[path], case)
        assert used == path
        _assert_bits(y, spec.w4a8_matmul(**case), f"{path} M={m} N={n} K={k} G={g} {fmt.value}")


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
def test_generic_path_matches_spec_on_odd_shapes(backends, fmt):
    rng = np.random.default_rng([SEED, 7, int(fmt is ASYM)])
    for m, n, k, g in ((1, 3, 5, 2), (4, 9, 99, 33), (17, 33, 31, -1), (70, 20, 200, 64), (2, 5, 1, 1)):
        case = _case(rng, m, n, k, g, fmt, per_token=True, with_bias=True)
        y, used = _run(backends["auto"], case)
        assert used == "generic"
        _assert_bits(y, spec.w4a8_matmul(**case), f"generic M={m} N={n} K={k} G={g}")


@pytest.mark.parametrize("m", [1, 16, 64, 256])
def test_paths_agree_at_model_sizes(backends, m):
    """N = K = 4096, G = 128 (too large for the NumPy reference at speed): every path gives the same bits."""
    rng = np.random.default_rng([SEED, m])
    for fmt in (SYM, ASYM):
        case = _case(rng, m, 4096, 4096, 128, fmt, per_token=True, with_bias=False)
        ref, _ = _run(backends["generic"], case)
        fast = "decode" if m <= 16 else "prefill"
        got, used = _run(backends["auto"], case)
        assert used == fast
        _assert_bits(got, ref, f"{fast} vs generic M={m} {fmt.value}")
        _assert_bits(_run_public(backends["auto"], case)[0], ref, f"public w4a8_matmul M={m} {fmt.value}")
    # the generic kernel itself against the spec on a slice of the rows
    sl = dict(case, qx=case["qx"][:1], xscale=case["xscale"][:1])
    _assert_bits(_run(backends["generic"], sl)[0], spec.w4a8_matmul(**sl), "generic M=1 N=K=4096")


def test_elementwise_kernels_past_one_grid_stride(backends):
    """3M elements: more than 32 blocks x 132 SMs x 256 threads, so the grid-stride loops wrap."""
    b = backends["auto"]
    rng = np.random.default_rng([SEED, 99])
    x = (rng.standard_normal((48, 65536)) * 2.0 ** rng.integers(-130, 20, (48, 65536))).astype(F32)
    s = np.array(0.37, F32)
    np.testing.assert_array_equal(b.to_numpy(b.quantize_act_per_tensor(b.from_numpy(x), b.from_numpy(s))),
                                  spec.quantize_act_per_tensor(x, s))
    q, sc = b.quantize_act_per_token(b.from_numpy(x))
    rq, rs = spec.quantize_act_per_token(x)
    np.testing.assert_array_equal(b.to_numpy(q), rq)
    assert b.to_numpy(sc).tobytes() == rs.tobytes()
    w = x[:, :4096].copy()
    for fmt in (SYM, ASYM):
        got = b.quantize_weight(b.from_numpy(w), 128, fmt)
        want = spec.quantize_weight(w, 128, fmt)
        np.testing.assert_array_equal(b.to_numpy(got.q), want.q)
        assert b.to_numpy(got.scale).tobytes() == want.scale.tobytes()
        packed = b.pack_int4(got.q, fmt is SYM)
        np.testing.assert_array_equal(b.to_numpy(packed), spec.pack_int4(want.q, fmt is SYM))
        np.testing.assert_array_equal(b.to_numpy(b.unpack_int4(packed, 4096, fmt is SYM)), want.q)
