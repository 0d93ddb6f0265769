"""The W4A8 module computes exactly the spec's W4A8 matmul; the pipeline quantizes every family."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq import spec  # noqa: E402
from fptq.backends import get_backend  # noqa: E402
from fptq.models.qlinear import W4A8Linear, fake_quant_act  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.qlinear import quantized_linears, set_quantized_mode  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.testing import TINY_FAMILIES, tiny_model  # noqa: E402

ActPolicy = spec.ActPolicy


def _linear(k=40, n=12, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin


def _backends():
    names = ["numpy"]
    for extra in ("torch", "numba"):
        try:
            get_backend(extra)
            names.append(extra)
        except Exception:  # not built yet / cannot start: covered by its own conformance run
            pass
    return names


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
@pytest.mark.parametrize("policy", list(ActPolicy))
def test_w4a8_linear_equals_the_spec(backend, fmt, policy):
    k, n, g = 40, 12, 16  # K = 2*16 + 8: a ragged last group
    lin = _linear(k, n)
    x = torch.randn(3, 5, k, generator=torch.Generator().manual_seed(2)) * 4
    scale = spec.act_scale_from_amax(np.float32(7.5))
    m = W4A8Linear.from_linear(lin, policy, scale, g, fmt, backend=backend)
    with torch.inference_mode():  # how fptq.eval runs models; cached arrays must survive it
        y0 = m(x)
    y = m(x)
    assert torch.equal(y0, y)
    assert y.shape == (3, 5, n) and y.dtype == torch.float32
    # the spec, step by step
    w = lin.weight.detach().numpy()
    qw = spec.quantize_weight(w, g, fmt)
    packed = spec.pack_int4(qw.q, signed=fmt == "int4_sym")
    assert np.array_equal(m.qweight.numpy(), packed) and np.array_equal(m.wscale.numpy(), qw.scale)
    x2 = x.reshape(-1, k).numpy()
    if policy is ActPolicy.DYNAMIC:
        qx, xs = spec.quantize_act_per_token(x2)
    else:
        qx, xs = spec.quantize_act_per_tensor(x2, scale), scale
    want = spec.w4a8_matmul(qx, xs, packed, qw.scale, qw.zero, k, g, fmt, lin.bias.detach().numpy())
    assert np.array_equal(y.reshape(-1, n).numpy(), want)
    # fake-quant mode: same rounding of x, float matmul on the dequantized weight
    m.set_mode("fake_quant")
    with torch.inference_mode():
        m(x)
    yf = m(x).reshape(-1, n).numpy()
    wd = spec.dequantize_weight(qw.q, qw.scale, qw.zero, g, fmt)
    xd = spec.dequantize_act(qx, xs)
    np.testing.assert_allclose(yf, xd @ wd.T + lin.bias.detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(yf, want, rtol=1e-5, atol=1e-4)


def test_fake_quant_act_matches_the_spec_rounding():
    x = torch.tensor([[0.5, -1.5, 2.5, 127.0 * 0.1, 1e-3], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    s = spec.act_scale_from_amax(np.float32(12.7))
    got = fake_quant_act(x, ActPolicy.STATIC, torch.tensor([float(s)]))
    want = spec.dequantize_act(spec.quantize_act_per_tensor(x.numpy(), s), s)
    assert np.array_equal(got.numpy(), want)
    got = fake_quant_act(x, ActPolicy.DYNAMIC)
    q, sc = spec.quantize_act_per_token(x.numpy())
    assert np.array_equal(got.numpy(), spec.dequantize_act(q, sc))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_quantize_model_every_family(family):
    model = tiny_model(family)
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(group_size=32, n_samples=4, seq_len=24)
    res = quantize_model(model, ids, cfg, backend="numpy", mode="integer", batch_size=2, progress=False)
    qlin = quantized_linears(res.model)
    n_layers = model.config.num_hidden_layers
    assert len(qlin) == (7 * n_layers if family != "opt" else 6 * n_layers)
    assert not any(isinstance(m, W4A8Linear) for m in model.modules())  # the input model is untouched
    assert type(res.model.lm_head).__name__ == "Linear"  # lm_head stays float
    by = res.plan.by_linear()
    for name, m in qlin.items():
        assert m.policy is by[name].policy
    inputs, handles = {}, []
    for name, m in qlin.items():
        handles.append(m.register_forward_hook(functools.partial(_keep_input, store=inputs, name=name)))
    with torch.no_grad():
        yi = res.model(ids).logits
    for h in handles:
        h.remove()
    assert torch.isfinite(yi).all()
    # integer and fake-quant paths agree up to summation order on every linear's own input (end to end,
    # a 1-ulp difference can flip an INT8 code at a .5 tie and grow through a random tiny model)
    with torch.no_grad():
        for name, m in qlin.items():
            set_quantized_mode(m, "integer", "numpy")
            y_int = m(inputs[name])
            set_quantized_mode(m, "fake_quant", "numpy")
            y_fake = m(inputs[name])
            assert float((y_int - y_fake).abs().max()) <= 1e-5 * float(y_fake.abs().max()) + 1e-6, name


def _keep_input(module, inputs, output, *, store, name):
    store[name] = inputs[0].detach().clone()


def test_sequential_calibration_sees_quantized_inputs():
    model = tiny_model("llama")
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    a = quantize_model(model, ids, QuantConfig(group_size=32, sequential=False), backend="numpy", progress=False)
    b = quantize_model(model, ids, QuantConfig(group_size=32, sequential=True), backend="numpy", progress=False)
    la = [g.v for g in a.plan.groups if g.layer == 0]
    lb = [g.v for g in b.plan.groups if g.layer == 0]
    assert la == lb  # layer 0 sees the embeddings either way
    assert [g.v for g in a.plan.groups if g.layer == 1] != [g.v for g in b.plan.groups if g.layer == 1]


def test_quant_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="v0 < v1"):
        QuantConfig(v0=200, v1=150)
    with pytest.raises(ValueError):
        QuantConfig(weight_format="int3")
    with pytest.raises(ValueError, match="unknown linear groups"):
        QuantConfig(groups=("qkv", "mlp"))


def test_a_registered_quantizer_gets_what_its_entry_asks_for(monkeypatch):
    """The pipeline, the config and compare read the registry: a new entry needing a Hessian, channel
    weights and a QuantConfig option runs with no change elsewhere, and gets exactly those."""
    from fptq import reference as ref
    from fptq.compare import CompareSettings, _methods, _uses_pipeline

    seen = []

    def probe(w, group_size, fmt, *, hessian, channel_weight, damp):
        seen.append((w.shape, hessian.shape, channel_weight.shape, damp))
        return spec.quantize_weight(w, group_size, fmt)

    entry = ref.WeightQuantizer("probe", "probe words", probe, channel_weight=True, hessian=True,
                                rows_option="gptq_rows", options=(("damp", "gptq_damp"),), judge_with="rtn")
    monkeypatch.setitem(ref.WEIGHT_QUANTIZERS, "probe", entry)
    model = tiny_model("llama")
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(group_size=32, weight_quantizer="probe", gptq_damp=0.25, rotate="none")
    res = quantize_model(model, ids, cfg, backend="numpy", progress=False)
    assert len(seen) == len(quantized_linears(res.model)) > 0
    assert all(h == (w[1], w[1]) and c == (w[1],) and d == 0.25 for w, h, c, d in seen)
    s = CompareSettings(quant=QuantConfig(rotate="none", weight_quantizer="rtn"))
    row = next(m for m in _methods(s) if m.key == "fptq_w4a8_probe")
    assert "probe words" in row.weights and _uses_pipeline(row, s)  # it needs calibration rows


def _power_of_two_search(x, weights, kv_heads, group_size=None, fmt=None):
    """Scales 2^(j mod 3) (GQA: per kv channel): folding them is exact in float32."""
    k = x.shape[1] if kv_heads is None else kv_heads[1] * kv_heads[2]
    s_fold = np.exp2(np.arange(k) % 3).astype(np.float32)
    if kv_heads is None:
        return s_fold, s_fold
    n, kv, hd = kv_heads
    return np.repeat(s_fold.reshape(kv, 1, hd), n // kv, axis=1).reshape(-1), s_fold


@pytest.mark.parametrize("rotate", ["none", "online"])
def test_a_scale_search_is_folded_exactly_where_the_producer_absorbs_it(monkeypatch, rotate):
    """A registry entry with a ``scale_search``: every group whose producer can take ``1/s`` gets the
    scales folded (float outputs bit-identical with power-of-two scales); under the online rotation the
    norms and down_proj's rotated input cannot, and the plan says why."""
    from fptq import reference as ref

    entry = ref.WeightQuantizer("pow2", "pow2", ref.quantize_weight_rtn, rows_option="keep_rows",
                                scale_search=_power_of_two_search, judge_with="rtn")
    monkeypatch.setitem(ref.WEIGHT_QUANTIZERS, "pow2", entry)
    model = tiny_model("llama")  # GQA: o_proj's scales are shared by the q heads of one kv head
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(group_size=32, weight_quantizer="pow2", force_policy="dynamic", rotate=rotate)
    keep_float = (lambda lin, gp, samples=None: lin) if rotate == "none" else None  # the folded float linears
    res = quantize_model(model, ids, cfg, backend="numpy", progress=False, make_linear=keep_float)
    folded = {g.group for g in res.plan.groups if g.s_weight is not None}
    assert folded == ({"qkv", "o", "gate_up", "down"} if rotate == "none" else {"o"})
    for g in res.plan.groups:
        assert (g.scale_fallback is None) == (g.group in folded)
        assert g.s is None if g.group not in folded else np.array_equal(g.s, g.s_weight)
    if rotate == "none":
        with torch.no_grad():
            assert torch.equal(res.model(ids).logits, model(ids).logits)
        w0 = model.model.layers[0].self_attn.q_proj.weight
        assert not torch.equal(res.model.model.layers[0].self_attn.q_proj.weight, w0)


