"""Scale tuning (fptq.models.scale_tuning): the W4A8 group scales trained toward the float model's next-token
distribution, codes and zero points frozen; on tiny random llamas (mechanics only, no accuracy claim)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fptq.models.config import QuantConfig
from fptq.models.qlinear import W4A8Linear, quantized_linears, set_quantized_mode
from fptq.models.quantize import LayerIO, quantize_model
from fptq.models.scale_tuning import mean_kl, tunable_scales, tune_scales
from fptq.spec import ActPolicy, WeightFormat
from fptq.testing import tiny_model

IDS = torch.randint(3, 259, (4, 16), generator=torch.Generator().manual_seed(0))
FORMATS = [WeightFormat.ASYMMETRIC.value, WeightFormat.SYMMETRIC.value]


@pytest.fixture(scope="module", params=FORMATS)
def quantized(request):
    """(float teacher, its W4A8 copy in fake-quant mode): RTN, online rotation (input rotations on the linears)."""
    teacher = tiny_model("llama")
    cfg = QuantConfig(group_size=32, weight_format=request.param, weight_quantizer="rtn")
    res = quantize_model(teacher, IDS, cfg, backend="numpy", mode="fake_quant", progress=False)
    return teacher, res.model


def _bytes(t) -> bytes:
    return b"" if t is None else t.detach().numpy().tobytes()


def _state(model) -> dict:
    """Everything scale tuning must leave as it was (besides wscale), per module."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (type(m), sorted(n for n, _ in m.named_parameters(recurse=False)),
                     sorted(n for n, _ in m.named_buffers(recurse=False)), len(m._forward_pre_hooks),
                     len(m._forward_hooks), "forward" in m.__dict__)
    out["requires_grad"] = [(n, p.requires_grad) for n, p in model.named_parameters()]
    return out


def test_step_zero_weight_is_the_modules_dequantization_bit_for_bit(quantized):
    """At step 0 the torch dequantization ``s[:, g(k)] * (q - z)`` is W4A8Linear.dequantize_weight() byte for
    byte, and the tuned forward (STE rounding + that weight) is the fake-quant module's forward byte for byte."""
    teacher, model = quantized
    model = copy.deepcopy(model)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    want = {n: (m.dequantize_weight(), m(x) if m.in_features == 64 else None)
            for n, m in quantized_linears(model).items()}
    with tunable_scales(model) as tuned:
        for name, t in tuned.items():
            w = t.weight().detach().numpy()
            assert w.dtype == np.float32 and w.tobytes() == want[name][0].tobytes(), name
            if want[name][1] is not None:
                assert t.module(x).detach().numpy().tobytes() == want[name][1].detach().numpy().tobytes(), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_short_last_group_dequantizes_bit_for_bit(fmt):
    """K = 80, G = 32: the last group has 16 columns; a static policy's activation rounding."""
    lin = torch.nn.Linear(80, 12, bias=True)
    torch.nn.init.normal_(lin.weight, generator=torch.Generator().manual_seed(3))
    m = W4A8Linear.from_linear(lin, ActPolicy.STATIC, 0.05, 32, fmt, backend="numpy", mode="fake_quant")
    x = torch.randn(3, 80, generator=torch.Generator().manual_seed(4))
    want_w, want_y = m.dequantize_weight(), m(x).detach().numpy()
    with tunable_scales(torch.nn.Sequential(m)) as tuned:
        (t,) = tuned.values()
        assert t.weight().detach().numpy().tobytes() == want_w.tobytes()
        assert m(x).detach().numpy().tobytes() == want_y.tobytes()


