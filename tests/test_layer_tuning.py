"""Layer-wise scale tuning (fptq.models.layer_tuning, ``QuantConfig.tune_layers_steps``, ``--tune-layers``): each
decoder layer's W4A8 group scales trained right after it is quantized toward the float layer's outputs; on tiny
random llamas (mechanics only, no accuracy claim): off changes nothing, on lowers every layer's MSE and changes
only the scales, the streamed run and a resumed run give the whole-model run's bits, bad settings are refused."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.cli import main  # noqa: E402
from fptq.models import quantize as quantize_mod  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.layer_tuning import LayerTuner, layer_tuner, summarize  # noqa: E402
from fptq.models.qlinear import W4A8Linear, quantized_linears  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.testing import tiny_model  # noqa: E402

#: 20 samples in batches of 8: three calibration batches (the last of 4)
IDS = torch.randint(3, 259, (20, 16), generator=torch.Generator().manual_seed(0))
BATCH = 8
STEPS = 24
#: the default (float inputs), plain sequential (quantized inputs) and GPTAQ (both streams)
MODES = {"float": {}, "sequential": {"sequential": True}, "gptaq": {"weight_quantizer": "gptaq"}}


def _cfg(steps: int = 0, **extra) -> QuantConfig:
    return QuantConfig(group_size=32, n_samples=len(IDS), seq_len=IDS.shape[1], keep_rows=64,
                       tune_layers_steps=steps, **extra)


def _quantize(cfg: QuantConfig):
    return quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", mode="fake_quant", progress=False,
                          batch_size=BATCH)


def _tensors(model) -> dict:
    """name -> bytes of every parameter and buffer (the W4A8 modules' qweight, wscale, wzero, act_scale...)."""
    out = {n: t.detach().numpy().tobytes() for n, t in model.state_dict().items() if t is not None}
    assert any(n.endswith("wscale") for n in out)
    return out


@pytest.mark.parametrize("mode", ["float", "sequential"])
def test_off_and_a_do_nothing_hook_change_no_byte(monkeypatch, mode):
    """(a) ``tune_layers_steps = 0``: no hook, no report. A hook that does nothing (the inputs kept for it and
    released after it, the calibration's only other change) gives the same tensors byte for byte: what tuning
    writes is all it changes. (Against the code before the feature: the same tensor digests, checked once by hand,
    see the commit message.)"""
    off = _quantize(_cfg(0, **MODES[mode]))
    assert off.layer_tuning is None and layer_tuner(_cfg(0)) is None
    calls = []

    def noop(i, prefix, layer, cap, targets):
        assert all(h is not None for h in cap.hidden)   # the layer's inputs are still there
        assert len(targets) == len(cap.hidden) == 3 and all(t.shape == h.shape for t, h in zip(targets, cap.hidden))
        assert quantized_linears(layer)                 # called after on_layer replaced the linears
        calls.append(prefix)

    noop.reports = []
    monkeypatch.setattr(quantize_mod, "layer_tuner", lambda *a, **k: noop)
    hooked = _quantize(_cfg(0, **MODES[mode]))
    assert calls == ["model.layers.0", "model.layers.1"]
    assert _tensors(hooked.model) == _tensors(off.model)
    assert [g.to_json() for g in hooked.plan.groups] == [g.to_json() for g in off.plan.groups]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tuning_lowers_every_layers_mse(mode):
    """(b) Every layer's MSE to the float layer's outputs on the first calibration batch (measured with the layer's
    own fake-quant modules before and after) drops; one report per decoder layer, one loss per step."""
    res = _quantize(_cfg(STEPS, **MODES[mode]))
    reports = res.layer_tuning
    print([(r.prefix, r.loss_before, r.loss_after) for r in reports])
    assert [r.prefix for r in reports] == ["model.layers.0", "model.layers.1"]
    for r in reports:
        assert r.linears == 7 and r.scales > 0 and len(r.losses) == STEPS and r.steps == STEPS
        assert math.isfinite(r.loss_before) and r.loss_after < r.loss_before, r.summary()
    assert "lower on 2 of 2 layers" in summarize(reports)


def test_tuning_changes_only_the_scales():
    """(b) On the default (float) stream the next layer's inputs and statistics do not depend on the tuning, so the
    tuned model equals the untuned one in every tensor but the group scales: codes, zero points, static scales,
    biases, norms and rotations byte for byte; every linear's scales moved, each by at most 4x, all positive."""
    off, on = _quantize(_cfg(0)), _quantize(_cfg(STEPS))
    a, b = _tensors(off.model), _tensors(on.model)
    assert sorted(a) == sorted(b)
    differ = sorted(n for n in a if a[n] != b[n])
    scales = sorted(n for n in a if n.endswith(".wscale"))
    assert differ == scales and len(scales) == 14
    assert [g.to_json() for g in on.plan.groups] == [g.to_json() for g in off.plan.groups]
    s0, s1 = quantized_linears(off.model), quantized_linears(on.model)
    for name, m in s1.items():
        assert isinstance(m, W4A8Linear) and m._fake_weight is None   # caches released
        ratio = (m.wscale / s0[name].wscale).log().abs()
        assert bool((m.wscale > 0).all()) and ratio.max().item() <= math.log(4.0) + 1e-6
    assert all(p.requires_grad for p in on.model.parameters())   # the flags as they were


# ---------------------------------------------------------------------------------------------- streamed, resumed
LAYERS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny untied llama saved as bfloat16 shards (as tests/test_streaming.py's and tests/test_resume.py's)."""
    from fptq.testing import save_tiny_bf16_shards

    return save_tiny_bf16_shards(tmp_path_factory.mktemp("model") / "model", LAYERS)


def test_streamed_scales_equal_the_whole_model_runs(model_dir, tmp_path):
    """(c) ``quantize_streamed`` (one layer at a time, each written as it is done) writes the whole-model run's
    checkpoint bit for bit with tuning on: the tuned scales reach the writer."""
    from fptq.models.checkpoint import open_writer, read_metadata, save_quantized
    from fptq.models.loading import load_float_model
    from fptq.models.sources import open_source
    from fptq.models.stream import open_streamed, quantize_streamed

    cfg = QuantConfig(n_samples=4, seq_len=16, keep_rows=48, tune_layers_steps=4)
    ids = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(1))
    model, tok, _ = load_float_model(str(model_dir), progress=False)
    whole = quantize_model(model, ids, cfg, batch_size=2, progress=False, inplace=True)
    save_quantized(tmp_path / "whole", whole.model, tok, whole.plan, cfg, {"run": "test"})
    with open_source(str(model_dir)) as source:
        skeleton = open_streamed(source)
        with open_writer(tmp_path / "streamed", shard_bytes=16 * 1024) as writer:
            res, _ = quantize_streamed(skeleton, source, ids, cfg, writer, batch_size=2, progress=False)
            writer.finish(skeleton, None, res.plan, cfg, {"run": "test"})
    digests = [read_metadata(tmp_path / d)["tensor_sha256"] for d in ("whole", "streamed")]
    digests = [json.loads(d) if isinstance(d, str) else d for d in digests]
    assert digests[0] == digests[1]
    assert [(r.loss_before, r.loss_after) for r in res.layer_tuning] == \
        [(r.loss_before, r.loss_after) for r in whole.layer_tuning]
    assert len(res.layer_tuning) == LAYERS


RUN = ["--calib", "random", "--samples", "6", "--seq-len", "16", "--batch-size", "4", "--quiet", "--tune-layers", "4"]


def _run(model_dir, out, *extra, fail_after=None, tuner_off=False) -> int:
    """``fptq quantize`` of the tiny model with ``--tune-layers 4``; ``fail_after``: layer k raises once recorded;
    ``tuner_off``: the tuning planted out (the hook does nothing)."""
    from fptq.models import stream

    with pytest.MonkeyPatch.context() as mp:
        if fail_after is not None:
            orig = stream.StreamedLayers.done

            def done(self, i, *a):
                orig(self, i, *a)
                if i == fail_after:
                    raise RuntimeError(f"injected failure after layer {i}")
            mp.setattr(stream.StreamedLayers, "done", done)
        if tuner_off:
            mp.setattr(LayerTuner, "__call__", lambda self, *a: None)
        return main(["quantize", str(model_dir), "--out", str(out), *RUN, *extra])


def _files(d) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ckpt"
    assert _run(model_dir, out) == 0
    return out


def test_resumed_run_is_byte_identical(reference, model_dir, tmp_path, capsys):
    """(d) ``--resume`` with tuning on: stopped after layer 1 and run again, the checkpoint is the uninterrupted
    run's byte for byte (the journal recorded the tuned layers)."""
    from fptq.models.journal import partial_dir

    out = tmp_path / "ckpt"
    assert _run(model_dir, out, "--resume", fail_after=1) == 2
    assert json.loads((partial_dir(out) / "journal.json").read_text())["next_layer"] == 2
    assert _run(model_dir, out, "--resume") == 0
    assert "continuing at layer 3" in capsys.readouterr().err
    assert _files(out) == _files(reference)


def test_resume_identity_bites_when_the_journaled_layers_are_untuned(reference, model_dir, tmp_path):
    """Planted: the interrupted run's layers recorded without tuning (the resumed one tunes the rest) write
    another checkpoint, which the identity above would catch."""
    out = tmp_path / "ckpt"
    assert _run(model_dir, out, "--resume", fail_after=1, tuner_off=True) == 2
    assert _run(model_dir, out, "--resume") == 0
    fa, fb = _files(out), _files(reference)
    assert sorted(fa) == sorted(fb) and any(fa[n] != fb[n] for n in fa)


def test_a_journal_of_other_tuning_settings_is_refused(model_dir, tmp_path, capsys):
    """The journal's fingerprint holds the tuning fields: another ``--tune-layers`` is refused by name."""
    out = tmp_path / "ckpt"
    assert _run(model_dir, out, "--resume", fail_after=0) == 2
    capsys.readouterr()
    assert _run(model_dir, out, "--resume", "--tune-layers", "3") == 2
    assert "quant_config.tune_layers_steps: interrupted run 4, this run 3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("field,value", [("tune_layers_steps", -1), ("tune_layers_steps", 1.5),
                                         ("tune_layers_steps", True), ("tune_layers_steps", "3"),
                                         ("tune_layers_lr", 0.0), ("tune_layers_lr", -1e-3),
                                         ("tune_layers_lr", float("nan")), ("tune_layers_lr", float("inf")),
                                         ("tune_layers_lr", True), ("tune_layers_lr", "0.1")])
