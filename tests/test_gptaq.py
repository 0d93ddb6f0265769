"""GPTAQ (fptq.reference.gptaq, the registry's ``gptaq``): the asymmetric-calibration target on synthetic
layers, and the pipeline's two calibration streams on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.reference.gptaq import _dampened, asymmetric_error, asymmetric_target, cross_term, gptaq_quantize
from fptq.reference.gptq import HessianAccumulator, HessianHandoff, gptq_quantize
from fptq.spec import WeightFormat

FORMATS = [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC]


def _streams(seed: int, n: int = 32, k: int = 160, rows: int = 768, drift: float = 0.15):
    """Float inputs ``x`` (correlated channels, uneven scales), the quantized model's ``x_tilde`` (``x`` through
    a perturbed map plus noise, as an earlier layer's rounding would leave it) and a weight."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, 10))
    x = (z @ rng.standard_normal((10, k)) + 0.3 * rng.standard_normal((rows, k))) * rng.uniform(0.3, 2.5, size=k)
    x_tilde = x @ (np.eye(k) + drift * rng.standard_normal((k, k)) / np.sqrt(k)) + 0.1 * rng.standard_normal((rows, k))
    w = rng.standard_normal((n, k)).astype(np.float32)
    return x.astype(np.float32), x_tilde.astype(np.float32), w


def _H(x):
    acc = HessianAccumulator(x.shape[1])
    acc.add_batch(x)
    return acc.take_H()


def _deq(qw: spec.QuantizedWeight) -> np.ndarray:
    return spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)


