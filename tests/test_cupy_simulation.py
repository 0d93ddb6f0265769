"""The GEMM kernels' thread-level transcriptions and the emulated backend, checked against the spec.

``tests/cupy_sim.py`` transcribes ``gemm_decode.cu`` and ``gemm_prefill.cu``
thread by thread (tile order, shared-memory layouts, stage ring with
``cp.async`` groups, ``wait_group`` counts and barriers, lane mappings, the
``tr[warp][v][lane]`` transpose); ``tests/cupy_emulated.py`` runs
``CupyBackend``'s host code over NumPy with every kernel emulated and every
launch's argument types checked against the kernel's parameters. Both are
checked here against ``fptq.spec`` bit for bit, and planted bugs in the
transcriptions (a stage index, a wait count, a missing barrier, a swapped
lane mapping, a reversed group order) and in the host code (an i64 where the
kernel takes an int) must fail.
"""

from __future__ import annotations

import inspect
import textwrap

import numpy as np
import pytest

import cupy_emulated as E
import cupy_sim as S
from cupy_emulated import EmulatedCupyBackend  # noqa: F401  (pytest conformance --backend test_cupy_simulation:...)
from cupy_sim import F32, sim_decode, sim_prefill
from fptq import spec
from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L
from fptq.spec import WeightFormat

SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC


def _case(seed, m, n, k, g, fmt, per_token, with_bias):
    rng = np.random.default_rng(seed)
    signed = fmt is WeightFormat.SYMMETRIC
    q = rng.integers(-8, 8, (n, k), dtype=np.int8) if signed else rng.integers(0, 16, (n, k), dtype=np.int8)
    ng = spec.num_groups(k, g)
    qx = rng.integers(-128, 128, (m, k), dtype=np.int8)
    qx[0, :3] = -128
    return dict(qx=qx, xscale=rng.uniform(0.01, 1, m if per_token else 1).astype(F32),
                packed=spec.pack_int4(q, signed),
                wscale=(rng.uniform(0.5, 2, (n, ng)) * 2.0 ** rng.integers(-10, 3, (n, ng))).astype(F32),
                zero=None if signed else rng.integers(0, 16, (n, ng), dtype=np.uint8), k=k, group_size=g, fmt=fmt,
                bias=rng.standard_normal(n).astype(F32) if with_bias else None)


def _check(got, case):
    want = spec.w4a8_matmul(**case)
    assert not np.isnan(got).any(), "an output element was not written"
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), f"first difference at {tuple(np.argwhere(bad)[0])}: {got[bad][0]} vs {want[bad][0]}"


def _sim_args(case):
    return {key: v for key, v in case.items() if key != "group_size"} | {"g": case["group_size"]}


def _mutant(fn, old: str, new: str):
    """``fn`` of cupy_sim with one planted change in its source (``old`` must occur exactly once)."""
    src = textwrap.dedent(inspect.getsource(fn))
    assert src.count(old) == 1, f"{old!r} occurs {src.count(old)} times in {fn.__name__}"
    ns = dict(vars(S))
    exec(compile(src.replace(old, new), f"<planted bug in {fn.__name__}>", "exec"), ns)  # noqa: S102
    return ns[fn.__name__]


def test_transcriptions_use_the_kernels_constants():
    """DEC_WARPS, DEC_ROWS and PF_STAGES are read from the .cu files; the chunk rule and the launch module agree."""
    assert (S.DEC_WARPS, S.DEC_ROWS) == (L.DECODE_WARPS, L.DECODE_ROWS)
    assert "value = MT <= 4 ? 4 : MT == 8 ? 2 : 1;" in CC.read_source("gemm_decode.cu")
    assert [S.decode_chunks(mt) for mt in L.DECODE_MT] == [4, 4, 4, 2, 1]


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", [(1, 5, 64, 32), (3, 6, 96, 64), (16, 4, 64, 64), (2, 9, 32 * 35, 32),
                                     (5, 3, 320, 160), (8, 17, 288, 128)])
def test_decode_transcription(m, n, k, g, fmt):
    """Ragged last groups (96 = 64 + 32; 288 = 2 x 128 + 32), MT > M (3 -> 4, 5 -> 8), N not a multiple of
    the rows per warp, more than 32 groups (two rounds of the ordered sum), groups of several batches
    (G = 160 at MT = 8: 3 batches of 2 chunks, the last one past the group's end)."""
    case = _case([m, n, k, g], m, n, k, g, fmt, per_token=m > 1, with_bias=n % 2 == 1)
    _check(sim_decode(**_sim_args(case)), case)


