"""Rotation of the residual stream and value heads: orthogonal matrices, and float models unchanged by it."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fptq.reference import rotation as R

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.arch import UnsupportedArchitecture, arch_of_model, find_decoder_layers  # noqa: E402
from fptq.models.rotate import RotateOutput, online_rotation_targets, rotate_model  # noqa: E402
from fptq.testing import TINY_FAMILIES, tiny_model  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 16, 64, 576, 640, 96])
def test_random_orthogonal_is_orthogonal_and_spreads_a_channel(n):
    q = R.random_orthogonal(n, seed=3)
    assert q.shape == (n, n)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-12)
    p2 = n & -n
    # one loud channel is spread: no output entry of a one-hot row exceeds 1/sqrt(2^a) in magnitude
    assert np.abs(q).max() <= 1 / np.sqrt(p2) + 1e-12
    assert not np.array_equal(q, R.random_orthogonal(n, seed=4)) or n == 1


@pytest.mark.parametrize("n", [1, 2, 16, 96, 576, 640, 1536])
def test_hadamard_factors_give_the_dense_product_fast(n):
    f = R.hadamard_factors(n, seed=3)
    q = R.random_orthogonal(n, seed=3)
    assert np.array_equal(f.dense(), q) and f.p2 == n & -n
    x = np.random.default_rng(0).standard_normal((2, 5, n))
    np.testing.assert_allclose(R.apply_hadamard_factors(x, f.signs, f.r), x @ q, rtol=0, atol=1e-12)
    # the torch float32 path the models run (float arithmetic: a tolerance, not bit equality)
    from fptq.models.rotate import factor_tensors
    signs, r = factor_tensors(torch.from_numpy(q.astype(np.float32)))
    xt = torch.from_numpy(x.astype(np.float32))
    blocks = [torch.from_numpy(h.astype(np.float32)) for h in R.hadamard_blocks(f.p2)]
    got = R.apply_hadamard_factors(xt, signs, r, blocks).double().numpy()
    np.testing.assert_allclose(got, x @ q, rtol=0, atol=2e-5 * np.abs(x @ q).max())


@pytest.mark.parametrize("n_out,n,seed", [(64, 576, 2), (96, 1536, 0), (33, 640, 5), (7, 96, 1)])
def test_factored_input_rotation_is_the_dense_product(n_out, n, seed, monkeypatch):
    """W Q through the factors, in row blocks (a small block size forces several), equals the dense float64
    product rounded to float32 bit for bit on these weights (the float64 sums differ by ~1e-16 relative:
    a float32 value can flip only next to a rounding tie, about once in millions of weights)."""
    w = (np.random.default_rng(seed).standard_normal((n_out, n)) * 0.02).astype(np.float32)
    f = R.hadamard_factors(n, seed)
    want = R.rotate_input_side(w, f.dense())
    monkeypatch.setattr(R, "FACTORED_CHUNK_BYTES", 8 * n * 5)   # blocks of 5 rows
    got = R.rotate_input_side_factored(w, f)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError, match="expected"):
        R.rotate_input_side_factored(w[:, 1:], f)


@pytest.mark.parametrize("p2", [1, 2, 4, 32, 64, 512, 2048, 2 ** 16])
def test_hadamard_blocks_make_the_sylvester_matrix(p2):
    blocks = R.hadamard_blocks(p2)
    assert all(h.shape[0] <= R.MAX_HADAMARD_BLOCK for h in blocks)
    assert int(np.prod([h.shape[0] for h in blocks])) == p2
    sizes = [h.shape[0] for h in blocks]
    assert max(sizes, default=1) <= 2 * min(sizes, default=1)          # as even as possible
    if p2 <= 2048:
        full = functools.reduce(np.kron, blocks, np.ones((1, 1)))
        assert np.array_equal(full, R.sylvester_hadamard(p2))


@pytest.mark.parametrize("p2, max_block", [(3, 32), (0, 32), (64, 3), (64, 1)])
def test_hadamard_blocks_refuse_non_powers_of_two(p2, max_block):
    with pytest.raises(ValueError, match="powers of two"):
        R.hadamard_blocks(p2, max_block)


def test_apply_hadamard_factors_refuses_blocks_of_another_size():
    f = R.hadamard_factors(64, seed=0)
    with pytest.raises(ValueError, match="do not make H_64"):
        R.apply_hadamard_factors(np.ones((2, 64)), f.signs, f.r, R.hadamard_blocks(32))


@pytest.mark.parametrize("n", [1, 96, 576, 1536])
def test_factors_are_read_from_the_stored_matrix_alone(n):
    from fptq.models.rotate import factor_tensors
    q = torch.from_numpy(R.random_orthogonal(n, seed=7).astype(np.float32))
    signs, r = factor_tensors(q)
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(0))
    blocks = [torch.from_numpy(h.astype(np.float32)) for h in R.hadamard_blocks(n & -n)]
    np.testing.assert_allclose(R.apply_hadamard_factors(x, signs, r, blocks).numpy(),
                               (x @ q).numpy(), rtol=0, atol=1e-5)
    assert factor_tensors(q.clone()) is not None and torch.equal(factor_tensors(q.clone())[1], r)   # deterministic
    dense = torch.from_numpy(np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))[0].astype(np.float32))
    assert n == 1 or factor_tensors(dense) is None            # an orthogonal matrix of another form: used densely
    if n > 1:
        other = q.clone()
        other[0, 1] += 1e-3                                       # not of the form any more
        assert factor_tensors(other) is None


def test_sylvester_hadamard():
    h = R.sylvester_hadamard(8)
    assert np.array_equal(h @ h.T, 8 * np.eye(8))
    with pytest.raises(ValueError, match="power of two"):
        R.sylvester_hadamard(12)


def test_head_rotations_cancel():
    rng = np.random.default_rng(0)
    hd, heads, d = 16, 4, 64
    v = rng.standard_normal((heads * hd, d)).astype(np.float32)
    bv = rng.standard_normal(heads * hd).astype(np.float32)
    o = rng.standard_normal((d, heads * hd)).astype(np.float32)
    qh = R.random_orthogonal(hd, 1)
    v2, bv2 = R.rotate_head_rows(v, qh, bv)
    o2 = R.rotate_head_columns(o, qh)
    x = rng.standard_normal((5, d))
    ref = (x @ v.T.astype(np.float64) + bv) @ o.T.astype(np.float64)
    got = (x @ v2.T.astype(np.float64) + bv2) @ o2.T.astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="whole number of heads"):
        R.rotate_head_rows(v[:7], qh)


@pytest.mark.parametrize("family,mode", [(f, m) for f in TINY_FAMILIES for m in ("online", "residual")
                                         if not (f == "opt" and m == "residual")])
def test_rotated_float_model_has_the_same_logits(family, mode):
    model = tiny_model(family, seed=1)
    ids = torch.randint(3, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits.double()
    emb_before = model.get_input_embeddings().weight.detach().clone()
    q_before = model.get_submodule(find_decoder_layers(model)[0] + ".0." + arch_of_model(model).q).weight.detach().clone()
    report = rotate_model(model, mode, seed=5)
    with torch.no_grad():
        after = model(ids).logits.double()
    err = float((after - before).abs().max() / before.abs().max())
    assert err < 1e-4, err
    q_after = model.get_submodule(find_decoder_layers(model)[0] + ".0." + arch_of_model(model).q).weight
    assert not torch.equal(q_after, q_before)   # really rotated
    online = {n: m for n, m in model.named_modules() if isinstance(m, RotateOutput)}
    assert sorted(online) == sorted(report.online_norms)
    assert set(online) <= set(online_rotation_targets(model))
    assert len({m.rotation.data_ptr() for m in online.values()}) <= 1   # one shared float32 Q
    if mode == "residual":
        assert report.untied  # the tiny models tie embeddings
        assert not torch.equal(model.get_input_embeddings().weight, emb_before)   # the stream is rotated
        assert bool(online) == (family in ("gemma2", "gemma3"))   # post-norms rotate their outputs
    else:
        assert not report.untied and torch.equal(model.get_input_embeddings().weight, emb_before)
        assert len(online) == 2 * len(find_decoder_layers(model)[1])   # both pre-norms of every layer


def test_allow_online_false_refuses_run_time_rotations_before_changing_anything():
    for family, mode in (("gemma2", "residual"), ("llama", "online")):
        model = tiny_model(family, seed=1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UnsupportedArchitecture, match="needs run-time rotations"):
            rotate_model(model, mode, allow_online=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rotate_model(tiny_model("llama"), "residual", allow_online=False).online_norms == []
    with pytest.raises(ValueError, match="rotation mode must be one of"):
        rotate_model(tiny_model("llama"), "none")


@pytest.mark.parametrize("mode", ["online", "residual"])
def test_rotation_spreads_norm_outliers(mode):
    """The tiny models plant channels 0-1 at 60/300 in the attention norm; after rotation the q/k/v inputs are flat."""
    model = tiny_model("llama", seed=1)
    ids = torch.randint(3, 260, (1, 32), generator=torch.Generator().manual_seed(0))
    seen = {}

    def grab(mod, args, name):
        seen[name] = args[0].detach().abs().amax(dim=(0, 1))

    def ratio():
        seen.clear()
        h = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: grab(m, a, "q"))
        try:
            with torch.no_grad():
                model(ids)
        finally:
            h.remove()
        m = seen["q"]
        return float(m.max() / m.median())

    before = ratio()
    rotate_model(model, mode, seed=0)
    after = ratio()
    assert after < before / 5, (before, after)


def test_layernorm_models_are_refused_a_residual_rotation():
    with pytest.raises(UnsupportedArchitecture, match="RMS norms"):
        rotate_model(tiny_model("opt"), "residual")


def test_run_time_product_keeps_float32_and_numpy_and_torch_paths_agree():
    """A float32 CPU tensor is rotated by NumPy on views (no thread pool for tiny decode products), any
    other by torch: same dtype out, same values up to float rounding."""
    from fptq.models.rotate import RotateOutput, _times_rotation, factor_tensors

    q = torch.from_numpy(R.random_orthogonal(96, seed=5).astype(np.float32))
    mod = RotateOutput(torch.nn.Identity(), q, factor_tensors(q))
    x = torch.randn(2, 3, 96, generator=torch.Generator().manual_seed(0))
    y = _times_rotation(x, mod, "rotation")
    assert y.dtype == torch.float32 and y.shape == x.shape
    xr = x.clone().requires_grad_(True)                     # autograd: the torch path
    y_torch = _times_rotation(xr, mod, "rotation")
    assert y_torch.requires_grad
    np.testing.assert_allclose(y.numpy(), y_torch.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), (x @ q).numpy(), rtol=0, atol=1e-5)
    assert R.apply_hadamard_factors(x.numpy(), *(t.numpy() for t in factor_tensors(q))).dtype == np.float32
    assert _times_rotation(x.to(torch.bfloat16), mod, "rotation").dtype == torch.bfloat16


def test_run_time_product_reads_the_current_factors():
    """The NumPy path converts the module's factor buffers on every call (no copy kept per module), so
    replaced buffers and buffers changed in place both take effect; a stale copy would fail here."""
    from fptq.models.rotate import RotateOutput, _times_rotation, factor_tensors

    q1 = torch.from_numpy(R.random_orthogonal(64, seed=1).astype(np.float32))
    q2 = torch.from_numpy(R.random_orthogonal(64, seed=2).astype(np.float32))
    mod = RotateOutput(torch.nn.Identity(), q1, factor_tensors(q1))
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(_times_rotation(x, mod, "rotation").numpy(), (x @ q1).numpy(), rtol=0, atol=1e-5)
    signs, r = factor_tensors(q2)
    mod.rotation_signs, mod.rotation_r = signs, r               # new tensors
    np.testing.assert_allclose(_times_rotation(x, mod, "rotation").numpy(), (x @ q2).numpy(), rtol=0, atol=1e-5)
    mod.rotation_signs.copy_(factor_tensors(q1)[0])              # the same tensors, changed in place
    mod.rotation_r.copy_(factor_tensors(q1)[1])
    np.testing.assert_allclose(_times_rotation(x, mod, "rotation").numpy(), (x @ q1).numpy(), rtol=0, atol=1e-5)
