"""The torch backend's own behaviour: devices and dtypes, the fast integer path against the
exact float64 path, the tiled/fused/batched epilogues, large-K sums, the prepared-weight API.

Operation-by-operation conformance with the spec is ``pytest conformance/ --backend torch``;
these tests cover what that suite does not reach. Every result is compared with
``fptq.spec`` bit for bit (float32 results through their uint32 bit patterns).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")

from fptq import spec  # noqa: E402
from fptq.backends import BackendUnavailable, get_backend  # noqa: E402
from fptq.backends import torch_matmul as MM  # noqa: E402
from fptq.backends.torch_backend import TorchBackend, TorchCudaBackend  # noqa: E402

SYM, ASYM = spec.WeightFormat.SYMMETRIC, spec.WeightFormat.ASYMMETRIC


def assert_same(got, want, what=""):
    """Exact equality: same dtype, shape and bits (float32 compared as uint32)."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
    g, w = (got.view(np.uint32), want.view(np.uint32)) if want.dtype == np.float32 else (got, want)
    if not np.array_equal(g, w):
        idx = tuple(int(i) for i in np.argwhere(g != w)[0])
        raise AssertionError(f"{what}: {got[idx]!r} != {want[idx]!r} at {idx}")


def make_case(rng, m, n, k, g, fmt, bias=True, per_tensor=False):
    """Spec-format inputs of a W4A8 matmul (numpy)."""
    x = (rng.standard_normal((m, k)) * rng.choice([0.01, 1.0, 300.0], size=(1, k))).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if per_tensor:
        xs = np.float32(max(float(np.abs(x).max(initial=0.0)), 1e-3) / 127)
        qx = spec.quantize_act_per_tensor(x, xs)
        xs = np.array([xs], np.float32)
    else:
        qx, xs = spec.quantize_act_per_token(x)
    qw = spec.quantize_weight(w, g, fmt)
    packed = spec.pack_int4(qw.q, signed=fmt is SYM)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return dict(qx=qx, xscale=xs, packed=packed, wscale=qw.scale, zero=qw.zero, k=k, group_size=g, fmt=fmt, bias=b)


def run_matmul(b, c):
    t = {key: (b.from_numpy(v) if isinstance(v, np.ndarray) else v) for key, v in c.items()}
    return b.w4a8_matmul(t["qx"], t["xscale"], t["packed"], t["wscale"], t["zero"], c["k"], c["group_size"],
                         c["fmt"], t["bias"])


def want_matmul(c):
    return spec.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], c["zero"], c["k"], c["group_size"],
                            c["fmt"], c["bias"])


@pytest.fixture(scope="module")
def tb():
    return get_backend("torch")


@pytest.fixture(scope="module")
def slow():
    """The same backend with the integer core on the exact float64 path."""
    return TorchBackend(int_mm=False)


# ---------------------------------------------------------------------------------------- registry
def test_registry_and_describe(tb):
    assert isinstance(tb, TorchBackend) and tb.name == "torch"
    assert tb.device == torch.device("cpu")
    d = tb.describe()
    assert torch.__version__ in d and "cpu" in d and "integer core" in d


def test_torch_cuda_without_gpu_is_unavailable_with_reason():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: covered by test_cuda_matches_spec")
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        TorchCudaBackend()


@pytest.mark.gpu
def test_cuda_matches_spec():
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    b = get_backend("torch-cuda")
    rng = np.random.default_rng(7)
    for m, n, k, g, fmt in [(1, 8, 256, 128, SYM), (5, 13, 77, 32, ASYM), (40, 24, 576, 128, SYM), (3, 3, 1, 1, SYM)]:
        c = make_case(rng, m, n, k, g, fmt)
        y = run_matmul(b, c)
        assert y.device.type == "cuda"
        assert_same(y, want_matmul(c), f"cuda M={m} N={n} K={k} G={g}")


# ---------------------------------------------------------------------------------------- boundary
def test_from_numpy_copies_and_keeps_dtype(tb):
    for dt in (np.int8, np.uint8, np.int32, np.float32):
        a = np.arange(6, dtype=dt).reshape(2, 3)
        t = tb.from_numpy(a)
        assert isinstance(t, torch.Tensor) and t.device == tb.device
        a[0, 0] = 5  # the tensor is a copy
        back = tb.to_numpy(t)
        assert back.dtype == dt and back[0, 0] == 0 and np.array_equal(back[1], np.arange(3, 6, dtype=dt))
    assert tb.from_numpy(np.float32(2.5)).shape == ()