def test_tuning_restores_the_modules_and_writes_only_the_scales(quantized):
    teacher, model = quantized
    model = copy.deepcopy(model)
    before, linears = _state(model), quantized_linears(model)
    frozen = {n: (_bytes(m.qweight), _bytes(m.wzero), _bytes(m.bias), _bytes(m.act_scale)) for n, m in linears.items()}
    scales = {n: m.wscale.clone() for n, m in linears.items()}
    x = model(IDS[:1]).logits  # fills every fake-quant cache: tuning must release them
    report = tune_scales(model, teacher, IDS, steps=3, measure=0)
    assert report.linears == len(linears) == 14 and report.loss_before is None and len(report.losses) == 3
    assert _state(model) == before
    assert all(p.requires_grad for p in model.parameters())  # the float parts' flags as they were
    changed = 0
    for n, m in quantized_linears(model).items():
        assert m is linears[n] and m._fake_weight is None and m._on_backend is None
        assert (_bytes(m.qweight), _bytes(m.wzero), _bytes(m.bias), _bytes(m.act_scale)) == frozen[n]
        s = m.wscale
        assert s.dtype == torch.float32 and s.shape == scales[n].shape and not s.requires_grad
        assert bool(torch.isfinite(s).all()) and bool((s > 0).all())
        ratio = (s / scales[n]).log().abs().max().item()
        assert ratio <= math.log(4.0) + 1e-6
        changed += not torch.equal(s, scales[n])
    assert changed == len(linears)
    set_quantized_mode(model, "integer", "numpy")
    with torch.no_grad():
        y = model(IDS[:1]).logits
    assert y.shape == x.shape and bool(torch.isfinite(y).all())


def test_tuning_lowers_the_kl_to_the_float_model(quantized):
    """The KL(float || quantized) on the calibration samples, measured on the restored model (fake-quant and
    integer mode) before and after, drops: the report's numbers and the modules' own (full-batch steps at the
    default rate; measured: asym 0.0567 -> 0.0390, sym 0.0900 -> 0.0680 in 20 steps)."""
    teacher, model = quantized
    model = copy.deepcopy(model)
    kl_fake = mean_kl(model, teacher, IDS)
    report = tune_scales(model, teacher, IDS, steps=20, lr=1e-3, batch=len(IDS), measure=len(IDS))
    after_fake = mean_kl(model, teacher, IDS)
    set_quantized_mode(model, "integer", "numpy")
    after_int = mean_kl(model, teacher, IDS)
    print(f"KL before {report.loss_before:.5f} (fake-quant module {kl_fake:.5f}); after {report.loss_after:.5f} "
          f"(fake-quant module {after_fake:.5f}, integer {after_int:.5f}); step losses {report.losses}")
    assert report.loss_before == pytest.approx(kl_fake, rel=1e-4)
    assert report.loss_after == pytest.approx(after_fake, rel=1e-4)
    assert after_fake < 0.8 * kl_fake and after_int < 0.8 * kl_fake


def test_zero_steps_change_nothing(quantized):
    teacher, model = quantized
    model = copy.deepcopy(model)
    scales = {n: _bytes(m.wscale) for n, m in quantized_linears(model).items()}
    report = tune_scales(model, teacher, IDS, steps=0)
    assert report.losses == [] and report.loss_before is None and report.linears == 0
    assert {n: _bytes(m.wscale) for n, m in quantized_linears(model).items()} == scales


def test_quantize_model_runs_the_tuning_from_the_config():
    """benchmarks/quantize_variant.py's call: QuantConfig(tune_scales_steps=N), inplace=True; the float copy is
    made inside; steps 0 (the default) gives the untuned model's scales byte for byte."""
    cfg = dict(group_size=32, weight_quantizer="rtn")
    off = quantize_model(tiny_model("llama"), IDS, QuantConfig(**cfg), backend="numpy", progress=False,
                         inplace=True)
    on = quantize_model(tiny_model("llama"), IDS, QuantConfig(**cfg, tune_scales_steps=2, tune_scales_lr=1e-2),
                        backend="numpy", mode="integer", progress=False, inplace=True)
    zero = quantize_model(tiny_model("llama"), IDS, QuantConfig(**cfg, tune_scales_steps=0), backend="numpy",
                          progress=False, inplace=True)
    assert off.scale_tuning is None and zero.scale_tuning is None and on.scale_tuning.steps == 2
    a, b, z = (quantized_linears(r.model) for r in (off, on, zero))
    assert all(_bytes(a[n].wscale) == _bytes(z[n].wscale) for n in a)
    assert all(_bytes(a[n].qweight) == _bytes(b[n].qweight) for n in a)
    assert any(_bytes(a[n].wscale) != _bytes(b[n].wscale) for n in a)
    assert on.config.to_json()["tune_scales_steps"] == 2
    with torch.no_grad():
        assert bool(torch.isfinite(on.model(IDS[:1]).logits).all())


