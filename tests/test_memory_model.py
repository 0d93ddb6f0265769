"""The memory model of a streamed run (fptq/models/memory.py): components computed by hand for SmolLM2-135M
and a LLaMA-3-8B shape, the kept-row counts against calibrate's own, the layer formulas against real tiny
models, check_fits's refusal, describe(), the 70B projection of docs/scale.md."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from fptq.models import memory
from fptq.models.config import QuantConfig
from fptq.models.memory import InsufficientMemory, check_fits, estimate, kept_rows, heldout_rows, shape_of

SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False}
DEFAULT_RUN = dict(n_samples=128, seq_len=512, batch_size=8)


def test_smollm2_components_by_hand():
    est = estimate(SMOLLM2, **DEFAULT_RUN)
    c = est.components
    assert c["hidden_in"] == c["hidden_out"] == 128 * 512 * 576 * 4
    assert c["embeddings_f32"] == 49152 * 576 * 4
    assert "embeddings_read" not in c          # float32 source: no other-dtype copy; finiteness checked in chunks
    assert c["nonlayer_stored"] == 49152 * 576 * 2 and c["rotation_build"] == 12 * 1536 ** 2
    # 128 x 512 tokens strided by 8 -> 8192 rows; 16 held-out samples strided by 4 -> 2048 rows
    assert (est.settings.rows, est.settings.heldout_rows) == (8192, 2048)
    per_input_k = 576 + 576 + 576 + 1536          # qkv | o | gate_up | down: one copy per group input
    assert c["kept_rows"] == (8192 + 2048) * 4 * per_input_k
    # down, one linear: its Hessian is handed to GPTQ (no cached copy beside it); the rows of the groups
    # before it are gone by its GPTQ, its own once its Hessian is built
    assert est.hessian_group == "down" and "hessian" not in c
    assert c["rows_hessian"] == (8192 + 2048) * 4 * 1536 and "rows_gptq" not in c
    assert "hessians_cached" not in c      # each group's Hessian is freed once its linears are quantized
    assert c["hidden_in_forward"] == 8 * 512 * 576 * 4 and "hidden_in_kept" not in c   # consumed batch by batch
    assert c["hessian_build"] == int(8192 * 1536 * 8 + 1.1 * 1536 ** 2 * 8)
    assert c["layer_f32"] == 4 * (576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3 + 2 * 576)
    assert c["rotations"] == 12 * 576 ** 2 + 4 * 1536 ** 2 + 12 * 64 ** 2     # Q_f held as float32 only
    assert c["rotation_transient"] == 8 * 1536 * 576 + memory.ROTATION_BLOCK_BYTES   # W Q of down by the factors
    q = lambda n, k: n * math.ceil(k / 2) + n * math.ceil(k / 128) * 5 + 4  # noqa: E731  packed, scale, zero, act
    layer_q = 2 * q(576, 576) + 2 * q(192, 576) + 2 * q(1536, 576) + q(576, 1536) + 2 * 576 * 4
    assert c["layer_quantized"] == layer_q
    assert c["shard_buffer"] == 30 * layer_q          # the whole checkpoint's layers fit one 128 MiB shard
    assert c["baseline"] == memory.BASELINE_BYTES + memory.BLAS_BYTES
    assert c["tokenizer"] == 1183 * 49152 and c["calibration_text"] == memory.CALIB_TEXT_BYTES["mix"]
    assert est.steps["calibration text"] == c["baseline"] + c["tokenizer"] + c["calibration_text"]


@pytest.mark.parametrize("calib, key", [("wiki", "wiki"), ("mix", "mix"), ("some/file.txt", "mix")])
def test_calibration_text_follows_the_calibration_source(calib, key):
    """The measured bytes of the source named (the default is "mix"); a source not measured counts as the
    largest measured."""
    c = estimate(SMOLLM2, quant=QuantConfig(calib=calib), **DEFAULT_RUN).components
    assert c["calibration_text"] == memory.CALIB_TEXT_BYTES[key]
    assert memory.CALIB_TEXT_BYTES["mix"] > memory.CALIB_TEXT_BYTES["wiki"]


def test_llama3_8b_components_by_hand():
    est = estimate(LLAMA3_8B, n_samples=16, seq_len=512, batch_size=8, source_dtype_bytes=2)
    c = est.components
    assert c["hidden_in"] == 16 * 512 * 4096 * 4
    assert "hessian" not in c and est.hessian_group == "down"   # handed to GPTQ, which works in it
    # the inverse works in place (one [K,K]); the error feedback's W copies set GPTQ's peak
    assert c["gptq_work"] == int(8 * (1.0 * 14336 ** 2 + 3.1 * 4096 * 14336))
    assert "rows_gptq" not in c
    assert c["embeddings_f32"] == 128256 * 4096 * 4 and "lm_head_f32" not in c   # one table at a time
    assert c["embeddings_read"] == 128256 * 4096 * 2                # the bf16 tensor while it becomes float32
    assert c["nonlayer_stored"] == 128256 * 4096 * 2                # untied: one table's bf16 copy, then spilled
    assert c["layer_read"] == 14336 * 4096 * 2                      # bf16 tensor (finiteness: in chunks)
    assert est.steps["write: read"] == sum(c.get(n, 0) for n in ("baseline", "tokenizer", "rotations",
                                                                   "embeddings_read", "embeddings_f32", "write_buffer"))
    assert est.steps["write"] == est.steps["write: read"] - c["embeddings_read"] + c["nonlayer_stored"]
    # 16 x 512 = 8192 tokens: every one kept (stride 1); 2 held-out samples: 1024 rows
    assert (est.settings.rows, est.settings.heldout_rows) == (8192, 1024)
    assert c["kept_rows"] == (8192 + 1024) * 4 * (4096 + 4096 + 4096 + 14336)
    assert c["rotations"] == 12 * 4096 ** 2 + 4 * 14336 ** 2 + 12 * 128 ** 2
    assert est.peak_bytes == max(est.steps.values()) == est.steps[est.peak_step]
    assert est.steps["layer: GPTQ"] == sum(c.get(n, 0) for n in memory.STEPS["layer: GPTQ"])
    assert est.phases["per-layer quantization"] == max(v for k, v in est.steps.items() if k.startswith("layer:"))
    assert est.phases["capture"] == max(est.steps[s] for s in ("capture", "calibration text", "rotation plan"))
    assert est.phases["final write"] == max(est.steps["write"], est.steps["write: read"])


def test_shared_input_rows_and_settings_change_the_right_components():
    base = estimate(SMOLLM2, **DEFAULT_RUN)
    per_linear = estimate(SMOLLM2, **DEFAULT_RUN, shared_input_rows=False)
    assert per_linear.components["kept_rows"] == (8192 + 2048) * 4 * (3 * 576 + 576 + 2 * 576 + 1536)
    rtn = estimate(SMOLLM2, **DEFAULT_RUN, quant=QuantConfig(weight_quantizer="rtn", policy_select="bands"))
    assert not {"kept_rows", "hessian", "gptq_work", "plan_judging"} & set(rtn.components)
    seq = estimate(SMOLLM2, **DEFAULT_RUN, quant=QuantConfig(sequential=True))
    assert seq.components["hidden_out_sequential"] == base.components["hidden_in"]
    assert "layer: sequential" in seq.steps and "layer: sequential" not in base.steps
    none = estimate(SMOLLM2, **DEFAULT_RUN, quant=QuantConfig(rotate="none"))
    assert "rotations" not in none.components and "rotation_transient" not in none.components
    gemma2 = dict(SMOLLM2, model_type="gemma2")
    assert estimate(gemma2, **DEFAULT_RUN).components["captured_args"] >= 128 * 512 * 512 * 8  # 2 float32 masks


@pytest.mark.parametrize("n,seq_len,batch,keep,holdout", [(10, 16, 4, 24, 3), (7, 5, 3, 1000, 2), (12, 8, 5, 9, 1)])
def test_row_counts_equal_what_calibrate_keeps(n, seq_len, batch, keep, holdout):
    """kept_rows / heldout_rows against the rows calibrate() really keeps on a tiny llama."""
    torch = pytest.importorskip("torch")
    from fptq.models.calibrate import calibrate
    from fptq.testing import tiny_model

    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(0))
    got = {}
    calibrate(model, ids, batch_size=batch, progress=False, keep_rows=keep, holdout=holdout, holdout_rows=keep,
              on_layer=lambda i, p, layer, st, samples: got.setdefault(i, samples))
    samples = got[0]
    assert {int(v.shape[0]) for v in samples.values()} == {kept_rows(n, seq_len, batch, keep)}
    assert {int(v.shape[0]) for v in samples.heldout.values()} == {heldout_rows(n, seq_len, batch, holdout, keep)}


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_kept_rows_bytes_equal_what_calibrate_holds(family):
    """The model's kept_rows (default settings' rule, tiny sizes) = the distinct bytes calibrate() keeps: q/k/v
    (and gate/up) share one copy of their input's rows, held-out rows included."""
    torch = pytest.importorskip("torch")
    from fptq.models.calibrate import calibrate
    from fptq.testing import tiny_model

    model = tiny_model(family)
    n, seq_len, batch, keep, holdout = 10, 16, 4, 24, 3
    ids = torch.randint(0, model.config.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(0))
    got = {}
    calibrate(model, ids, batch_size=batch, progress=False, keep_rows=keep, holdout=holdout, holdout_rows=keep,
              on_layer=lambda i, p, layer, st, samples: got.setdefault(i, samples))
    held = {v.data_ptr(): v.numel() * 4 for v in got[0].heldout.values()}
    kept = {v.data_ptr(): v.numel() * 4 for v in got[0].values()}
    quant = QuantConfig(keep_rows=keep, gptq_rows=keep, holdout=holdout / n)
    est = estimate(model.config.to_dict(), n_samples=n, seq_len=seq_len, batch_size=batch, quant=quant)
    assert est.components["kept_rows"] == sum(kept.values()) + sum(held.values())


