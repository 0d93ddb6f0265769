"""Tests of fptq.reference: calibration statistics, the per-layer plan, the W4A8 linear layer.

Synthetic layers with planted outlier channels (a few input channels with
amax 50-120, the rest about 1), as LLM activations have.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.reference import (
    CalibrationStats, LayerStats, equalized_amax, plan_layer, plan_layers, quantize_linear, with_policy,
)
from fptq.spec import ActPolicy, WeightFormat

U = 2.0**-24  # unit roundoff of float32


def outlier_layer(seed: int, k: int = 512, n: int = 256, n_out: int = 6, lo: float = 50, hi: float = 120):
    """(draw_x(T) -> float32 [T, K], W float32 [N, K]): inliers N(0, 0.3), n_out channels of amax in [lo, hi]."""
    rng = np.random.default_rng(seed)
    cols = rng.choice(k, n_out, replace=False)
    mag = rng.uniform(lo, hi, n_out)

    def draw_x(t: int) -> np.ndarray:
        x = rng.normal(0, 0.3, (t, k))
        x[:, cols] = rng.uniform(0.3, 1.0, (t, n_out)) * mag * rng.choice([-1, 1], (t, n_out))
        return x.astype(np.float32)

    w = (rng.normal(0, 1, (n, k)) / np.sqrt(k)).astype(np.float32)
    return draw_x, w


def rel_error(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> float:
    """||y - X W^T||_F / ||X W^T||_F with the reference product in float64."""
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def calibrate(x: np.ndarray, name: str = "layer") -> np.ndarray:
    stats = CalibrationStats()
    stats.observe(name, x)
    return stats[name].channel_max


# --- calibration -----------------------------------------------------------------------------

def test_calibration_is_independent_of_batching():
    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, (4, 33, 40)) * 5).astype(np.float32)  # [batch, T, K]
    whole = LayerStats("l", 40)
    whole.update(x)
    pieces = LayerStats("l", 40)
    for b in range(4):
        pieces.update(x[b:b + 1])
    np.testing.assert_array_equal(whole.channel_max, np.abs(x).max(axis=(0, 1)))
    np.testing.assert_array_equal(pieces.channel_max, whole.channel_max)
    np.testing.assert_array_equal(pieces.channel_max_non_first, whole.channel_max_non_first)
    assert (whole.num_tokens, pieces.num_tokens) == (4 * 33, 4 * 33)
    assert whole.v == np.abs(x).max()


def test_calibration_non_first_statistic_leaves_out_position_zero():
    x = np.ones((2, 5, 3), np.float32)
    x[:, 0, 1] = 3000.0  # an attention-sink first token
    st = LayerStats("down_proj", 3)
    st.update(x)
    assert st.channel_max[1] == 3000.0 and st.channel_max_non_first[1] == 1.0
    assert (st.num_tokens, st.num_non_first_tokens) == (10, 8)
    st.update(np.full((1, 2, 3), 7.0, np.float32), seq_start=5)  # a later chunk: every token counts
    assert st.channel_max_non_first.tolist() == [7.0, 7.0, 7.0]
    assert (st.num_tokens, st.num_non_first_tokens) == (12, 10)


def test_calibration_stats_for_several_layers():
    stats = CalibrationStats()
    stats.observe("q_proj", np.full((2, 4, 8), -2.0, np.float32))
    stats.observe("down_proj", np.full((2, 4, 16), 5.0, np.float32))
    maxima = stats.channel_maxima()
    assert sorted(maxima) == ["down_proj", "q_proj"]
    assert maxima["q_proj"].shape == (8,) and (maxima["q_proj"] == 2.0).all()
    assert stats["down_proj"].num_tokens == 8


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_calibration_rejects_non_finite_naming_the_layer(bad):
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"layers\.3\.mlp\.down_proj.*non-finite.*\(1, 2\)"):
        CalibrationStats().observe("layers.3.mlp.down_proj", x)


def test_calibration_rejects_wrong_width_and_dtype():
    st = LayerStats("o_proj", 8)
    with pytest.raises(ValueError, match="o_proj.*\\[\\.\\.\\., 8\\]"):
        st.update(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="o_proj"):
        st.update(np.zeros((2, 8), bool))


# --- plan ------------------------------------------------------------------------------------

@pytest.mark.parametrize("v, policy", [(14.999, ActPolicy.STATIC), (15.0, ActPolicy.LAE_STATIC),
                                       (149.99, ActPolicy.LAE_STATIC), (150.0, ActPolicy.DYNAMIC),
                                       (0.0, ActPolicy.STATIC)])
def test_plan_policy_bands_and_boundaries(v, policy):
    m = np.linspace(0, v, 64, dtype=np.float32)
    m[-1] = v
    plan = plan_layer("l", m)
    assert plan.v == np.float32(v) and plan.policy is policy
    assert (plan.lae_scales is not None) == (policy is ActPolicy.LAE_STATIC)
    assert (plan.act_scale is None) == (policy is ActPolicy.DYNAMIC)
    if policy is ActPolicy.STATIC:
        assert plan.act_scale == spec.act_scale_from_amax(np.float32(v))


def test_plan_thresholds_are_configurable():
    m = np.array([1.0, 20.0], np.float32)
    assert plan_layer("l", m).policy is ActPolicy.LAE_STATIC
    assert plan_layer("l", m, v0=25.0, v1=100.0).policy is ActPolicy.STATIC
    assert plan_layer("l", m, v0=5.0, v1=20.0).policy is ActPolicy.DYNAMIC
    plans = plan_layers({"a": m, "b": m * 10}, v0=5.0, v1=100.0)
    assert (plans["a"].policy, plans["b"].policy) == (ActPolicy.LAE_STATIC, ActPolicy.DYNAMIC)


@pytest.mark.parametrize("seed", range(3))
def test_lae_static_scale_from_channel_maxima_is_exact(seed):
    """amax of X / s re-measured on the calibration data == max_j float32(m_j / s_j), bit for bit."""
    draw_x, _ = outlier_layer(seed)
    x = draw_x(256)
    x[:, 7] = 0.0  # a channel never active: s = 1
    m = calibrate(x)
    plan = plan_layer("l", m)
    assert plan.policy is ActPolicy.LAE_STATIC
    measured = np.abs(spec.lae_apply_activation(x, plan.lae_scales)).max()
    assert equalized_amax(m, plan.lae_scales) == measured
    assert plan.act_scale == spec.act_scale_from_amax(measured)
    np.testing.assert_array_equal(plan.lae_scales, spec.lae_scales(m))


def test_with_policy_overrides_the_bands():
    m = np.array([1.0, 80.0], np.float32)
    plan = with_policy("l", m, "dynamic", note="LAE scale cannot be folded")
    assert plan.policy is ActPolicy.DYNAMIC and plan.lae_scales is None and plan.act_scale is None
    assert plan.note == "LAE scale cannot be folded"
    static = with_policy(plan, m, ActPolicy.STATIC)
    assert static.name == "l" and static.act_scale == spec.act_scale_from_amax(np.float32(80.0))


def test_plan_rejects_bad_maxima():
    with pytest.raises(ValueError, match="'l'.*non-finite"):
        plan_layer("l", np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        plan_layer("l", np.array([1.0, -1.0], np.float32))


# --- LAE on a layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_equalization_preserves_xwt_in_float(seed):
    """(X / s)(W * s)^T == X W^T up to the two float32 roundings per term (<= ~2u relative each)."""
    draw_x, w = outlier_layer(seed)
    x = draw_x(128)
    s = spec.lae_scales(calibrate(x))
    xe, we = spec.lae_apply_activation(x, s), spec.lae_apply_weight(w, s)
    y = xe.astype(np.float64) @ we.astype(np.float64).T
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    bound = 2.0001 * U * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T)
    assert (np.abs(y - ref) <= bound).all()
    assert s.min() < 1 < s.max()  # inliers stretched, outliers squashed: not a trivial s


@pytest.mark.parametrize("seed", range(4))
def test_lae_lowers_w4a8_error_versus_per_tensor_static(seed):
    draw_x, w = outlier_layer(seed)
    m = calibrate(draw_x(256))
    x = draw_x(64)  # held-out tokens from the same distribution
    plan = plan_layer("l", m)
    assert plan.policy is ActPolicy.LAE_STATIC
    err_lae = rel_error(quantize_linear(w, None, plan, 128).forward(x), x, w)
    err_static = rel_error(quantize_linear(w, None, with_policy("l", m, "static"), 128).forward(x), x, w)
    assert err_lae < 0.6 * err_static, (err_lae, err_static)


def test_large_range_gets_per_token_dynamic():
    draw_x, w = outlier_layer(5, lo=300, hi=900)
    x = draw_x(128)
    plan = plan_layer("l", calibrate(x))
    assert plan.v >= 150 and plan.policy is ActPolicy.DYNAMIC
    layer = quantize_linear(w, None, plan, 64)
    qx, xscale = layer.quantize_input(x)
    np.testing.assert_array_equal(xscale, spec.quantize_act_per_token(x)[1])
    np.testing.assert_array_equal(qx, spec.quantize_act_per_token(x)[0])
    y = spec.w4a8_matmul(qx, xscale, layer.packed, layer.wscale, None, 512, 64)
    np.testing.assert_array_equal(layer.forward(x), y)


# --- the quantized linear layer ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(WeightFormat))
@pytest.mark.parametrize("policy", list(ActPolicy))
@pytest.mark.parametrize("k, group_size", [(512, 128), (75, 32), (64, -1)])
def test_integer_and_fake_quant_forward_agree(fmt, policy, k, group_size):
    """Same quantized values, different float ops: agree within the dot-product rounding bound."""
    draw_x, w = outlier_layer(11, k=k, n=48, n_out=3)
    x = draw_x(40)
    bias = np.random.default_rng(1).normal(0, 1, 48).astype(np.float32)
    layer = quantize_linear(w, bias, with_policy("l", calibrate(x), policy), group_size, fmt)
    y_int, y_fake = layer.forward(x), layer.fake_quant_forward(x)
    assert y_int.dtype == np.float32 and y_int.shape == (40, 48)
    qx, xscale = layer.quantize_input(x)
    x_hat = np.abs(qx.astype(np.float64) * xscale.astype(np.float64)[:, None] if xscale.size > 1
                   else qx.astype(np.float64) * float(xscale[0]))
    ng = layer.wscale.shape[1]
    mag = x_hat @ np.abs(layer.dequantize_weight().astype(np.float64)).T + np.abs(bias)
    bound = (k + ng + 8) * U * mag
    assert (np.abs(y_int.astype(np.float64) - y_fake) <= bound).all()


def test_forward_batch_dims_and_empty_input():
    draw_x, w = outlier_layer(2, k=64, n=16, n_out=2)
    x = draw_x(12)
    layer = quantize_linear(w, None, plan_layer("l", calibrate(x)), 32)
    np.testing.assert_array_equal(layer.forward(x.reshape(3, 4, 64)).reshape(12, 16), layer.forward(x))
    assert layer.forward(np.zeros((0, 64), np.float32)).shape == (0, 16)


def test_quantized_weights_are_the_spec_quantization_of_w_times_s():
    draw_x, w = outlier_layer(3, k=96, n=8, n_out=2)
    plan = plan_layer("l", calibrate(draw_x(32)))
    layer = quantize_linear(w, None, plan, 32, "uint4_asym")
    ref = spec.quantize_weight(spec.lae_apply_weight(w, plan.lae_scales), 32, "uint4_asym")
    np.testing.assert_array_equal(spec.unpack_int4(layer.packed, 96, signed=False), ref.q)
    np.testing.assert_array_equal(layer.wscale, ref.scale)
    np.testing.assert_array_equal(layer.zero, ref.zero)


def test_linear_rejects_bad_input_naming_the_layer():
    draw_x, w = outlier_layer(4, k=64, n=16, n_out=2)
    x = draw_x(8)
    plan = plan_layer("mlp.up_proj", calibrate(x))
    layer = quantize_linear(w, None, plan, 32)
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"mlp\.up_proj.*non-finite"):
        layer.forward(bad)
    with pytest.raises(ValueError, match=r"mlp\.up_proj.*\[M, 64\]"):
        layer.forward(x[:, :32])
    with pytest.raises(ValueError, match="LAE scales"):
        quantize_linear(w[:, :32], None, plan, 32)
    with pytest.raises(ValueError, match="bias"):
        quantize_linear(w, np.zeros(3, np.float32), plan, 32)