@pytest.mark.parametrize("landing", ["lazy", "eager"])
@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
def test_prefill_transcription(fmt, landing):
    """The 64 x 64 tile over M = 70, N = 66 (a second tile row and column, mostly padding),
    K = 96, G = 64 (a ragged last group, a zero point change mid-tile)."""
    m, n, k, g = 70, 66, 96, 64
    case = _case([m, n, k, g, 1], m, n, k, g, fmt, per_token=True, with_bias=True)
    _check(sim_prefill(**_sim_args(case), tile=L.PREFILL_TILES[-1], landing=landing), case)


RING = dict(m=20, n=12, k=32 * 7, g=64)  # 7 steps through the 4-stage ring, 4 groups (the last one ragged)


@pytest.mark.parametrize("landing", ["lazy", "eager"])
def test_prefill_ring_wraps(landing):
    case = _case([7], **RING, fmt=ASYM, per_token=True, with_bias=False)
    _check(sim_prefill(**_sim_args(case), tile=L.PREFILL_TILES[-1], landing=landing), case)


def test_prefill_big_tile_small_problem():
    m, n, k, g = 17, 9, 64, 32
    case = _case([5], m, n, k, g, SYM, per_token=False, with_bias=False)
    _check(sim_prefill(**_sim_args(case), tile=L.PREFILL_TILES[0]), case)


def test_simulation_catches_a_wrong_fragment_permutation(monkeypatch):
    """Pairing slot tig*4+i of A with the odd columns instead of the even ones (swapping the two byte
    selectors of the A fragments) gives wrong sums."""
    case = _case([9], 16, 8, 64, 64, SYM, per_token=False, with_bias=False)
    good = S.byte_perm
    monkeypatch.setattr(S, "byte_perm", lambda a, b, sel: good(a, b, {0x6420: 0x7531, 0x7531: 0x6420}[sel]))
    with pytest.raises(AssertionError):
        _check(sim_prefill(**_sim_args(case), tile=L.PREFILL_TILES[-1]), case)


PREFILL_BUGS = {
    "stage index of the copies": ("PF_STAGES - 1 if st == 0 else st - 1", "st"),
    "wait_group count": ("cp.wait(warp * 32 + lane, PF_STAGES - 2)", "cp.wait(warp * 32 + lane, PF_STAGES - 1)"),
    "missing __syncthreads": ("yield  # __syncthreads", "if False:\n            yield"),
    "fold before the group's end": ("if first:\n            if grp >= 0:", "if True:\n            if grp >= 0:"),
    "next group's metadata": ("min(grp + 1, a[\"ng\"] - 1)", "min(grp, a[\"ng\"] - 1)"),
}


@pytest.mark.parametrize("bug", list(PREFILL_BUGS))
def test_planted_prefill_bug_fails(bug, monkeypatch):
    """Each planted bug in prefill_warp's transcription gives wrong bits in at least one legal timing of
    the cp.async copies (lazy: they land at the wait; eager: at issue)."""
    monkeypatch.setattr(S, "prefill_warp", _mutant(S.prefill_warp, *PREFILL_BUGS[bug]))
    case = _case([7], **RING, fmt=ASYM, per_token=True, with_bias=False)
    failed = []
    for landing in ("lazy", "eager"):
        try:
            _check(sim_prefill(**_sim_args(case), tile=L.PREFILL_TILES[-1], landing=landing), case)
        except AssertionError:
            failed.append(landing)
    assert failed, f"planted bug ({bug}) passed both timings"


DECODE_BUGS = {
    "tr lane mapping (v = m * DEC_ROWS + r)": (S._decode_group, "tr[warp, r * mt + m, lane]",
                                               "tr[warp, m * DEC_ROWS + r, lane]"),
    "group order of the ordered sum": (S.sim_decode, "tr[warp, lane, i]", "tr[warp, lane, cnt - 1 - i]"),
    "chunk mask": (S._decode_group, "keep = 0xFFFFFFFF if e + 32 * c < e1 else 0", "keep = 0xFFFFFFFF"),
    "row clamp": (S._decode_group, "row = min(n0 + r, n_rows - 1)", "row = min(n0, n_rows - 1)"),
}


@pytest.mark.parametrize("bug", list(DECODE_BUGS))
def test_planted_decode_bug_fails(bug, monkeypatch):
    fn, old, new = DECODE_BUGS[bug]
    monkeypatch.setattr(S, fn.__name__, _mutant(fn, old, new))
    case = _case([11], 4, 9, 288, 96, ASYM, per_token=True, with_bias=True)
    with pytest.raises(AssertionError):
        _check(S.sim_decode(**_sim_args(case)), case)


