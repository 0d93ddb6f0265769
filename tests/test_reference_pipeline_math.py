"""The pipeline's FPTQ math in fptq.reference, on synthetic layers: weight quantizers,
equalization scales (LAE, SmoothQuant, GQA-shared), folds, error-based selection, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fptq import reference as ref
from fptq import spec
from fptq.spec import ActPolicy

F32 = np.float32


def outlier_input(seed: int, t: int = 256, k: int = 96, loud=(3, 40, 77), mag: float = 60.0) -> np.ndarray:
    """float32 [T, K]: inliers N(0, 0.5), a few loud channels of magnitude ~mag (as LLM activations)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (t, k))
    x[:, list(loud)] *= mag
    return x.astype(F32)


def weight(seed: int, n: int = 64, k: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (n, k)) / np.sqrt(k)).astype(F32)


# --- weight quantizers ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
@pytest.mark.parametrize("g", [32, 40, -1])
def test_rtn_is_the_spec(fmt, g):
    w = weight(0)
    a, b = ref.quantize_weight_rtn(w, g, fmt), spec.quantize_weight(w, g, fmt)
    assert np.array_equal(a.q, b.q) and a.scale.tobytes() == b.scale.tobytes()
    assert (a.zero is None) == (b.zero is None) and (a.zero is None or np.array_equal(a.zero, b.zero))


def _group_err(w, qw, c):
    wd = spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)
    e = ((w.astype(np.float64) - wd) ** 2) * c
    ng = spec.num_groups(w.shape[1], qw.group_size)
    return np.stack([e[:, a:b].sum(axis=1) for a, b in spec.group_bounds(w.shape[1], qw.group_size)], 1)[:, :ng]


@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
def test_mse_search_picks_spec_scales_of_a_clipped_weight_and_never_loses_per_group(fmt):
    w = weight(1)
    w[5, 7] = 3.0  # an outlier that round to nearest must cover
    c = np.random.default_rng(2).uniform(0, 4, w.shape[1]).astype(F32)
    mse, rtn = ref.quantize_weight_mse(w, 32, fmt, c), ref.quantize_weight_rtn(w, 32, fmt)
    # the codes are the spec's with the chosen scales, and every scale is the spec's scale of some p * W
    assert np.array_equal(mse.q, spec.quantize_weight_with_scales(w, mse.scale, mse.zero, 32, fmt))
    cands = [spec.weight_scales(w * F32(1.0 - i * 0.5 / 20), 32, fmt)[0] for i in range(21)]
    assert np.all(np.any(np.stack(cands) == mse.scale[None], axis=0))
    # p = 1 (the RTN scale) is a candidate: no group gets worse (float64 re-measurement, tiny slack)
    assert np.all(_group_err(w, mse, c) <= _group_err(w, rtn, c) * (1 + 1e-5) + 1e-12)
    assert _group_err(w, mse, c).sum() < _group_err(w, rtn, c).sum()


def test_quantize_weight_by_dispatches_and_names_the_choices():
    w = weight(3)
    assert np.array_equal(ref.quantize_weight_by("rtn", w, 32).q, spec.quantize_weight(w, 32).q)
    assert np.array_equal(ref.quantize_weight_by("mse", w, 32).q, ref.quantize_weight_mse(w, 32).q)
    with pytest.raises(ValueError, match=r"weight quantizer .gptq. needs calibration rows.*\(.rtn., .mse.\)"):
        ref.quantize_weight_by("gptq", w, 32)
    with pytest.raises(ValueError, match="channel_weight"):
        ref.quantize_weight_mse(w, 32, channel_weight=np.ones(5, F32))
    qw = spec.quantize_weight(w, 32)
    assert np.array_equal(ref.fake_quant_weight(w, 32), spec.dequantize_weight(qw.q, qw.scale, None, 32))