def _same(a: spec.QuantizedWeight, b: spec.QuantizedWeight) -> bool:
    return (np.array_equal(a.q, b.q) and np.array_equal(a.scale, b.scale)
            and (a.zero is None and b.zero is None or np.array_equal(a.zero, b.zero)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("options", [{}, {"clip": True}, {"act_order": True}], ids=["plain", "clip", "act_order"])
def test_equal_streams_are_gptq_bit_for_bit(fmt, options):
    """X~ = X: the cross term is exactly zero, W* = W, and GPTAQ's codes, scales and zeros are GPTQ's."""
    x, _, w = _streams(0)
    D = cross_term(x, x.copy())
    assert not D.any()
    assert np.array_equal(asymmetric_target(w, _H(x), D), w.astype(np.float64))
    got = gptaq_quantize(w, HessianHandoff(_H(x)), D, 64, fmt, **options)
    assert _same(got, gptq_quantize(w, _H(x), 64, fmt, **options))


def test_the_target_completes_the_square():
    """For any two Q: ``E(Q)/n + lambda ||W - Q||^2`` differs by exactly what GPTQ's quadratic form
    ``(Q - W*) H~_d (Q - W*)^T`` differs by (the formula of the module docstring)."""
    x, xt, w = _streams(1, n=6, k=40, rows=200)
    x64, xt64, w64 = x.astype(np.float64), xt.astype(np.float64), w.astype(np.float64)
    H, D, damp = _H(xt), cross_term(x, xt), 0.05
    Hd = _dampened(H, damp)
    lam = Hd[0, 0] - H[0, 0]
    target = asymmetric_target(w, H, D, damp)
    rng = np.random.default_rng(2)

    def objective(q):
        return np.sum((x64 @ w64.T - xt64 @ q.T) ** 2) / x.shape[0] + lam * np.sum((w64 - q) ** 2)

    def gptq_form(q):
        e = q - target
        return float(np.sum((e @ Hd) * e))

    q1, q2 = w64 + rng.standard_normal(w.shape), w64 + rng.standard_normal(w.shape)
    assert objective(q1) - objective(q2) == pytest.approx(gptq_form(q1) - gptq_form(q2), rel=1e-9)
    assert objective(target) < min(objective(q1), objective(q2))


def test_alpha_interpolates_between_gptq_on_the_quantized_inputs_and_the_float_outputs():
    """``alpha = 0``: GPTQ on X~ bit for bit; ``alpha``: the target of the float input ``X~ + alpha (X - X~)``."""
    x, xt, w = _streams(5, n=8, k=64, rows=300)
    D = cross_term(x, xt)
    assert _same(gptaq_quantize(w, _H(xt), D, 32, "uint4_asym", alpha=0.0, clip=True),
                 gptq_quantize(w, _H(xt), 32, "uint4_asym", clip=True))
    x_alpha = xt.astype(np.float64) + 0.25 * (x.astype(np.float64) - xt)
    np.testing.assert_allclose(asymmetric_target(w, _H(xt), D, alpha=0.25),
                               asymmetric_target(w, _H(xt), cross_term(x_alpha, xt)), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="alpha"):
        asymmetric_target(w, _H(xt), D, alpha=1.5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fmt", FORMATS)
def test_gptaq_lowers_the_asymmetric_error_of_gptq_on_the_quantized_inputs(seed, fmt):
    """Against GPTQ given the same H~ (plain GPTQ on the quantized model's inputs), GPTAQ's Q is closer to the
    float model's output: ``||X W^T - X~ Q^T||`` smaller (the correction aims at X W^T, not at X~ W^T)."""
    x, xt, w = _streams(seed)
    plain = gptq_quantize(w, _H(xt), 32, fmt, clip=True)
    asym = gptaq_quantize(w, _H(xt), cross_term(x, xt), 32, fmt, clip=True)
    e_plain, e_asym = asymmetric_error(x, xt, w, _deq(plain)), asymmetric_error(x, xt, w, _deq(asym))
    assert e_asym < 0.9 * e_plain, (e_asym, e_plain)


def test_cross_term_takes_the_fold_and_checks_its_rows():
    x, xt, _ = _streams(3, k=24, rows=50)
    s = np.random.default_rng(4).uniform(0.5, 2.0, size=24).astype(np.float32)
    xs, xts = x.astype(np.float64) / s, xt.astype(np.float64) / s
    np.testing.assert_allclose(cross_term(x, xt, s), (xs - xts).T @ xts / 50, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        cross_term(x, xt[:10])
    bad = xt.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cross_term(x, bad)
    with pytest.raises(ValueError, match="D: expected"):
        asymmetric_target(np.zeros((2, 24), np.float32), np.eye(24), np.eye(5))


# --- the pipeline ---------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def _ids():
    return torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))


def test_the_registry_entry_declares_both_streams():
    from fptq import reference as ref
    from fptq.models.config import QuantConfig

    e = ref.weight_quantizer("gptaq")
    assert e.float_inputs and e.hessian and e.rows_option == "gptq_rows" and e.judge_with == "rtn"
    assert QuantConfig(weight_quantizer="gptaq").sequential_calibration
    assert not QuantConfig().sequential_calibration and QuantConfig(sequential=True).sequential_calibration
    with pytest.raises(ValueError, match="needs hessian"):
        ref.WeightQuantizer("x", "x", None, float_inputs=True)


def test_float_rows_are_the_float_models_rows():
    """``calibrate(float_rows=True)`` with an ``on_layer`` that changes each layer: the float rows of every layer
    are bit for bit the rows a plain calibration of the unchanged model keeps; the other rows differ from layer 1."""
    from fptq.models.calibrate import calibrate
    from fptq.testing import tiny_model

    plain, both = {}, {}

    def keep(store, float_too):
        def on_layer(i, prefix, layer, stats, samples):
            store.update({n: (t, samples.float_rows.get(n)) for n, t in samples.items()})
            if float_too:   # stands for quantizing the layer: its outputs change
                with torch.no_grad():
                    for p in layer.parameters():
                        p.mul_(1.1)
        return on_layer

    calibrate(tiny_model("llama"), _ids(), batch_size=2, progress=False, keep_rows=40, on_layer=keep(plain, False))
    calibrate(tiny_model("llama"), _ids(), batch_size=2, progress=False, keep_rows=40, sequential=True,
              float_rows=True, on_layer=keep(both, True))
    assert plain.keys() == both.keys()
    for name, (rows, _) in plain.items():
        assert torch.equal(both[name][1], rows), name
    assert not torch.equal(both["model.layers.1.self_attn.q_proj"][0], plain["model.layers.1.self_attn.q_proj"][0])
    with pytest.raises(ValueError, match="needs sequential"):
        calibrate(tiny_model("llama"), _ids(), progress=False, keep_rows=40, float_rows=True)
    from fptq.models.calibrate import capture_layer_inputs
    from fptq.models.journal import ResumePoint

    model = tiny_model("llama")
    hidden = capture_layer_inputs(model, _ids(), 2).hidden
    with pytest.raises(ValueError, match="both streams"):   # a resume point without the float stream is refused
        calibrate(model, _ids(), batch_size=2, progress=False, keep_rows=40, sequential=True, float_rows=True,
                  resume=ResumePoint(1, list(hidden)))


def test_gptaq_pipeline_writes_a_loadable_checkpoint(tmp_path):
    """``--weight-quantizer gptaq`` end to end: layer 0's q/k/v (X~ = X) get the codes of GPTQ calibrated
    sequentially, its o projection (fed by the quantized q/k/v) and later layers other codes; ``fptq quantize`` writes a checkpoint that loads and runs."""
    from fptq.cli import main
    from fptq.models.checkpoint import load_quantized
    from fptq.models.config import QuantConfig
    from fptq.models.quantize import quantize_model
    from fptq.testing import save_tiny_model, tiny_model

    def codes(cfg):
        res = quantize_model(tiny_model("llama"), _ids(), cfg, backend="numpy", progress=False)
        return {n: m.qweight.clone() for n, m in res.model.named_modules() if hasattr(m, "qweight")}

    seq, asym = codes(QuantConfig(group_size=32, sequential=True)), codes(QuantConfig(group_size=32,
                                                                                     weight_quantizer="gptaq"))
    qkv0 = [n for n in seq if ".layers.0.self_attn." in n and not n.endswith("o_proj")]
    assert qkv0 and all(torch.equal(seq[n], asym[n]) for n in qkv0)   # X~ = X: nothing quantized before them
    assert not torch.equal(seq["model.layers.0.self_attn.o_proj"], asym["model.layers.0.self_attn.o_proj"])
    assert any(not torch.equal(seq[n], asym[n]) for n in seq if ".layers.1." in n)

    src = save_tiny_model(tmp_path / "tiny", "llama")
    out = tmp_path / "w4a8"
    assert main(["quantize", str(src), "--out", str(out), "--weight-quantizer", "gptaq", "--calib", "random",
                 "--samples", "4", "--seq-len", "16", "--group-size", "32", "--quiet"]) == 0
    model, _, meta = load_quantized(out, backend="numpy")
    assert meta["quant_config"]["weight_quantizer"] == "gptaq"
    with torch.no_grad():
        assert torch.isfinite(model(_ids()).logits).all()


def test_the_memory_model_counts_the_float_stream():
    """GPTAQ's run holds one more hidden-state stream and the float rows beside the sequential run's."""
    from fptq.models.config import QuantConfig
    from fptq.models.memory import estimate
    from test_memory_model import DEFAULT_RUN, SMOLLM2

    seq = estimate(SMOLLM2, **DEFAULT_RUN, quant=QuantConfig(sequential=True))
    asym = estimate(SMOLLM2, **DEFAULT_RUN, quant=QuantConfig(weight_quantizer="gptaq"))
    assert asym.settings.sequential and asym.settings.float_inputs
    assert asym.components["hidden_float"] == seq.components["hidden_in"]
    assert asym.components["kept_rows_float"] * (asym.settings.rows + asym.settings.heldout_rows) == \
        seq.components["kept_rows"] * asym.settings.rows
    extra = asym.components["hidden_float"] + asym.components["kept_rows_float"]
    assert asym.steps["layer: sequential"] == seq.steps["layer: sequential"] + extra
    assert asym.steps["layer: GPTQ"] == seq.steps["layer: GPTQ"] + extra + asym.components["gptaq_work"]
    assert not {"hidden_float", "kept_rows_float", "gptaq_work", "rows_again"} & seq.components.keys()
    # the groups after the first are taken again (refresh_group_rows): a group's new rows beside its old rows and
    # those of the groups after it (SmolLM2's group inputs: q/k/v, o, gate/up 576 wide, down 1536)
    rows, kept = asym.settings.rows, asym.settings.rows + asym.settings.heldout_rows
    ks = [576, 576, 576, 1536]
    assert asym.components["rows_again"] == max(4 * (rows * ks[j] + kept * sum(ks[j:])) for j in (1, 2, 3))
    assert "layer: rows again" in asym.steps and "layer: rows again" not in seq.steps
    # time: the float stream's whole pass, then three reruns that stop at their group (o: q/k/v, attention, o;
    # gate/up: and gate/up; down: the whole layer)
    tokens, attention = 128 * 512, 2 * 128 * 512 ** 2 * 576
    qkv, o, mlp_in, down = 576 * (576 + 2 * 192), 576 * 576, 2 * 1536 * 576, 576 * 1536
    rerun = sum(2 * tokens * params + attention for params in (qkv + o, qkv + o + mlp_in, qkv + o + mlp_in + down))
    assert asym.flops["forward"][0] == seq.flops["forward"][0] * 3 // 2 + rerun


def test_each_group_is_fitted_on_the_inputs_its_quantized_predecessors_give(monkeypatch):
    """Within a layer GPTAQ calibrates the groups in turn (as its reference does): the ``X~`` rows handed to the
    cross term of o, gate/up and down are the inputs that the layer's already quantized groups give, i.e. those
    of the finished quantized model on the quantized stream (compared in float, the rows being float
    activations); q/k/v keep the first pass's rows. Counting the earlier groups' correction again is what made
    GPTAQ drift on SmolLM2 (docs/results.md)."""
    import fptq.reference as ref
    from fptq.models.calibrate import capture_layer_inputs
    from fptq.models.config import QuantConfig
    from fptq.models.quantize import quantize_model
    from fptq.testing import tiny_model

    seen, cross = {}, ref.cross_term

    def recording(x, x_tilde, s=None):
        seen.setdefault(None, []).append(np.array(x_tilde))
        return cross(x, x_tilde, s)

    monkeypatch.setattr(ref, "cross_term", recording)
    ids = _ids()
    res = quantize_model(tiny_model("llama"), ids, QuantConfig(group_size=32, weight_quantizer="gptaq"),
                         backend="numpy", mode="fake_quant", progress=False)
    groups = res.plan.groups
    assert len(seen[None]) == len(groups)
    layers = res.model.model.layers
    cap = capture_layer_inputs(res.model, ids, batch_size=8)   # the embeddings and every layer's other arguments
    for gp, x_tilde in zip(groups, seen[None]):
        if gp.layer == 0:
            continue
        rows = []
        lin = res.model.get_submodule(gp.linears[0])
        handle = lin.register_forward_hook(lambda m, inp, out: rows.append(inp[0].reshape(-1, inp[0].shape[-1])))
        with torch.no_grad():
            h = cap.hidden[0]   # layer 0's input; the layers before gp.layer run quantized
            for j in range(gp.layer + 1):
                out = layers[j](h, *cap.args[0][j], **cap.kwargs[0][j])
                h = out[0] if isinstance(out, tuple) else out
        handle.remove()
        want = rows[0].double().numpy() * (1.0 if gp.s is None else gp.s.astype(np.float64))
        if gp.group == "qkv":   # the first group's rows come from the pass before anything was quantized
            assert x_tilde.shape == want.shape
            continue
        np.testing.assert_allclose(x_tilde, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=gp.linears[0])


@pytest.mark.parametrize("stop_at", ["self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"])
def test_a_rerun_stops_once_its_linears_have_run(stop_at):
    """GPTAQ's reruns (``_rows_again``) end each batch's forward once the hooked linear has seen its input: the
    modules after it do not run, and the rows are those of a whole forward, bit for bit."""
    from fptq.models.calibrate import capture_layer_inputs
    from fptq.models.layer_pass import LayerSamples, run_layer
    from fptq.testing import tiny_model

    model = tiny_model("llama")
    cap = capture_layer_inputs(model, _ids(), batch_size=2)
    layer, prefix = model.model.layers[1], "model.layers.1"
    calls = []
    after = layer.mlp.down_proj if stop_at != "mlp.down_proj" else layer.post_attention_layernorm
    handle = after.register_forward_hook(lambda *a: calls.append(1))
    name = f"{prefix}.{stop_at}"
    whole, early = LayerSamples(), LayerSamples()
    run_layer(layer, cap, 1, hooks_on=prefix, samples=whole, stride=3, only={name}, keep_outputs=False)
    n_whole = len(calls)
    run_layer(layer, cap, 1, hooks_on=prefix, samples=early, stride=3, only={name}, keep_outputs=False,
               stop_early=True)
    handle.remove()
    assert n_whole == len(cap.hidden)
    assert len(calls) - n_whole == (len(cap.hidden) if stop_at == "mlp.down_proj" else 0)
    assert len(early[name]) == len(whole[name]) == len(cap.hidden)
    for a, b in zip(early[name], whole[name]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stop_early needs"):
        run_layer(layer, cap, 1, hooks_on=prefix, stop_early=True)
