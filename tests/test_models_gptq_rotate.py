"""GPTQ weights and the residual-stream rotation inside the pipeline (tiny models; mechanics, not accuracy)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq import spec  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.models.arch import UnsupportedArchitecture  # noqa: E402
from fptq.models.checkpoint import load_quantized, read_metadata, save_quantized  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.qlinear import quantized_linears  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer, save_tiny_model  # noqa: E402

IDS = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))


def _logit_error(family, **cfg):
    model = tiny_model(family, outliers=False)
    res = quantize_model(model, IDS, QuantConfig(group_size=32, force_policy="dynamic", **cfg),
                         backend="numpy", mode="fake_quant", progress=False)
    with torch.no_grad():
        ref, got = model(IDS).logits, res.model(IDS).logits
    return float(((got - ref) ** 2).mean()), res


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_gptq_weights_fit_the_calibration_data_better_than_rtn(family):
    e_rtn, _ = _logit_error(family, weight_quantizer="rtn", weight_format="int4_sym")
    e_gptq, res = _logit_error(family, weight_quantizer="gptq", weight_format="int4_sym", gptq_rows=256)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # still the spec's format: codes in range, scales per (row, group)
    for m in quantized_linears(res.model).values():
        q = spec.unpack_int4(m.qweight.numpy(), m.in_features, signed=True)
        assert q.min() >= -8 and q.max() <= 7 and m.wscale.shape[1] == spec.num_groups(m.in_features, 32)


def test_gptq_needs_kept_rows_and_act_order_runs():
    e, res = _logit_error("llama", weight_quantizer="gptq", gptq_act_order=True, gptq_rows=256)
    assert np.isfinite(e) and res.config.gptq_act_order
    with pytest.raises(ValueError, match="gptq_rows"):
        QuantConfig(weight_quantizer="gptq", gptq_rows=0)
    with pytest.raises(ValueError, match="gptq_damp"):
        QuantConfig(weight_quantizer="gptq", gptq_damp=0)


def test_rotated_quantized_model_round_trips_through_a_checkpoint(tmp_path):
    model = tiny_model("llama")
    res = quantize_model(model, IDS, QuantConfig(group_size=32, rotate=True, n_samples=8, seq_len=32),
                         backend="numpy", progress=False)
    assert res.model.config.tie_word_embeddings is False   # rotation untied lm_head from the embeddings
    d = tmp_path / "rot"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, res.config, float_dtype="float32")  # exact float parts
    loaded, _, meta = load_quantized(d, backend="numpy")
    assert meta["quant_config"]["rotate"] is True
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, res.model(IDS).logits)


def test_rotation_of_post_norm_families_is_refused_for_checkpoints():
    with pytest.raises(UnsupportedArchitecture, match="post-norms"):
        quantize_model(tiny_model("gemma3"), IDS, QuantConfig(group_size=32, rotate=True), backend="numpy",
                       progress=False)


def test_cli_gptq_and_rotate_reach_the_checkpoint(tmp_path, capsys):
    src = tmp_path / "tiny"
    save_tiny_model(src, "qwen2")
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--out", str(out), "--calib", "random", "--samples", "4", "--seq-len", "32",
                 "--group-size", "32", "--weight-quantizer", "gptq", "--gptq-act-order", "--rotate", "--quiet"]) == 0
    qc = read_metadata(out)["quant_config"]
    assert (qc["weight_quantizer"], qc["gptq_act_order"], qc["rotate"]) == ("gptq", True, True)
    capsys.readouterr()
    assert main(["eval", str(out), "--ppl", "ptb", "--max-windows", "1", "--seq-len", "64", "--backend", "numpy",
                 "--quiet"]) == 0
    assert "W4A8 integer, backend numpy" in capsys.readouterr().out