@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
def test_mse_clip_search_never_loses_to_rtn(fmt):
    from fptq.reference import quantize_weight_by

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 72)) * np.linspace(0.1, 3, 72)).astype(np.float32)
    w[3, 5] = 25.0  # an outlier that RTN's range must cover
    c = rng.uniform(0, 4, 72).astype(np.float32)
    errs = {}
    for method in ("rtn", "mse"):
        qw = quantize_weight_by(method, w, 32, fmt, c)  # 72 = 32 + 32 + 8
        f = spec.formats.weight_format_spec(fmt)
        assert qw.q.min() >= f.qmin and qw.q.max() <= f.qmax and qw.scale.shape == (16, 3)
        # the codes are the spec's quantization with the chosen scales
        assert np.array_equal(qw.q, spec.quantize_weight_with_scales(w, qw.scale, qw.zero, 32, fmt))
        wd = spec.dequantize_weight(qw.q, qw.scale, qw.zero, 32, fmt)
        errs[method] = float((((w - wd) ** 2) * c).sum())
    assert errs["mse"] < errs["rtn"]
    rtn = spec.quantize_weight(w, 32, fmt)
    assert np.array_equal(quantize_weight_by("rtn", w, 32, fmt).q, rtn.q)


@pytest.mark.parametrize("select", ["error", "error_static"])
def test_error_selected_policies_pick_the_smaller_measured_error(select):
    model = tiny_model("llama")
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    # unrotated: every group has an LAE candidate (the online rotation leaves the pre-norms no weight to fold into)
    cfg = QuantConfig(group_size=32, policy_select=select, keep_rows=64, rotate="none")
    res = quantize_model(model, ids, cfg, backend="numpy", mode="fake_quant", progress=False)
    chosen = set()
    for g in res.plan.groups:
        if g.band is ActPolicy.DYNAMIC:
            assert g.policy is ActPolicy.DYNAMIC and g.err_static is None
            continue
        assert g.err_static is not None and g.err_lae is not None
        assert (g.err_dynamic is not None) == (select == "error")
        errs = {ActPolicy.STATIC: g.err_static, ActPolicy.LAE_STATIC: g.err_lae}
        if select == "error":
            errs[ActPolicy.DYNAMIC] = g.err_dynamic
        assert errs[g.policy] == min(errs.values())
        chosen.add(g.policy)
        assert (g.s is not None) == (g.policy is ActPolicy.LAE_STATIC)
        assert (g.act_scale is None) == (g.policy is ActPolicy.DYNAMIC)
    assert chosen  # some group was decided by error
    with torch.no_grad():
        assert torch.isfinite(res.model(ids).logits).all()
    with pytest.raises(ValueError, match="policy_select"):
        QuantConfig(policy_select="vibes")