def test_meta_tensor_is_rejected_naming_the_argument(tb):
    qx = torch.zeros((2, 4), dtype=torch.int8, device="meta")
    packed = tb.from_numpy(np.zeros((3, 2), np.uint8))
    with pytest.raises(TypeError, match=r"qx: tensor is on meta"):
        tb.w4a8_group_sums(qx, packed, None, 4, 2)
    with pytest.raises(TypeError, match=r"^x: tensor is on meta"):
        tb.quantize_act_per_token(torch.zeros((2, 2), device="meta"))


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda b, c: b.w4a8_matmul(c["qx"].float(), c["xscale"], c["packed"], c["wscale"], None, 8, 4),
     TypeError, r"qx: expected dtype int8, got float32"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"].view(torch.int8), c["wscale"], None, 8, 4),
     TypeError, r"packed: expected dtype uint8, got int8"),
    (lambda b, c: b.w4a8_matmul(c["qx"][:, :6], c["xscale"], c["packed"], c["wscale"], None, 8, 4),
     ValueError, r"qx: expected K=8"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"][:, :1], None, 8, 4),
     ValueError, r"wscale: expected shape \(3, 2\)"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"][:1].repeat(3), c["packed"], c["wscale"], None, 8, 4),
     ValueError, r"xscale: expected one scale \(shape \(\) or \(1,\)\) or per-token \[2\], got shape \(3,\)"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], None, 8, 4, bias=c["xscale"]),
     ValueError, r"bias: expected shape \(3,\)"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"] * float("inf"), None, 8, 4),
     ValueError, r"wscale contains a non-finite value"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"] * 0, c["packed"], c["wscale"], None, 8, 4),
     ValueError, r"xscale must be > 0"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], c["zero"], 8, 4),
     ValueError, r"zero: the symmetric format has no zero point"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], c["zero"] + 16, 8, 4, "uint4_asym"),
     ValueError, r"zero: zero points must be in \[0, 15\], got 16"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], None, 8, 0),
     ValueError, r"group_size must be in"),
    (lambda b, c: b.w4a8_matmul(c["qx"], c["xscale"], c["packed"], c["wscale"], None, 8, 4, "int3"),
     ValueError, r"int3"),
    (lambda b, c: b.quantize_act_per_token(c["x"].to(torch.complex64)),
     TypeError, r"x: expected a float32 array .*, got dtype complex64"),
    (lambda b, c: b.quantize_act_per_tensor(c["x"], c["x"][0, :2].abs()),
     ValueError, r"scale: expected one scale \(shape \(\) or \(1,\)\), got shape \(2,\)"),
    (lambda b, c: b.lae_apply_activation(c["x"], c["x"][0, :3].abs() + 1),
     ValueError, r"s: expected 4 channel scales"),
    (lambda b, c: b.pack_int4(torch.full((2, 2), 8, dtype=torch.int8)),
     ValueError, r"q: signed INT4 values must be in \[-8, 7\], got 8"),
    (lambda b, c: b.w4a8_matmul_prepared(c["qx"], c["xscale"], c["packed"], c["wscale"]),
     TypeError, r"prepared: expected the result of prepare_weight"),
])
def test_bad_input_gets_a_clear_error(tb, call, exc, pattern):
    c = {"qx": torch.ones((2, 8), dtype=torch.int8), "xscale": torch.ones(2),
         "packed": torch.zeros((3, 4), dtype=torch.uint8),
         "wscale": torch.ones((3, 2)), "zero": torch.zeros((3, 2), dtype=torch.uint8), "x": torch.ones((2, 4))}
    with pytest.raises(exc, match=pattern):
        call(tb, c)


def test_nan_is_named_with_its_index(tb):
    x = torch.zeros((3, 4))
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x contains a non-finite value \(nan at index \(2, 1\)\)"):
        tb.quantize_act_per_token(x)