def test_launch_argument_types_are_checked(monkeypatch):
    """An i64 passed where the kernel takes an int (or a Python int anywhere) fails at launch."""
    import fptq.backends.cupy_backend as CB

    case = _case([3], 2, 8, 64, 32, SYM, per_token=True, with_bias=False)
    EmulatedCupyBackend().w4a8_matmul(**case)
    monkeypatch.setattr(CB, "_I32", np.int64)
    with pytest.raises(TypeError, match=r"m_rows \(int\) is int64, expected int32"):
        EmulatedCupyBackend().w4a8_matmul(**case)
    monkeypatch.setattr(CB, "_I32", int)
    with pytest.raises(TypeError, match="expected int32"):
        EmulatedCupyBackend(force_path="generic").w4a8_matmul(**case)
    with pytest.raises(TypeError, match="dtype int8, expected uint8"):
        CC.check_launch_args("packing", "unpack_int4", (np.zeros(2, np.int8), np.zeros(2, np.int8),
                                                       np.int64(1), np.int64(2), np.int32(1)))


def test_transcribed_kernels_do_not_call_the_spec(monkeypatch):
    """w4a8_group_sums, w4a8_epilogue and unpack_int4 are transcribed from matmul.cu / packing.cu, not
    computed by the spec they are checked against."""
    rng = np.random.default_rng(4)
    qx = rng.integers(-128, 128, (3, 70), dtype=np.int8)
    q = rng.integers(0, 16, (5, 70), dtype=np.int8)
    packed, zero = spec.pack_int4(q, False), rng.integers(0, 16, (5, 3), dtype=np.uint8)
    want_acc = spec.w4a8_group_sums(qx, packed, zero, 70, 32, ASYM)
    ws, xs = rng.uniform(0.1, 2, (5, 3)).astype(F32), rng.uniform(0.1, 1, 3).astype(F32)
    bias = rng.standard_normal(5).astype(F32)
    want_y = spec.w4a8_epilogue(want_acc, ws, xs, bias)
    for name in ("w4a8_group_sums", "w4a8_epilogue", "unpack_int4", "w4a8_matmul"):
        monkeypatch.setattr(spec, name, lambda *a, **k: pytest.fail("a transcription called the spec"))
    acc = np.zeros((3, 5, 3), np.int32)
    E._k_group_sums((4,), (256,), qx, packed, zero, acc, 3, 5, 70, 32, 3, 1)
    assert np.array_equal(acc, want_acc)
    y = np.zeros((3, 5), F32)
    E._k_epilogue((4,), (256,), acc, ws, xs, bias, y, 3, 5, 3, 1, 1)
    assert y.tobytes() == want_y.tobytes()
    out = np.zeros((5, 70), np.int8)
    E._k_unpack((4,), (256,), packed, out, 5, 70, 0)
    assert np.array_equal(out, q)


# ---------------------------------------------------------------------------------------------
# The whole backend with emulated kernels (tests/cupy_emulated.py)


