"""LAE folding is exact: the float model's outputs do not change (up to float32 rounding),
for every architecture and every group (norm folds, v_proj rows under GQA, up_proj/fc1 rows)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq import spec  # noqa: E402
from fptq.models.arch import arch_of_model, find_decoder_layers  # noqa: E402
from fptq.models.calibrate import calibrate  # noqa: E402
from fptq.models.plan import LayerRef, PlanOptions, attention_geometry  # noqa: E402
from fptq.models.quantize import apply_plan_layer  # noqa: E402
from fptq.testing import TINY_FAMILIES, tiny_config, tiny_model  # noqa: E402


def _ids(n=4, seq=24, seed=0):
    return torch.randint(3, 259, (n, seq), generator=torch.Generator().manual_seed(seed))


def _fold_all(model, stats, force="lae_static"):
    arch = arch_of_model(model)
    path, layers, _ = find_decoder_layers(model)
    groups = []
    for i, layer in enumerate(layers):
        groups += apply_plan_layer(LayerRef(i, f"{path}.{i}", layer, arch, model.config), stats,
                                   lambda lin, gp: lin, PlanOptions(15.0, 150.0, force=force))
    return groups


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lae_folding_keeps_float_outputs(family):
    model = tiny_model(family)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    stats = calibrate(model, ids, batch_size=2, progress=False)
    folded = copy.deepcopy(model)
    groups = _fold_all(folded, stats)
    assert len(groups) == 4 * model.config.num_hidden_layers
    assert all(g.policy is spec.ActPolicy.LAE_STATIC and g.fold for g in groups), [g.fallback for g in groups]
    with torch.no_grad():
        out = folded(ids).logits
    # the scales are large (up to ~100): the fold must have changed the weights...
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), folded.parameters()))
    # ...and not the function
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("family", ["llama", "gemma3", "opt"])
def test_equalized_inputs_have_the_planned_range(family):
    """After folding, the measured range of each group's input is the planned v' = max m/s."""
    model = tiny_model(family)
    ids = _ids()
    stats = calibrate(model, ids, batch_size=2, progress=False)
    folded = copy.deepcopy(model)
    groups = _fold_all(folded, stats)
    stats2 = calibrate(folded, ids, batch_size=2, progress=False)
    for g in groups:
        m_after = max(float(stats2[n].max()) for n in g.linears)
        assert m_after == pytest.approx(g.v_after, rel=1e-4), (g.group, g.layer)
        assert g.v_after <= float(np.log2(2.0 + g.v)) * (1 + 1e-6)


def test_gqa_o_proj_scales_are_equal_across_shared_heads():
    model = tiny_model("llama")
    ids = _ids()
    stats = calibrate(model, ids, batch_size=2, progress=False)
    arch = arch_of_model(model)
    groups = _fold_all(copy.deepcopy(model), stats)
    n_heads, n_kv, hd = attention_geometry(model.config, model.model.layers[0], arch)
    assert (n_heads, n_kv) == (4, 2)
    for g in (g for g in groups if g.group == "o"):
        s = g.s.reshape(n_kv, n_heads // n_kv, hd)
        assert (s == s[:, :1, :]).all()
        m = stats[g.linears[0]].reshape(n_kv, n_heads // n_kv, hd)
        # the shared scale is the LAE scale of the loudest head (equal to the max of the heads' scales)
        np.testing.assert_array_equal(g.s_fold, spec.lae_scales(m.max(axis=1).reshape(-1)))
        own = spec.lae_scales(m.reshape(-1)).reshape(m.shape)
        np.testing.assert_array_equal(g.s_fold.reshape(n_kv, hd), own.max(axis=1))


def test_non_homogeneous_activation_falls_back_to_dynamic():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("opt")
    cfg.activation_function = "gelu"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = _ids()
    stats = calibrate(model, ids, batch_size=2, progress=False)
    groups = _fold_all(model, stats)
    down = [g for g in groups if g.group == "down"]
    assert down and all(g.policy is spec.ActPolicy.DYNAMIC and g.band is not None for g in down)
    assert all("gelu" in g.fallback and g.act_scale is None and g.s is None for g in down)
    assert all(g.policy is spec.ActPolicy.LAE_STATIC for g in groups if g.group != "down")


def test_bands_follow_the_thresholds():
    model = tiny_model("qwen3")
    ids = _ids()
    stats = calibrate(model, ids, batch_size=2, progress=False)
    groups = _fold_all(copy.deepcopy(model), stats, force=None)
    seen = set()
    for g in groups:
        expect = spec.select_policy(g.v, 15.0, 150.0)
        assert g.band is expect and g.policy is expect
        seen.add(g.policy)
        if g.policy is spec.ActPolicy.STATIC:
            assert g.act_scale == float(spec.act_scale_from_amax(np.float32(g.v))) and g.s is None
        elif g.policy is spec.ActPolicy.LAE_STATIC:
            assert g.act_scale == float(spec.act_scale_from_amax(np.float32(g.v_after)))
        else:
            assert g.act_scale is None
    assert seen == set(spec.ActPolicy)  # the tiny model's outliers reach all three bands