def test_config_refuses_bad_tuning_settings(field, value):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**{field: value})


@pytest.mark.parametrize("flag,value,says", [("--tune-layers", "-1", "integer >= 0"),
                                             ("--tune-layers", "2.5", "invalid non_negative_int value"),
                                             ("--tune-layers-lr", "0", "finite number > 0"),
                                             ("--tune-layers-lr", "nan", "finite number > 0")])
def test_cli_refuses_bad_tuning_flags(tmp_path, capsys, flag, value, says):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and says in err


def test_cli_flags_reach_the_config():
    from fptq.cli import build_parser
    from fptq.cli_quantize import tuning_fields

    a = build_parser().parse_args(["quantize", "--out", "x", "--tune-layers", "5", "--tune-layers-lr", "0.01"])
    assert tuning_fields(a)["tune_layers_steps"] == 5 and tuning_fields(a)["tune_layers_lr"] == 0.01
    b = build_parser().parse_args(["quantize", "--out", "x"])
    assert tuning_fields(b)["tune_layers_steps"] == 0 and tuning_fields(b)["tune_layers_lr"] == 1e-3


def test_device_and_make_linear_refused():
    with pytest.raises(ValueError, match="--device cpu"):
        quantize_model(tiny_model("llama"), IDS, _cfg(2), progress=False, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="make_linear"):
        quantize_model(tiny_model("llama"), IDS, _cfg(2), progress=False, make_linear=lambda *a, **k: None)