def test_rows_follow_the_pipelines_rule():
    from fptq.models.quantize import rows_to_keep

    for cfg in (QuantConfig(), QuantConfig(weight_quantizer="rtn"), QuantConfig(weight_quantizer="awq"),
                QuantConfig(weight_quantizer="rtn", policy_select="bands"), QuantConfig(gptq_rows=100, keep_rows=3)):
        s = memory.settings(cfg, **DEFAULT_RUN)
        assert s.rows == kept_rows(128, 512, 8, rows_to_keep(cfg)), cfg
        assert s.hessian == (cfg.weight_quantizer == "gptq")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2", "gemma3",
                                    "opt"])
def test_layer_formulas_match_a_real_tiny_model(family):
    """shape_of(config dict) of each family's tiny model: layer_float_bytes = its layer 0's parameters, float32;
    layer_params = its seven linears' weights (so the q/k/v bias, the norms, the head widths are right)."""
    pytest.importorskip("torch")
    from fptq.models.arch import find_decoder_layers
    from fptq.testing import tiny_model

    model = tiny_model(family)
    shape = shape_of(model.config.to_dict())
    layer = find_decoder_layers(model)[1][0]
    assert shape.layer_float_bytes() == 4 * sum(p.numel() for p in layer.parameters())
    linears = {n: m for n, m in layer.named_modules() if type(m).__name__ == "Linear"}
    assert len(linears) == len(shape.linears())
    assert shape.layer_params() == sum(m.weight.numel() for m in linears.values())
    assert shape.layers == model.config.num_hidden_layers and shape.vocab == model.config.vocab_size


