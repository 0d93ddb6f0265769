"""``fptq compare``'s rows: which ones run the quantization pipeline, and that the attribution rows
share the W4A8 row's plan (tiny Qwen3, random calibration tokens)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fptq.compare import METHODS, CompareSettings, _methods, _quant_config, _uses_pipeline, _Variants, build_variant
from fptq.models.config import QuantConfig
from fptq.models.fakequant import FakeQuantLinear
from fptq.models.qlinear import W4A8Linear
from fptq.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3").eval()


@pytest.fixture(scope="module")
def ids(model):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (4, 32), generator=g)


def settings(**quant) -> CompareSettings:
    return CompareSettings(quant=QuantConfig(group_size=32, n_samples=4, seq_len=32, calib="random", **quant),
                           backend="numpy", progress=False)


def method(s, key):
    return next(m for m in _methods(s) if m.key == key)


def plan_of(groups):
    return [(g.prefix, g.group, g.policy.value, g.act_scale, g.err_static, g.err_lae,
             None if g.s is None else np.asarray(g.s).tobytes())
            for g in groups]


def linears(model, cls):
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


def test_default_rows_run_the_pipeline_and_baselines_do_not():
    s = settings()
    assert s.quant.weight_quantizer == "gptq" and s.quant.weight_format == "uint4_asym"
    pipeline = {m.key for m in _methods(s) if _uses_pipeline(m, s)}
    assert {"fptq_w4a8_fake", "fptq_w4a8_int", "fptq_a8_only", "fptq_w4_only", "gptq_w4a16",
            "fptq_w4a8_bands", "fptq_w4a8_int4_sym", "fptq_w4a8_rotate_none", "fptq_w4a8_rotate_residual"} <= pipeline
    # the baselines are defined without the pipeline's GPTQ, rotation or sequential calibration
    assert not pipeline & {"fp32", "rtn_w4a16", "smoothquant_w8a8", "w4a8_dynamic", "w4a8_static", "fptq_paper"}
    assert not s.quant.sequential and "fptq_w4a8_sequential" in pipeline
    # the default rotation needs the pipeline, so RTN / clip-searched rows too; unrotated they do not
    assert s.quant.rotate == "online" and {"fptq_w4a8_rtn", "fptq_w4a8_mse"} <= pipeline
    u = settings(rotate="none")
    assert not {m.key for m in _methods(u) if _uses_pipeline(m, u)} & {"fptq_w4a8_rtn", "fptq_w4a8_mse"}
    # with sequential settings, one-change rows run the pipeline even with RTN or clip-searched weights
    q = settings(sequential=True)
    assert {"fptq_w4a8_rtn", "fptq_w4a8_mse", "fptq_w4a8_nosequential"} <= {
        m.key for m in _methods(q) if _uses_pipeline(m, q)}
    # with RTN settings calibrated on the float model, only the rows that ask for GPTQ, a rotation
    # or sequential calibration need it
    r = settings(weight_quantizer="rtn", weight_format="int4_sym", sequential=False, rotate="none")
    assert {m.key for m in _methods(r) if _uses_pipeline(m, r)} == {
        "gptq_w4a16", "fptq_w4a8_gptq", "fptq_w4a8_awq", "fptq_w4a8_gptaq", "fptq_w4a8_rotate_online", "fptq_w4a8_rotate_residual",
        "fptq_w4a8_noclip", "fptq_w4a8_sequential"}
    # one change each: the G=64, clip-search and previous-plan rows change only what they name
    by_key = {m.key: _quant_config(m, s) for m in _methods(s)}
    base = by_key["fptq_w4a8_int"]
    assert replace(base, group_size=64) == by_key["fptq_w4a8_g64"]
    assert replace(base, gptq_clip=False) == by_key["fptq_w4a8_noclip"]
    assert replace(base, sequential=True) == by_key["fptq_w4a8_sequential"]
    assert replace(base, policy_select="error_static", holdout=0.0) == by_key["fptq_w4a8_error_static"]
    assert "fptq_paper" in METHODS and "gptq_w4a16" in METHODS


@pytest.mark.parametrize("quant", [{}, {"weight_quantizer": "rtn", "weight_format": "int4_sym"}, {"sequential": True}],
                         ids=["gptq-default", "rtn", "sequential"])
def test_attribution_rows_have_the_w4a8_rows_plan(model, ids, quant):
    """A8-only and W4-only are the W4A8 row with float weights / float activations: same plan, same folds."""
    s = settings(**quant)
    stats, samples = None, None
    if not _uses_pipeline(method(s, "fptq_w4a8_fake"), s):
        from fptq.models.calibrate import calibrate

        samples = {}

        def keep(i, prefix, layer, layer_stats, layer_samples):
            samples.update(layer_samples)
        stats = calibrate(model, ids, batch_size=2, progress=False, on_layer=keep, keep_rows=s.quant.keep_rows)
    built = {k: build_variant(model, stats, method(s, k), s, samples, ids)
             for k in ("fptq_w4a8_fake", "fptq_a8_only", "fptq_w4_only")}
    plans = {k: plan_of(g) for k, (_, g) in built.items()}
    assert plans["fptq_w4a8_fake"] and plans["fptq_a8_only"] == plans["fptq_w4a8_fake"] == plans["fptq_w4_only"]
    w4a8 = linears(built["fptq_w4a8_fake"][0], W4A8Linear)
    a8 = linears(built["fptq_a8_only"][0], FakeQuantLinear)
    w4 = linears(built["fptq_w4_only"][0], FakeQuantLinear)
    assert w4a8.keys() == a8.keys() == w4.keys() and len(w4a8) == 7 * model.config.num_hidden_layers
    for name, q in w4a8.items():
        assert a8[name].policy is q.policy and w4[name].policy is None  # A8 row quantizes activations as W4A8
        # the W4-only row's weights are the W4A8 row's INT4 weights, dequantized
        assert torch.equal(w4[name].weight, torch.from_numpy(q.dequantize_weight()))


def test_gptq_w4a16_has_float_activations_and_gptq_weights(model, ids):
    s = settings()
    g, _ = build_variant(model, None, method(s, "gptq_w4a16"), s, None, ids)
    r = settings(weight_quantizer="rtn")
    from fptq.models.calibrate import calibrate

    stats = calibrate(model, ids, batch_size=2, progress=False)
    rt, _ = build_variant(model, stats, method(r, "rtn_w4a16"), r, None, ids)
    gl, rl = linears(g, FakeQuantLinear), linears(rt, FakeQuantLinear)
    assert gl.keys() == rl.keys() and all(m.policy is None for m in gl.values())
    differ = sum(not torch.equal(gl[n].weight, rl[n].weight) for n in gl)
    assert differ == len(gl)  # GPTQ changes every layer's codes on correlated inputs


def test_fake_and_integer_rows_share_one_quantization(model, ids):
    s = settings()
    v = _Variants(model, None, s, None, ids)
    fake, gf = v.get(method(s, "fptq_w4a8_fake"))
    integer, gi = v.get(method(s, "fptq_w4a8_int"))
    assert integer is fake and gi is gf
    assert all(m.mode == "integer" for m in linears(integer, W4A8Linear).values())
    other, _ = v.get(method(s, "fptq_w4a8_bands"))  # another configuration: rebuilt
    assert other is not fake


def test_rows_change_only_what_they_name():
    s = settings()

    base = s.quant
    assert _quant_config(method(s, "fptq_w4a8_fake"), s) == replace(base, force_policy=None)
    assert _quant_config(method(s, "fptq_w4a8_rtn"), s) == replace(base, weight_quantizer="rtn")
    assert _quant_config(method(s, "fptq_w4a8_int4_sym"), s) == replace(base, weight_format="int4_sym")
    assert _quant_config(method(s, "fptq_w4a8_rotate_residual"), s) == replace(base, rotate="residual")
    assert _quant_config(method(s, "fptq_w4a8_rotate_none"), s) == replace(base, rotate="none")
    assert "fptq_w4a8_rotate_online" not in {m.key for m in _methods(s)}   # the default is no row of its own
    paper = _quant_config(method(s, "fptq_paper"), s)
    assert (paper.weight_quantizer, paper.weight_format, paper.policy_select) == ("rtn", "int4_sym", "bands")


def test_peer_rows_must_be_on_the_same_windows(tmp_path):
    import json

    from fptq.compare import format_markdown, read_peer_rows

    good = {"eval_seq_len": 512, "rows": [
        {"key": "torchao_x", "label": "torchao X", "weights": "INT4", "acts": "INT8", "n_windows": 16,
         "ppl": {"ptb": 90.0, "wiki": 17.0}},
        {"key": "llmc_preset", "label": "llm-compressor preset", "error": "576 is not a multiple of 128"}]}
    p = tmp_path / "peers.json"
    p.write_text(json.dumps(good))
    rows = read_peer_rows(p, ("ptb", "wiki"), 16, 512)
    assert [r["label"] for r in rows] == ["peer: torchao X",
                                         "peer: llm-compressor preset (fails: 576 is not a multiple of 128)"]
    fp32 = {"key": "fp32", "label": "FP32", "weights": "", "acts": "", "ppl": {"ptb": 60.0, "wiki": 12.0},
            "seconds": 1.0}
    md = format_markdown([fp32, *rows], ["ptb", "wiki"])
    assert "| peer: torchao X | INT4 | INT8 | 90.00 | 17.00 | +50.0% / +41.7% |" in md
    assert "(fails: 576 is not a multiple of 128) |  |  | - | - | - |" in md
    for bad, msg in [({"rows": [{"key": "a", "label": "A", "n_windows": 8, "ppl": {"ptb": 1.0, "wiki": 1.0}}]},
                      "on 8 windows"),
                     ({"rows": [{"key": "a", "label": "A", "n_windows": 16, "ppl": {"ptb": 1.0}}]}, "needs"),
                     ({"eval_seq_len": 256, "rows": []}, "256 tokens"),
                     ({"nope": 1}, "not a peers result file")]:
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            read_peer_rows(p, ("ptb", "wiki"), 16, 512)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="peers.json"):
        read_peer_rows(p, ("ptb", "wiki"), 16, 512)