def test_tuning_needs_the_whole_model_and_the_w4a8_modules():
    cfg = QuantConfig(group_size=32, tune_scales_steps=1)
    with pytest.raises(ValueError, match="tune_scales_steps needs the whole model"):
        quantize_model(tiny_model("llama"), IDS, cfg, progress=False, layer_io=LayerIO())
    with pytest.raises(ValueError, match="make_linear"):
        quantize_model(tiny_model("llama"), IDS, cfg, progress=False, make_linear=lambda *a, **k: None)
    with pytest.raises(ValueError, match="no W4A8Linear"):
        tune_scales(tiny_model("llama"), tiny_model("llama"), IDS, steps=1)


@pytest.mark.parametrize("field,value", [("tune_scales_steps", -1), ("tune_scales_steps", 1.5),
                                         ("tune_scales_steps", True), ("tune_scales_steps", "3"),
                                         ("tune_scales_lr", 0.0), ("tune_scales_lr", -1e-3),
                                         ("tune_scales_lr", float("nan")), ("tune_scales_lr", float("inf")),
                                         ("tune_scales_lr", "0.01"), ("tune_scales_lr", True)])
def test_config_refuses_bad_tuning_settings(field, value):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**{field: value})


def test_config_defaults_keep_tuning_off():
    cfg = QuantConfig()
    assert cfg.tune_scales_steps == 0 and cfg.to_json()["tune_scales_lr"] == cfg.tune_scales_lr > 0
    assert QuantConfig(tune_scales_steps=5, tune_scales_lr=np.float64(0.01)).tune_scales_steps == 5


@pytest.mark.parametrize("kwargs,match", [({"steps": -1}, "steps"), ({"steps": 2, "lr": 0}, "lr"),
                                          ({"steps": 2, "batch": 5}, "batch")])
def test_tune_scales_refuses_bad_arguments(quantized, kwargs, match):
    teacher, model = quantized
    with pytest.raises(ValueError, match=match):
        tune_scales(model, teacher, IDS, **kwargs)


def test_cli_flags_reach_the_config(capsys):
    from fptq.cli import _quant_config, build_parser, main
    from fptq.cli_quantize import tuning_fields
    from fptq.cli_resume import check_resume_flags

    a = build_parser().parse_args(["quantize", "--out", "x", "--tune-scales", "7", "--tune-scales-lr", "0.02"])
    cfg = _quant_config(a, **tuning_fields(a))
    assert cfg == QuantConfig(tune_scales_steps=7, tune_scales_lr=0.02)
    d = build_parser().parse_args(["quantize", "--out", "x"])
    assert _quant_config(d, **tuning_fields(d)) == QuantConfig()
    for bad in (["--tune-scales", "-1"], ["--tune-scales-lr", "0"], ["--tune-scales-lr", "nan"]):
        with pytest.raises(SystemExit) as e:
            main(["quantize", "--out", "x", *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
    r = build_parser().parse_args(["quantize", "--out", "x", "--tune-scales", "3", "--resume"])
    with pytest.raises(ValueError, match="--resume cannot be used with --tune-scales"):
        check_resume_flags(r, _quant_config(r, **tuning_fields(r)))


def test_cli_quantize_with_tuning_writes_a_checkpoint_that_records_it(tmp_path, capsys):
    """``fptq quantize --tune-scales 2``: the whole-model path (online rotation), the checkpoint loads and
    computes with the tuned scales, its quant_config records the steps and rate."""
    from fptq.cli import main
    from fptq.models.checkpoint import load_quantized, read_metadata
    from fptq.testing import save_tiny_model

    src = save_tiny_model(tmp_path / "tiny", "llama")
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--out", str(out), "--calib", "random", "--samples", "2", "--seq-len", "16",
                 "--group-size", "32", "--weight-quantizer", "rtn", "--tune-scales", "2", "--tune-scales-lr", "0.01",
                 "--quiet"]) == 0
    qc = read_metadata(out)["quant_config"]
    assert qc["tune_scales_steps"] == 2 and qc["tune_scales_lr"] == 0.01
    model, _, meta = load_quantized(out, backend="numpy")
    assert meta["quant_config"]["tune_scales_steps"] == 2
    with torch.no_grad():
        assert bool(torch.isfinite(model(IDS[:1]).logits).all())
    capsys.readouterr()
    refused = tmp_path / "r"
    assert main(["quantize", str(src), "--out", str(refused), "--tune-scales", "2", "--resume", "--quiet"]) == 2
    assert "--resume cannot be used with --tune-scales" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "tiny"]