def test_shape_of_reads_nested_configs_and_refuses_clearly():
    nested = {"model_type": "gemma3", "tie_word_embeddings": True,
              "text_config": {"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
                              "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
                              "head_dim": 256, "vocab_size": 262144}}
    s = shape_of(nested)
    assert (s.family, s.hidden, s.head_dim, s.q_width, s.kv_width, s.tied) == ("gemma3", 640, 256, 1024, 256, True)
    assert shape_of(SMOLLM2).head_dim == 64 and shape_of(dict(SMOLLM2, num_key_value_heads=None)).kv_heads == 9
    with pytest.raises(ValueError, match="intermediate_size"):
        shape_of({k: v for k, v in SMOLLM2.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="'phi3' is not one of"):
        shape_of(dict(SMOLLM2, model_type="phi3"))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        estimate(SMOLLM2, n_samples=0, seq_len=512, batch_size=8)
    with pytest.raises(ValueError, match="device must be"):
        estimate(SMOLLM2, **DEFAULT_RUN, device="tpu")


def test_check_fits_refuses_with_what_to_lower(tmp_path):
    est = estimate(LLAMA3_8B, n_samples=16, seq_len=512, batch_size=8, source_dtype_bytes=2)
    with pytest.raises(InsufficientMemory) as e:
        check_fits(est, available=4 << 30)
    msg = str(e.value)
    assert isinstance(e.value, MemoryError)
    assert f"{est.peak_bytes / 2**30:.2f} GiB" in msg and "4.00 GiB is available" in msg
    assert f"'{est.peak_step}'" in msg and "--samples" in msg and "--batch-size" in msg
    biggest = max((n for n in memory.STEPS[est.peak_step] if n in est.components), key=est.components.get)
    assert biggest in msg
    assert check_fits(est, available=est.peak_bytes) == 0
    gpu = estimate(LLAMA3_8B, n_samples=16, seq_len=512, batch_size=8, device="cuda")
    with pytest.raises(InsufficientMemory, match="GiB of GPU memory at its peak .'layer: [A-Za-z]+'.*1.00 GiB is free"):
        check_fits(gpu, available=1 << 50, device_available=1 << 30)
    assert check_fits(gpu, available=1 << 50, device_available=1 << 50) == (1 << 50) - gpu.peak_bytes
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    assert memory.mem_available(str(meminfo)) == 1000 * 1024
    assert memory.mem_available(str(tmp_path / "absent")) is None


def test_describe_names_every_component_and_step():
    for device in ("cpu", "cuda"):
        est = estimate(LLAMA3_8B, n_samples=16, seq_len=512, batch_size=8, device=device)
        text = est.describe()
        for name in est.components:
            assert f"\n{name} " in text, name
        for step in est.steps:
            assert f"\n{step} " in text, step
        assert f"peak: {est.peak_bytes / 2**30:.2f} GiB" in text
        timed = est.describe(rate=1e9)
        assert timed.startswith(text) and f"{est.time_estimate(1e9)['per_layer_s']:.1f} s per layer" in timed
    assert "cuda_context" in est.components and est.device_peak_bytes > 0 and est.where("hessian_build") == "gpu"
    assert est.where("gptq_work") == "host" and est.where("kept_rows") == "host"   # fptq.models.device keeps them there


def test_time_estimate_counts_the_forward_and_gptq():
    est = estimate(SMOLLM2, **DEFAULT_RUN)
    p = 576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3
    assert est.flops["forward"] == (2 * p * 128 * 512 + 2 * 128 * 512 ** 2 * 576, "float32")
    assert est.flops["gptq_feedback"][0] == 2 * 576 * 576 ** 2 + 2 * 192 * 576 ** 2 + 2 * 1536 * 576 ** 2 \
        + 576 * 1536 ** 2
    t = est.time_estimate({"float32": 1e9, "float64": 1e9, "elementwise": 1e9})
    assert t["forward"] == pytest.approx(est.flops["forward"][0] / 1e9)
    assert t["total_s"] == pytest.approx(30 * t["per_layer_s"])
    rates = memory.measure_rate(0.05)
    assert all(v > 0 for v in rates.values()) and set(rates) == {"float32", "float64", "elementwise"}


def test_llama2_70b_projection(capsys):
    """The projection docs/scale.md quotes (``python -m fptq.models.memory``): printed here too."""
    text = memory.projection()
    print(text)
    assert "80 layers, hidden 8192, MLP 28672" in text and "device cpu" in text and "device cuda" in text
    cpu = estimate(memory.LLAMA2_70B, **DEFAULT_RUN, source_dtype_bytes=2)
    gpu = estimate(memory.LLAMA2_70B, **DEFAULT_RUN, source_dtype_bytes=2, device="cuda")
    assert cpu.components["gptq_work"] == int(8 * (28672 ** 2 + 3.1 * 8192 * 28672))
    assert gpu.device_peak_bytes < 80e9 and gpu.peak_bytes < cpu.peak_bytes


def test_importing_the_memory_model_loads_no_framework():
    code = ("import sys\nimport fptq.models.memory\n"
            "print([m for m in ('torch', 'numpy', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


#: the layer steps of SmolLM2 at DEFAULT_RUN with a bf16 source, computed by the memory model before it counted
#: layer-wise scale tuning (commit 70bfbd6): with tuning off they must not move by a byte
_BEFORE_TUNING = {
    "default": {"layer: load": 778874696, "layer: rotate": 985509704, "layer: forward": 1112125256,
                "layer: rows": 1044492104, "layer: plan": 965062472, "layer: Hessian": 963368752,
                "layer: GPTQ": 819844912, "layer: flush": 779029092},
    "sequential": {"layer: load": 778874696, "layer: rotate": 985509704, "layer: forward": 1253683016,
                   "layer: rows": 1195487048, "layer: plan": 1116057416, "layer: Hessian": 1114363696,
                   "layer: GPTQ": 970839856, "layer: sequential": 1287064164, "layer: flush": 779029092}}
_TUNE = ("tune_inputs", "tune_integer", "tune_scales", "tune_autograd", "tune_backward")


@pytest.mark.parametrize("mode", sorted(_BEFORE_TUNING))
def test_layer_tuning_off_leaves_the_estimate_as_it_was(mode):
    """tune_layers_steps = 0 (the default): the same bytes as before the tuning was counted, no tune step."""
    seq = mode == "sequential"
    est = estimate(SMOLLM2, **DEFAULT_RUN, source_dtype_bytes=2, quant=QuantConfig(sequential=seq, tune_layers_steps=0))
    assert {k: v for k, v in est.steps.items() if k.startswith("layer")} == _BEFORE_TUNING[mode]
    assert est.settings.tune_steps == 0 and not set(_TUNE) & est.components.keys()
    for cfg, kw in ((LLAMA3_8B, {}), (dict(SMOLLM2, model_type="gemma2"), {"device": "cuda"})):
        for extra in ({}, {"weight_quantizer": "gptaq"}, {"sequential": True}):
            off, default = (estimate(cfg, **DEFAULT_RUN, **kw, quant=QuantConfig(**extra, **t))
                            for t in ({"tune_layers_steps": 0}, {}))
            assert (off.components, off.steps, off.device_steps) == (default.components, default.steps,
                                                                      default.device_steps)
            assert "layer: tune" not in off.steps


def _tiny_llama(**over):
    return {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, **over}


def test_layer_tuning_components_by_hand():
    """hidden 64, MLP 128, 4/2 heads of 16; 6 samples of 8 tokens in batches of 4 (T = 32 tokens), groups of 32."""
    run = dict(n_samples=6, seq_len=8, batch_size=4)
    quant = QuantConfig(group_size=32, tune_layers_steps=3)
    assert memory.settings(quant, **run).tune_steps == 3   # read from the config like sequential / GPTAQ
    est = estimate(_tiny_llama(), **run, quant=quant)
    c = est.components
    # the linears [N, K]: q 64x64, k/v 32x64, o 64x64, gate/up 128x64, down 64x128
    params = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * 128 * 64 + 64 * 128
    groups = 64 * 2 + 2 * 32 * 2 + 64 * 2 + 2 * 128 * 2 + 64 * 4           # [N, K / 32] scales per linear
    assert c["tune_inputs"] == 6 * 8 * 64 * 4                               # the default pass keeps them for it
    assert c["tune_integer"] == 4 * params                                  # (q - z) float32
    assert c["tune_scales"] == 6 * 4 * groups                               # s0, d, grad, 2 Adam moments, exp(d)
    per_token = (3 * 64 + 64 + 2 * 64 + 128) + (2 * 64 + 2 * 32) + 3 * 128 + 64 + 64
    #            rounded inputs: qkv, o, gate/up, down; sdpa q/out, k/v; MLP; second norm; y - t
    assert c["tune_autograd"] == 4 * 32 * per_token + 4 * (params - (64 * 64 + 2 * 32 * 64))   # + W^ of o, MLP
    assert c["tune_backward"] == 8 * 128 * 64 + 8 * 32 * 128
    assert est.steps["layer: tune"] == sum(c.get(n, 0) for n in memory.STEPS["layer: tune"])
    assert c["hidden_in_forward"] == c["hidden_in"]                          # not consumed: kept for the tuning
    off = estimate(_tiny_llama(), **run, quant=QuantConfig(group_size=32))
    for step in ("layer: rows", "layer: plan", "layer: Hessian", "layer: GPTQ"):   # the inputs kept until the tune
        assert est.steps[step] == off.steps[step] + c["tune_inputs"], step
    assert est.steps["layer: forward"] == off.steps["layer: forward"] + (6 - 4) * 8 * 64 * 4
    for step in ("layer: load", "layer: rotate", "layer: flush", "capture", "write"):
        assert est.steps[step] == off.steps[step], step
    seq = estimate(_tiny_llama(), **run, quant=QuantConfig(group_size=32, sequential=True, tune_layers_steps=3))
    assert "tune_inputs" not in seq.components and seq.components["hidden_in_kept"] == c["tune_inputs"]
    assert seq.steps["layer: tune"] == est.steps["layer: tune"]   # the same bytes, counted as hidden_in_kept
    text = est.describe()
    assert "\nlayer: tune " in text and all(f"\n{n} " in text for n in _TUNE)


def test_layer_tuning_sets_the_peak_when_its_batch_is_large():
    """SmolLM2, 128 x 512 in batches of 128: one batch's autograd (~3 GiB) makes ``layer: tune`` the peak, by the
    formula's amount over the layer's other holdings; dropping any tune component would fail this."""
    run = dict(n_samples=128, seq_len=512, batch_size=128)
    off = estimate(SMOLLM2, **run)
    on = estimate(SMOLLM2, **run, quant=QuantConfig(tune_layers_steps=32))
    c, T, h, f, q, kv = on.components, 128 * 512, 576, 1536, 576, 192
    params = 576 * (576 + 2 * 192 + 576) + 3 * 1536 * 576
    tune = {"tune_inputs": 128 * 512 * h * 4, "tune_integer": 4 * params,
            "tune_scales": 24 * (576 * 5 * 2 + 192 * 2 * 5 + 1536 * 5 * 2 + 576 * 12),   # groups of 128
            "tune_autograd": 4 * T * (5 * h + q + f + 2 * q + 2 * kv + 3 * f + 2 * h)
            + 4 * (params - 576 * (576 + 2 * 192)),
            "tune_backward": 8 * 1536 * 576 + 8 * T * f}
    assert {n: c[n] for n in _TUNE} == tune
    held = sum(c.get(n, 0) for n in memory.STEPS["layer: tune"] if n not in _TUNE)
    assert held == sum(off.components.get(n, 0) for n in ("baseline", "tokenizer", "rotations", "captured_args",
                                                           "shard_buffer", "layer_f32", "hidden_out", "layer_quantized"))
    assert on.peak_step == "layer: tune" and off.peak_step != "layer: tune"
    assert on.peak_bytes == held + sum(tune.values()) > off.peak_bytes
    with pytest.raises(InsufficientMemory, match="'layer: tune'.*tune_autograd .*lower: --batch-size"):
        check_fits(on, available=off.peak_bytes)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_tune_autograd_counts_what_autograd_keeps(family, monkeypatch):
    """tune_autograd against the bytes autograd really saves in one batch's tuning loss on a tiny model (the
    distinct storages ``saved_tensors_hooks`` sees, less the layer's parameters, (q - z), s0, d and the captured
    arguments): within 5%, never above (what it leaves out is small: exp(d), norm factors, log-sum-exp)."""
    torch = pytest.importorskip("torch")
    from fptq.models import quantize as quantize_mod
    from fptq.models.layer_tuning import _mse, _output
    from fptq.models.scale_tuning import tunable_scales
    from fptq.testing import tiny_model

    n, L, B = 6, 20, 4
    saved = {}

    def storages(x):
        if torch.is_tensor(x):
            return {x.untyped_storage().data_ptr()}
        items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
        return set().union(*(storages(y) for y in items))

    def probe(i, prefix, layer, cap, targets):
        if i:
            return
        with torch.enable_grad(), tunable_scales(layer) as tuned:
            known = storages([cap.args[0][i], cap.kwargs[0][i], list(layer.parameters()), list(layer.buffers()),
                              [(t.integer, t.s0, t.log_step) for t in tuned.values()]])

            def pack(t):
                if t.untyped_storage().data_ptr() not in known:
                    saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                _mse(_output(layer, cap, i, 0), targets[0])

    probe.reports = []
    model = tiny_model(family)
    quant = QuantConfig(group_size=32, n_samples=n, seq_len=L, keep_rows=64, tune_layers_steps=1)
    ids = torch.randint(3, 259, (n, L), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(quantize_mod, "layer_tuner", lambda *a, **k: probe)
    quantize_mod.quantize_model(model, ids, quant, backend="numpy", mode="fake_quant", progress=False, batch_size=B)
    counted = estimate(model.config.to_dict(), n_samples=n, seq_len=L, batch_size=B,
                       quant=quant).components["tune_autograd"]
    measured = sum(saved.values())
    assert 0.95 * measured <= counted <= measured, (counted, measured)