def test_no_autograd_graph(tb):
    x = torch.randn(4, 6, requires_grad=True)
    s = torch.rand(6) + 0.5
    y = tb.lae_apply_activation(x, s)
    assert not y.requires_grad
    assert_same(y, spec.lae_apply_activation(x.detach().numpy(), s.numpy()))


# ---------------------------------------------------------------------------------------- float traps
def test_true_division_not_reciprocal(tb):
    """Pick x near (k + 0.5) * s where rint(x / s) and rint(x * (1 / s)) differ; the backend must give x / s."""
    s = np.float32(0.37)
    half = ((np.arange(-127, 127) + 0.5) * np.float64(s)).astype(np.float32)
    x = np.concatenate([half, np.nextafter(half, np.float32(np.inf)), np.nextafter(half, np.float32(-np.inf))])
    recip = np.rint(x * (np.float32(1) / s)).astype(np.float32)
    x = x[recip != np.rint(x / s)]
    assert x.size  # the test has teeth
    for scale in (s, np.array([s], np.float32)):
        assert_same(tb.quantize_act_per_tensor(tb.from_numpy(x), tb.from_numpy(np.asarray(scale))),
                    spec.quantize_act_per_tensor(x, scale), "per-tensor")
    amax = np.random.default_rng(3).random(20000, dtype=np.float32) * 1000
    assert (amax * (np.float32(1) / np.float32(127)) != amax / np.float32(127)).any()
    assert_same(tb.act_scale_from_amax(tb.from_numpy(amax)), spec.act_scale_from_amax(amax), "act_scale_from_amax")


def test_round_half_to_even(tb):
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -126.5, 127.5, 1e30], np.float32)
    q = tb.quantize_act_per_tensor(tb.from_numpy(x), tb.from_numpy(np.float32(1.0)))
    assert_same(q, np.array([0, 2, 2, 0, -2, 126, -126, 127, 127], np.int8))


def test_epilogue_order_is_sequential_float32(tb):
    """Sums whose float32 value depends on the order: the backend must add group by group, ascending."""
    acc = np.array([[[1 << 24, 1, 1, 1, 1, 1, 1, 1]]], np.int32)
    ws = np.ones((1, 8), np.float32)
    want = spec.w4a8_epilogue(acc, ws, np.ones(1, np.float32))
    assert want[0, 0] == np.float32(1 << 24)  # every +1 is lost to rounding in sequential order
    assert np.float32(acc.astype(np.float64).sum()) != want[0, 0]  # any other order would keep them
    got = tb.w4a8_epilogue(tb.from_numpy(acc), tb.from_numpy(ws), tb.from_numpy(np.ones(1, np.float32)))
    assert_same(got, want)


# ---------------------------------------------------------------------------------------- integer core
SHAPES = [  # m, n, k, g
    (1, 1, 1, 1), (3, 5, 1, 1), (2, 4, 1, -1), (4, 7, 5, 2), (1, 9, 7, 3), (17, 8, 33, 8), (6, 3, 64, 64),
    (5, 6, 100, 32), (2, 3, 130, 128), (33, 24, 576, 128), (1, 16, 256, 128), (0, 4, 8, 4), (4, 0, 8, 4),
    (3, 4, 0, -1),
]


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", SHAPES)
def test_fast_path_equals_float64_path_and_spec(tb, slow, m, n, k, g, fmt):
    assert tb.use_int_mm, tb.describe()
    c = make_case(np.random.default_rng(m * 1000 + n * 10 + k), m, n, k, g, fmt)
    want = want_matmul(c)
    assert_same(run_matmul(tb, c), want, "int_mm path")
    assert_same(run_matmul(slow, c), want, "float64 path")
    sums = spec.w4a8_group_sums(c["qx"], c["packed"], c["zero"], k, g, fmt)
    for b in (tb, slow):
        zero = None if c["zero"] is None else b.from_numpy(c["zero"])
        assert_same(b.w4a8_group_sums(b.from_numpy(c["qx"]), b.from_numpy(c["packed"]), zero, k, g, fmt), sums, b.name)


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
def test_tiled_fused_and_batched_epilogues_agree(fmt):
    """Force many row tiles (with a short last one), fused and batched, on both integer paths."""
    c = make_case(np.random.default_rng(11), 77, 40, 200, 64, fmt, per_tensor=True)
    want = want_matmul(c)
    for int_mm in (True, False):
        for shape in (MM.IntMMShape(min_k=2, tile_bytes=1, batched_bytes=0),            # 16-row tiles, fused
                      MM.IntMMShape(min_k=2, tile_bytes=16 * 40 * 4, batched_bytes=1 << 30),  # tiles, batched
                      MM.IntMMShape(min_k=2, mult_m=8, min_m=24, mult_k=8, mult_n=8, tile_bytes=0),  # CUDA-like pads
                      ):
            assert_same(run_matmul(TorchBackend(int_mm=int_mm, shape=shape), c), want, f"{int_mm} {shape}")


