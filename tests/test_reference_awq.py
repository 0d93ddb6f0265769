"""AWQ-style activation-aware scaling (``fptq.reference.awq``, registry entry ``awq``): the searched
scales follow AWQ's formula, never measure worse than no scaling, help on outlier channels, are
shared over GQA heads, and the pipeline folds them exactly where the producer can absorb them."""

from __future__ import annotations

import numpy as np
import pytest

from fptq import reference as ref
from fptq import spec
from fptq.reference.awq import awq_error, awq_scales

F32 = np.float32


def group(seed=0, n=256, k=96, outliers=(3, 40, 77)):
    """Rows with a few loud channels (AWQ's salient channels) and two weights reading them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(F32)
    x[:, list(outliers)] *= 30
    return x, [rng.standard_normal((48, k)).astype(F32), rng.standard_normal((16, k)).astype(F32)]


def awq_formula(x, alpha):
    """AWQ's auto_scale scales, written out independently in float64."""
    a = np.maximum(np.mean(np.abs(x.astype(np.float64)), axis=0), 1e-4) ** alpha
    return (a / np.sqrt(a.max() * a.min())).astype(F32)


@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
def test_awq_scales_are_the_best_of_awq_grid_and_never_worse_than_none(fmt):
    x, ws = group()
    s, s_fold = awq_scales(x, ws, group_size=32, fmt=fmt)
    assert s is s_fold or np.array_equal(s, s_fold)
    errs = [awq_error(x, ws, awq_formula(x, i / 20), 32, fmt) for i in range(20)]
    chosen = awq_error(x, ws, s, 32, fmt)
    assert chosen == min(errs)
    i = int(np.argmin(errs))
    assert np.allclose(s, awq_formula(x, i / 20), rtol=1e-6)
    assert chosen <= errs[0]                 # alpha = 0 is no scaling
    assert i > 0 and chosen < 0.9 * errs[0]  # loud channels: scaling them up helps clearly


def test_awq_error_is_the_output_error_of_the_scaled_quantized_layer():
    x, ws = group(1)
    s = awq_formula(x, 0.5)
    want = 0.0
    for w in ws:
        qw = spec.quantize_weight(spec.lae_apply_weight(w, s), 32, "uint4_asym")
        q = spec.dequantize_weight(qw.q, qw.scale, qw.zero, 32, qw.fmt).astype(np.float64)
        y = x.astype(np.float64) @ w.astype(np.float64).T
        yq = (x.astype(np.float64) / s) @ q.T
        want += float(np.square(y - yq).sum())
    assert awq_error(x, ws, s, 32, "uint4_asym") == pytest.approx(want, rel=1e-4)


def test_awq_scales_are_shared_over_the_q_heads_of_one_kv_head():
    x, ws = group(2, k=6 * 16)   # 6 q heads, 2 kv heads, head_dim 16
    s, s_fold = awq_scales(x, ws, (6, 2, 16), group_size=16, fmt="uint4_asym")
    assert s_fold.shape == (32,) and s.shape == (96,)
    assert np.array_equal(s.reshape(2, 3, 16), np.repeat(s_fold.reshape(2, 1, 16), 3, axis=1))


def test_awq_refuses_bad_rows():
    x, ws = group(3)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        awq_scales(x, ws, group_size=32)
    with pytest.raises(ValueError, match="grid"):
        awq_scales(group(3)[0], ws, group_size=32, grid=0)


def test_awq_is_a_registry_entry_that_needs_rows_and_a_fold():
    e = ref.weight_quantizer("awq")
    assert e.scale_search is awq_scales and e.rows_option and not e.calibration_free
    with pytest.raises(ValueError, match="needs calibration rows"):
        ref.quantize_weight_by("awq", group()[1][0], 32)


@pytest.mark.parametrize("rotate", ["none", "online"])
def test_awq_in_the_pipeline_folds_where_exact(rotate):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from fptq.compare import CompareSettings, _methods
    from fptq.models.config import QuantConfig
    from fptq.models.quantize import quantize_model
    from fptq.testing import tiny_model

    model = tiny_model("llama")
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(group_size=32, weight_quantizer="awq", rotate=rotate, n_samples=4, seq_len=24)
    keep_float = (lambda lin, gp, samples=None: lin) if rotate == "none" else None  # the folded float linears
    res = quantize_model(model, ids, cfg, backend="numpy", progress=False, make_linear=keep_float)
    scaled = {g.group for g in res.plan.groups if g.s_weight is not None}
    assert scaled == ({"qkv", "o", "gate_up", "down"} if rotate == "none" else {"o"})
    assert all(g.scale_fallback for g in res.plan.groups if g.group not in scaled)
    if rotate == "none":
        with torch.no_grad():
            assert torch.allclose(res.model(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert any(m.key == "fptq_w4a8_awq" for m in _methods(CompareSettings()))
