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
    assert c["tokenizer"] == 1183 * 49152 and c["calibration_text"] == memory.CALIB_TEXT_BYTES
    assert est.steps["calibration text"] == c["baseline"] + c["tokenizer"] + c["calibration_text"]


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