@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
def test_largest_group_sums_are_exact(tb, fmt):
    """G = K = 2**20 (MAX_GROUP_SIZE) at the extremes: |acc| up to 128 * 15 * 2**20 = 2_013_265_920."""
    k = spec.MAX_GROUP_SIZE
    qx = np.full((1, k), -128, np.int8)
    if fmt is SYM:
        q = np.full((2, k), -8, np.int8); q[1, ::2] = 7
        zero = None
    else:
        q = np.zeros((2, k), np.int8); q[1, ::3] = 15
        zero = np.array([[15], [0]], np.uint8)
    packed = spec.pack_int4(q, signed=fmt is SYM)
    want = spec.w4a8_group_sums(qx, packed, zero, k, k, fmt)
    assert np.abs(want.astype(np.int64)).max() >= 1 << 30
    zt = None if zero is None else tb.from_numpy(zero)
    assert_same(tb.w4a8_group_sums(tb.from_numpy(qx), tb.from_numpy(packed), zt, k, k, fmt), want)
    ws, xs = np.array([[3e-5], [0.7]], np.float32), np.array([0.011], np.float32)
    y = tb.w4a8_matmul(tb.from_numpy(qx), tb.from_numpy(xs), tb.from_numpy(packed), tb.from_numpy(ws), zt, k, k, fmt)
    assert_same(y, spec.w4a8_matmul(qx, xs, packed, ws, zero, k, k, fmt))