def test_int8_per_channel_baseline_is_the_per_token_rule_on_rows():
    w = weight(4)
    got = ref.fake_quant_weight_int8_per_channel(w)
    scale = np.maximum(np.abs(w).max(axis=1) / F32(127), spec.MIN_SCALE).astype(F32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)  # integer codes: no -0.0
    want = (q.astype(F32) * scale[:, None]).astype(F32)
    assert got.tobytes() == want.tobytes()


# --- equalization scales ---------------------------------------------------------------------------

def test_group_channel_max_is_the_elementwise_max():
    a, b = np.array([1, 5, 0], F32), np.array([2, 3, 0], F32)
    assert ref.group_channel_max([a, b]).tolist() == [2, 5, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        ref.group_channel_max([a, np.ones(2, F32)])


def test_lae_scales_of_an_input_are_the_spec_and_fold_nothing_else():
    m = np.abs(outlier_input(5)).max(axis=0)
    s, s_fold = ref.equalization_scales(m, "lae")
    assert s.tobytes() == spec.lae_scales(m).tobytes() and s_fold is s


def test_gqa_shared_scales_are_equal_over_heads_and_the_max_of_their_own():
    n_heads, n_kv, hd = 8, 2, 6
    rng = np.random.default_rng(6)
    m = (rng.uniform(0, 3, n_heads * hd) * rng.choice([1, 80], n_heads * hd)).astype(F32)
    s, s_kv = ref.equalization_scales(m, "lae", kv_heads=(n_heads, n_kv, hd))
    own = spec.lae_scales(m).reshape(n_kv, n_heads // n_kv, hd)
    assert s_kv.shape == (n_kv * hd,)
    # one divisor per v_proj output row, repeated over the q heads that share it ...
    assert np.array_equal(s.reshape(n_kv, n_heads // n_kv, hd), np.repeat(s_kv.reshape(n_kv, 1, hd), 4, axis=1))
    # ... equal, bit for bit, to the max of those heads' own LAE scales (the monotonicity claim)
    assert s_kv.tobytes() == own.max(axis=1).reshape(-1).tobytes()
    # so no channel ends above its own LAE target m / lae_scales(m)
    assert np.all((m / s).astype(F32) <= (m / spec.lae_scales(m)).astype(F32))
    with pytest.raises(ValueError, match="kv_heads"):
        ref.equalization_scales(m, "lae", kv_heads=(8, 3, 6))


def test_smoothquant_scales():
    m = np.array([4.0, 1.0, 0.0, 9.0], F32)
    w = np.array([1.0, 4.0, 2.0, 0.0], F32)
    s = ref.smoothquant_scales(m, w, 0.5)
    assert s.tolist() == [2.0, 0.5, 1.0, 1.0]  # sqrt(m / w); dead channels (m or w = 0) get 1
    s2, _ = ref.equalization_scales(m, ("smoothquant", 0.5), w_colmax=w)
    assert s2.tobytes() == s.tobytes()
    with pytest.raises(ValueError, match="w_colmax"):
        ref.equalization_scales(m, ("smoothquant", 0.5))
    with pytest.raises(ValueError, match="alpha"):
        ref.smoothquant_scales(m, w, 1.5)
    with pytest.raises(ValueError, match="equalization method"):
        ref.equalization_scales(m, "awq")


def test_static_scale_of_the_equalized_range():
    m = np.abs(outlier_input(7)).max(axis=0)
    s, _ = ref.equalization_scales(m, "lae")
    v_after = ref.equalized_amax(m, s)
    x = outlier_input(7)
    assert v_after == np.abs((x / s).astype(F32)).max()  # exact: division is monotone
    assert ref.static_act_scale(v_after) == float(spec.act_scale_from_amax(v_after))


# --- folds ---------------------------------------------------------------------------------------------

def _rms(x):
    return (x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True))).astype(F32)


@pytest.mark.parametrize("kind", ["rms", "rms_one_plus", "layernorm"])
def test_norm_fold_keeps_the_product(kind):
    x = outlier_input(8)
    rng = np.random.default_rng(8)
    g, b = rng.uniform(0.5, 1.5, 96).astype(F32), rng.normal(0, 0.1, 96).astype(F32)
    w = weight(8)
    s = spec.lae_scales(np.abs(x).max(axis=0))
    scale = (1 + g) if kind == "rms_one_plus" else g
    bias = b if kind == "layernorm" else np.zeros(96, F32)
    y_ref = (_rms(x) * scale + bias) @ w.T
    g2, b2 = ref.fold_into_norm(g, b if kind == "layernorm" else None, s, kind)
    scale2 = (1 + g2) if kind == "rms_one_plus" else g2
    bias2 = b2 if kind == "layernorm" else np.zeros(96, F32)
    y = (_rms(x) * scale2 + bias2) @ spec.lae_apply_weight(w, s).T
    np.testing.assert_allclose(y, y_ref, rtol=2e-4, atol=2e-4 * np.abs(y_ref).max())
    assert not np.array_equal(g2, g)  # the scales did something
    with pytest.raises(ValueError, match="unknown norm kind"):
        ref.fold_into_norm(g, None, s, "batchnorm")


def test_row_fold_divides_the_producers_outputs():
    rng = np.random.default_rng(9)
    w, b = weight(9, n=96, k=32), rng.normal(0, 1, 96).astype(F32)
    s = rng.uniform(0.5, 8, 96).astype(F32)
    w2, b2 = ref.fold_into_rows(w, b, s)
    assert w2.tobytes() == (w / s[:, None]).astype(F32).tobytes() and b2.tobytes() == (b / s).tobytes()
    assert ref.fold_into_rows(w, None, s)[1] is None
    with pytest.raises(ValueError, match="fold: .* 96 entries but \\(95,\\) scales"):
        ref.fold_into_rows(w, b, s[:95])
    with pytest.raises(ValueError, match="s must be > 0"):
        ref.fold_into_rows(w, b, np.where(np.arange(96) == 3, F32(0), s))


# --- error-based selection -------------------------------------------------------------------------------

def test_fake_quant_act_is_quantize_then_dequantize():
    x = outlier_input(10)
    q, sc = spec.quantize_act_per_token(x)
    assert ref.fake_quant_act(x, ActPolicy.DYNAMIC).tobytes() == spec.dequantize_act(q, sc).tobytes()
    s = spec.act_scale_from_amax(np.abs(x).max())
    want = spec.dequantize_act(spec.quantize_act_per_tensor(x, s), s)
    assert ref.fake_quant_act(x, ActPolicy.STATIC, s).tobytes() == want.tobytes()
    assert ref.fake_quant_act(x, None) is x
    with pytest.raises(ValueError, match="needs a static activation scale"):
        ref.fake_quant_act(x, ActPolicy.LAE_STATIC)


def _candidates(x, weights, weight_fn):
    m = np.abs(x).max(axis=0)
    s, _ = ref.equalization_scales(m, "lae")
    e_static = ref.static_candidate_error(x, weights, ref.static_act_scale(m.max()), None, weight_fn)
    e_lae = ref.static_candidate_error(x, weights, ref.static_act_scale(ref.equalized_amax(m, s)), s, weight_fn)
    return e_static, e_lae


def test_error_selection_prefers_lae_on_outlier_channels_and_sees_little_difference_on_flat_inputs():
    weights = [weight(11), weight(12, n=32)]

    def rtn(w, c):
        return ref.fake_quant_weight(w, 32)

    loud = _candidates(outlier_input(13), weights, rtn)
    assert ref.select_by_error(*loud) is ActPolicy.LAE_STATIC and loud[1] < loud[0]
    flat = np.random.default_rng(14).uniform(-1, 1, (256, 96)).astype(F32)
    flat[:, 0] = 1.0  # every channel spans the same range: LAE scales all channels alike
    quiet = _candidates(flat, weights, rtn)
    assert abs(quiet[1] / quiet[0] - 1) < 0.05 and abs(loud[1] / loud[0] - 1) > 0.5
    assert ref.select_by_error(1.0, 1.0) is ActPolicy.STATIC and ref.select_by_error(1.0, None) is ActPolicy.STATIC


def test_candidate_error_is_the_output_error_it_claims():
    x, w = outlier_input(15, t=64), weight(15, n=16)
    sc = ref.static_act_scale(np.abs(x).max())
    xq = ref.fake_quant_act(x, ActPolicy.STATIC, sc).astype(np.float64)
    want = float((((xq @ w.T.astype(np.float64)) - x.astype(np.float64) @ w.T.astype(np.float64)) ** 2).sum())
    assert ref.static_candidate_error(x, [w], sc) == pytest.approx(want, rel=1e-4)


def test_dynamic_candidate_error_is_the_per_token_output_error_and_wins_on_loud_tokens():
    x, w = outlier_input(17, t=64), weight(17, n=16)
    xq = ref.fake_quant_act(x, ActPolicy.DYNAMIC).astype(np.float64)
    want = float((((xq @ w.T.astype(np.float64)) - x.astype(np.float64) @ w.T.astype(np.float64)) ** 2).sum())
    assert ref.dynamic_candidate_error(x, [w]) == pytest.approx(want, rel=1e-4)
    # a few tokens 100x louder than the rest in every channel (massive activations): one per-tensor
    # scale wastes the INT8 grid on the quiet tokens, LAE cannot help (it scales channels), per-token can
    tokens = np.random.default_rng(18).normal(0, 0.5, (128, 96)).astype(F32)
    tokens[::32] *= 100
    e_static, e_lae = _candidates(tokens, [w], None)
    e_dyn = ref.dynamic_candidate_error(tokens, [w])
    assert e_dyn < 0.1 * min(e_static, e_lae)
    assert ref.select_by_error(e_static, e_lae, e_dyn) is ActPolicy.DYNAMIC
    # dynamic only when strictly better than both static candidates; ties keep static
    assert ref.select_by_error(2.0, 1.0, 1.5) is ActPolicy.LAE_STATIC
    assert ref.select_by_error(1.0, None, 1.0) is ActPolicy.STATIC
    assert ref.select_by_error(1.0, 2.0, 0.5) is ActPolicy.DYNAMIC
    # the plan's shared computation gives exactly the two separate errors
    sc, rtn = ref.static_act_scale(np.abs(tokens).max()), (lambda w, c: ref.fake_quant_weight(w, 32))
    both = ref.static_and_dynamic_errors(tokens, [w, weight(19, n=8)], sc, rtn)
    assert both == (ref.static_candidate_error(tokens, [w, weight(19, n=8)], sc, None, rtn),
                    ref.dynamic_candidate_error(tokens, [w, weight(19, n=8)], rtn))


# --- calibration statistics ----------------------------------------------------------------------------

def test_statistics_without_the_non_first_pass_and_non_finite_inputs():
    x = outlier_input(16).reshape(4, 64, 96)
    full, lean = ref.CalibrationStats(), ref.CalibrationStats(non_first=False)
    full.observe("l", x)
    lean.observe("l", x)
    assert lean["l"].channel_max.tobytes() == full["l"].channel_max.tobytes()
    assert not lean["l"].channel_max_non_first.any() and lean["l"].num_tokens == 256
    x[2, 5, 7] = np.inf
    with pytest.raises(ref.NonFiniteError, match=r"input of layer 'l'.*non-finite.*\(2, 5, 7\)"):
        lean.observe("l", x)
    assert issubclass(ref.NonFiniteError, ValueError)


def test_small_helpers_of_the_pipeline():
    m, s = np.array([3.0, 0.0, 8.0], F32), np.array([1.5, 1.0, 3.0], F32)
    assert ref.equalized_channel_max(m, s).tobytes() == (m / s).astype(F32).tobytes()
    assert ref.equalized_channel_max(m, None) is not None and ref.equalized_amax(m, s) == (m / s).max()
    assert ref.activation_channel_weight(m).tolist() == [9.0, 0.0, 64.0]
    w1, w2 = np.array([[1, -4], [2, 0]], F32), np.array([[-3, 1]], F32)
    assert ref.weight_column_max([w1, w2]).tolist() == [3.0, 4.0]