def _bits_equal(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert got.tobytes() == want.tobytes()


def _compare(b, op, **kw):
    want = getattr(spec, op)(**kw)
    got = getattr(b, op)(**{k: b.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    if isinstance(want, tuple):
        for g_, w_ in zip(got, want):
            if w_ is None or isinstance(w_, (int, WeightFormat)):
                assert g_ == w_
            else:
                _bits_equal(b.to_numpy(g_), w_)
    else:
        _bits_equal(b.to_numpy(got), want)


def test_emulated_backend_every_operation():
    """Every operation through the backend's host code, against the spec, including empty and 0-d inputs."""
    b = EmulatedCupyBackend()
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 7)) * 3).astype(F32)
    x[0, 0] = 1e-45
    for amax in (np.array([0.0, 1e-40, 5.0], F32), np.array(3.0, F32), np.zeros(0, F32)):
        _compare(b, "act_scale_from_amax", amax=amax)
    for xx in (x, np.zeros((0, 3), F32), np.zeros((2, 0), F32)):
        _compare(b, "quantize_act_per_tensor", x=xx, scale=np.array(0.02, F32))
        _compare(b, "quantize_act_per_token", x=xx)
    q = rng.integers(-127, 128, (5, 7), dtype=np.int8)
    _compare(b, "dequantize_act", q=q, scale=np.array([0.5], F32))
    _compare(b, "dequantize_act", q=q, scale=rng.uniform(0.1, 1, 5).astype(F32))
    _compare(b, "dequantize_act", q=q[:1], scale=np.array([0.25], F32))
    _compare(b, "lae_scales", channel_max=np.array([0.0, 1e-45, 1.0, 150.0, 3e38], F32))
    s = rng.uniform(0.5, 4, 7).astype(F32)
    _compare(b, "lae_apply_activation", x=x, s=s)
    _compare(b, "lae_apply_weight", w=x, s=s)
    for fmt in (WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC):
        for g in (2, 3, -1, 100):
            _compare(b, "weight_scales", w=x, group_size=g, fmt=fmt)
            _compare(b, "quantize_weight", w=x, group_size=g, fmt=fmt)
            sc, z = spec.weight_scales(x, g, fmt)
            _compare(b, "quantize_weight_with_scales", w=x, scale=sc, zero=z, group_size=g, fmt=fmt)
            qw = spec.quantize_weight_with_scales(x, sc, z, g, fmt)
            _compare(b, "dequantize_weight", q=qw, scale=sc, zero=z, group_size=g, fmt=fmt)
    with pytest.raises(ValueError, match="overflows"):
        b.weight_scales(np.array([[3e38, -3e38]], F32), 2, WeightFormat.ASYMMETRIC)
    for signed in (True, False):
        q4 = rng.integers(-8, 8, (3, 7), dtype=np.int8) if signed else rng.integers(0, 16, (3, 7), dtype=np.int8)
        _compare(b, "pack_int4", q=q4, signed=signed)
        _compare(b, "unpack_int4", packed=spec.pack_int4(q4, signed), k=7, signed=signed)
    _compare(b, "select_policies", v=np.array([0.0, 14.99, 15.0, 149.0, 150.0, 1e30], F32), v0=15.0, v1=150.0)
    acc = rng.integers(-2**20, 2**20, (3, 4, 2), dtype=np.int32)
    ws = rng.uniform(0.1, 1, (4, 2)).astype(F32)
    _compare(b, "w4a8_epilogue", acc=acc, wscale=ws, xscale=np.array(0.5, F32), bias=None)
    _compare(b, "w4a8_epilogue", acc=acc, wscale=ws, xscale=rng.uniform(0.1, 1, 3).astype(F32),
             bias=rng.standard_normal(4).astype(F32))
    assert set(b.launches) >= {k for k in E._EMULATED if "gemm" not in k and k != "w4a8_group_sums"}


@pytest.mark.parametrize("force,m,n,k,g", [
    (None, 3, 9, 64, 32), (None, 20, 9, 64, 64), (None, 2, 5, 99, 33), ("generic", 3, 9, 64, 32),
    ("prefill", 2, 9, 96, 64), ("decode", 16, 3, 64, 32), (None, 0, 4, 64, 32), (None, 4, 0, 64, 32),
])
@pytest.mark.parametrize("fmt", [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC], ids=["sym", "asym"])
def test_emulated_backend_matmul_paths(force, m, n, k, g, fmt):
    b = EmulatedCupyBackend(force_path=force)
    case = _case([m, n, k, g, 2], max(m, 1), max(n, 1), k, g, fmt, per_token=m > 1, with_bias=True)
    case = dict(case, qx=case["qx"][:m], xscale=case["xscale"][:m] if m > 1 else case["xscale"],
                packed=case["packed"][:n], wscale=case["wscale"][:n],
                zero=None if case["zero"] is None else case["zero"][:n], bias=case["bias"][:n])
    _compare(b, "w4a8_matmul", **case)
    want = force or ("generic" if k % 32 or g % 32 or not m or not n else "decode" if m <= 16 else "prefill")
    assert b.last_path == want
    _compare(b, "w4a8_group_sums", qx=case["qx"], packed=case["packed"], zero=case["zero"], k=k, group_size=g,
             fmt=fmt)


def test_gpu_tests_poison_the_output_itself(monkeypatch):
    """tests/test_cupy_gpu.py's _run poisons the launcher's own output array after the checks: an element
    the kernel leaves unwritten fails there (run here over the emulated backend)."""
    import test_cupy_gpu as G

    case = _case([13], 3, 8, 64, 32, SYM, per_token=True, with_bias=True)
    b = EmulatedCupyBackend()
    y, path = G._run(b, case)
    assert path == "decode" and y.tobytes() == spec.w4a8_matmul(**case).tobytes()
    real = b.matmul_launcher

    def one_short(*a, **k):
        launch, out = real(*a, **k)
        return (lambda: (launch(), out.view(np.uint32).__setitem__((1, 2), G.POISON))), out
    monkeypatch.setattr(b, "matmul_launcher", one_short)
    with pytest.raises(AssertionError, match=r"1 of 24 output elements never written, first y\[1, 2\]"):
        G._run(b, case)