def test_sums_beyond_2_pow_24_round_like_the_spec(tb, slow):
    """Random per-channel sums above 2**24 make float32(acc) round: both paths must round as the spec."""
    rng = np.random.default_rng(5)
    m, n, k = 3, 6, 1 << 16
    c = dict(qx=rng.choice(np.array([-128, 127], np.int8), size=(m, k)), xscale=np.ones(m, np.float32),
             packed=rng.integers(0, 256, (n, k // 2), dtype=np.uint8), wscale=np.full((n, 1), 0.75, np.float32),
             zero=None, k=k, group_size=-1, fmt=SYM, bias=None)
    c["qx"][:, : k // 2] = -128
    c["packed"][:, : k // 4] = 0x88  # -8, -8: sums far beyond 2**24
    want = want_matmul(c)
    acc = spec.w4a8_group_sums(c["qx"], c["packed"], None, k, k)
    assert (np.abs(acc) > 1 << 24).any() and (acc.astype(np.float32).astype(np.int64) != acc).any()
    assert_same(run_matmul(tb, c), want, "int_mm")
    assert_same(run_matmul(slow, c), want, "float64")


def test_probe_catches_a_wrong_int_mm(monkeypatch):
    real = torch._int_mm

    def off_by_one(a, b, out=None):
        r = real(a, b) + (a.shape[1] > 8)
        return r if out is None else out.copy_(r)

    monkeypatch.setattr(torch, "_int_mm", off_by_one)
    reason = MM.probe_int_mm(torch.device("cpu"), MM.CPU_INT_MM_SHAPE)
    assert reason is not None and "disagrees" in reason
    b = TorchBackend()
    assert not b.use_int_mm and "float64" in b.describe()
    c = make_case(np.random.default_rng(1), 3, 5, 40, 16, SYM)
    assert_same(run_matmul(b, c), want_matmul(c))  # still exact, on the reference path


def test_probe_accepts_the_real_int_mm():
    assert MM.probe_int_mm(torch.device("cpu"), MM.CPU_INT_MM_SHAPE) is None


# ---------------------------------------------------------------------------------------- prepared API
@pytest.mark.parametrize("fmt", [SYM, ASYM], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", [(1, 16, 256, 128), (9, 5, 77, 32), (20, 12, 576, 128), (0, 3, 8, 4),
                                     (4, 6, 45, 9), (3, 5, 131, 64)])
def test_prepared_equals_plain(tb, m, n, k, g, fmt):
    c = make_case(np.random.default_rng(k + m), m, n, k, g, fmt, bias=bool(m % 2))
    zero = None if c["zero"] is None else tb.from_numpy(c["zero"])
    prep = tb.prepare_weight(tb.from_numpy(c["packed"]), zero, k, g, fmt)
    assert isinstance(prep, MM.PreparedWeight) and prep.w3.dtype == torch.int8
    if prep.ng:  # the columns >= K of the last group hold zeros (also after "- z")
        r, last = k - (prep.ng - 1) * g, prep.w3[-1]
        if prep.planes:  # even columns (low nibbles) first, then the odd ones
            h = g // 2
            assert not last[:, (r + 1) // 2:h].any() and not last[:, h + r // 2:].any()
        else:
            assert not last[:, r:].any()
    ws = tb.from_numpy(c["wscale"])
    bias = None if c["bias"] is None else tb.from_numpy(c["bias"])
    want = want_matmul(c)
    for _ in range(2):  # the second call uses the cached scales
        assert_same(tb.w4a8_matmul_prepared(tb.from_numpy(c["qx"]), tb.from_numpy(c["xscale"]), prep, ws, bias), want)


def test_prepared_scale_cache_follows_in_place_changes(tb):
    c = make_case(np.random.default_rng(2), 4, 6, 64, 32, SYM)
    prep = tb.prepare_weight(tb.from_numpy(c["packed"]), None, 64, 32)
    qx, xs, ws = tb.from_numpy(c["qx"]), tb.from_numpy(c["xscale"]), tb.from_numpy(c["wscale"])
    assert_same(tb.w4a8_matmul_prepared(qx, xs, prep, ws), spec.w4a8_matmul(c["qx"], c["xscale"], c["packed"],
                                                                            c["wscale"], None, 64, 32))
    ws.mul_(3.0)  # in place: the cached transposed copy must not be reused
    new = (c["wscale"] * np.float32(3.0)).astype(np.float32)
    assert_same(tb.w4a8_matmul_prepared(qx, xs, prep, ws), spec.w4a8_matmul(c["qx"], c["xscale"], c["packed"],
                                                                            new, None, 64, 32))
    ws.fill_(float("nan"))
    with pytest.raises(ValueError, match="wscale contains a non-finite value"):
        tb.w4a8_matmul_prepared(qx, xs, prep, ws)


def test_prepared_under_inference_mode(tb):
    """Inference tensors have no version counter: the scales are then checked on every call."""
    c = make_case(np.random.default_rng(4), 5, 6, 64, 32, ASYM)
    prep = tb.prepare_weight(tb.from_numpy(c["packed"]), tb.from_numpy(c["zero"]), 64, 32, ASYM)
    with torch.inference_mode():
        ws, bias = tb.from_numpy(c["wscale"]), tb.from_numpy(c["bias"])
        for _ in range(2):
            y = tb.w4a8_matmul_prepared(tb.from_numpy(c["qx"]), tb.from_numpy(c["xscale"]), prep, ws, bias)
            assert_same(y, want_matmul(c))


def test_prepared_checks_the_activation(tb):
    prep = tb.prepare_weight(torch.zeros((3, 4), dtype=torch.uint8), None, 8, 4)
    with pytest.raises(ValueError, match="qx: expected K=8"):
        tb.w4a8_matmul_prepared(torch.zeros((2, 6), dtype=torch.int8), torch.ones(2), prep, torch.ones(3, 2))
    other = TorchBackend(shape=MM.IntMMShape(min_k=2, tile_bytes=64))
    with pytest.raises(ValueError, match="prepared: made for"):
        other.w4a8_matmul_prepared(torch.zeros((2, 8), dtype=torch.int8), torch.ones(2), prep, torch.ones(3, 2))


# ---------------------------------------------------------------------------------------- the rest
def test_elementwise_primitives_match_spec(tb):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((7, 45)) * rng.choice([1e-3, 1.0, 500.0], size=(1, 45))).astype(np.float32)
    x[3] = 0
    q, s = tb.quantize_act_per_token(tb.from_numpy(x))
    wq, ws = spec.quantize_act_per_token(x)
    assert_same(q, wq, "q")
    assert_same(s, ws, "scale")
    assert_same(tb.dequantize_act(q, s), spec.dequantize_act(wq, ws), "dequantize_act")
    m = np.abs(x).max(axis=0)
    m[:3] = [0.0, 1e-40, 3e38]
    assert_same(tb.lae_scales(tb.from_numpy(m)), spec.lae_scales(m), "lae_scales")
    for fmt in (SYM, ASYM):
        for g in (7, 16, -1):
            r = tb.quantize_weight(tb.from_numpy(x), g, fmt)
            want = spec.quantize_weight(x, g, fmt)
            assert_same(r.q, want.q, f"q {fmt} {g}")
            assert_same(r.scale, want.scale, f"scale {fmt} {g}")
            if fmt is ASYM:
                assert_same(r.zero, want.zero, f"zero {g}")
            assert_same(tb.dequantize_weight(r.q, r.scale, r.zero, g, fmt),
                        spec.dequantize_weight(want.q, want.scale, want.zero, want.group_size, fmt), "dequantize")
            packed = tb.pack_int4(r.q, signed=fmt is SYM)
            assert_same(packed, spec.pack_int4(want.q, signed=fmt is SYM), "pack")
            assert_same(tb.unpack_int4(packed, x.shape[1], signed=fmt is SYM), want.q, "unpack")
    v = np.array([0, 14.999999, 15, 149.99998, 150, 3e38], np.float32)
    assert_same(tb.select_policies(tb.from_numpy(v)), spec.select_policies(v), "policy")


def test_unpack_every_byte_value(tb):
    packed = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for signed in (True, False):
        for k in (31, 32):
            assert_same(tb.unpack_int4(tb.from_numpy(packed[:, : (k + 1) // 2]), k, signed),
                        spec.unpack_int4(packed[:, : (k + 1) // 2], k, signed), f"signed={signed} k={k}")


def test_checks_are_the_specs_own(tb):
    """The torch backend runs fptq.spec.validate's checks (over TorchArrays): the spec's message, word for word."""
    cases = [("quantize_act_per_tensor", (np.ones((2, 2), np.float32), np.ones((1, 1), np.float32))),
             ("w4a8_group_sums", (np.ones((1, 4), np.int8), np.zeros((1, 2), np.uint8), None, 4.0, 4)),
             ("weight_scales", (np.ones((2, 4), np.float32), np.bool_(True))),
             ("dequantize_weight", (np.full((1, 4), 9, np.int8), np.ones((1, 1), np.float32), None, 4)),
             ("quantize_act_per_token", (np.array([[1.0, np.nan]], np.float32),)),
             ("w4a8_epilogue", (np.zeros((2, 3, 1), np.int32), np.ones((3, 1), np.float32),
                                np.ones((2, 1), np.float32))),
             ("select_policies", (np.ones(2, np.float32), 1.0, np.inf))]
    for op, args in cases:
        with pytest.raises((TypeError, ValueError)) as want:
            getattr(spec, op)(*args)
        with pytest.raises(want.type) as got:
            getattr(tb, op)(*[tb.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args])
        assert str(got.value) == str(want.value) and "docs/spec.md §9" in str(got.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64", "uint16", "uint32", "uint64", "int64"])
def test_other_real_tensor_dtypes_are_converted(tb, dtype):
    """§9.1: a float argument of another real dtype (bf16 and the wide unsigned ones included) is converted."""
    x = torch.tensor([[3.0, 1.0, 250.0], [0.0, 7.0, 2.0]]).to(getattr(torch, dtype))
    q, s = tb.quantize_act_per_token(x)
    rq, rs = spec.quantize_act_per_token(x.to(torch.float32).numpy())
    assert np.array_equal(tb.to_numpy(q), rq) and tb.to_numpy(s).tobytes() == rs.tobytes()