def test_layer_hessian_is_computed_once_per_group_input_and_matches_its_rows():
    from types import SimpleNamespace

    from fptq.models.calibrate import LayerSamples
    from fptq.models.quantize import layer_hessian
    from fptq.reference import HessianHandoff, equalized_hessian

    rows = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    samples = LayerSamples({"l.q": rows})
    s = np.linspace(0.5, 2.0, 8).astype(np.float32)
    gp = SimpleNamespace(linears=["l.q", "l.k", "l.v"], s=s)
    h = layer_hessian(samples, gp)
    np.testing.assert_array_equal(h, equalized_hessian(rows.numpy(), s))
    assert layer_hessian(samples, gp) is h                       # the group's next linear: the cached matrix
    last = layer_hessian(samples, gp)                            # its last linear: handed over, the cache forgets it
    assert isinstance(last, HessianHandoff) and last.take() is h and not samples.hessians
    other = layer_hessian(samples, SimpleNamespace(linears=["l.q"], s=s * 2))   # another equalization: recomputed
    np.testing.assert_array_equal(other.take(), equalized_hessian(rows.numpy(), s * 2))
    plain = layer_hessian(samples, SimpleNamespace(linears=["l.q"], s=None))
    np.testing.assert_array_equal(plain.take(), equalized_hessian(rows.numpy(), None))
    assert layer_hessian({"l.q": rows}, gp) is not layer_hessian({"l.q": rows}, gp)   # a plain dict: no cache
    with pytest.raises(ValueError, match="l.o's input"):
        layer_hessian(samples, SimpleNamespace(linears=["l.o"], s=None))
