"""Layer-by-layer calibration equals hooks on a whole-model forward; NaNs are named."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.calibrate import NonFiniteError, calibrate  # noqa: E402
from fptq.testing import tiny_model  # noqa: E402


def _ids(n=4, seq=20, seed=1):
    return torch.randint(3, 259, (n, seq), generator=torch.Generator().manual_seed(seed))


def _hooked_forward(model, ids, batch_size, record):
    """One forward per batch of ``ids`` with ``record(name, input)`` hooked on every decoder linear."""
    handles = [mod.register_forward_hook(lambda mod, inp, out, name=name: record(name, inp[0].detach()))
               for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and ".layers." in name]
    try:
        with torch.no_grad():
            for i in range(0, ids.shape[0], batch_size):
                model(ids[i:i + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()


def _whole_model_amax(model, ids, batch_size):
    stats = {}

    def record(name, x):
        m = x.abs().reshape(-1, x.shape[-1]).amax(0)
        stats[name] = m if name not in stats else torch.maximum(stats[name], m)

    _hooked_forward(model, ids, batch_size, record)
    return {k: v.numpy() for k, v in stats.items()}


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "opt"])
def test_layerwise_stats_equal_whole_model_hooks(family):
    """Gemma2 has alternating sliding/global layers: each layer must get its own mask."""
    model = tiny_model(family)
    ids = _ids()
    got = calibrate(model, ids, batch_size=2, progress=False)
    want = _whole_model_amax(model, ids, 2)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_calibrate_leaves_the_model_unchanged():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate(model, _ids(), batch_size=3, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    assert all(not m._forward_hooks for m in model.modules())


def test_nan_weight_is_reported_with_its_name():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        calibrate(model, _ids(), progress=False)


def test_nan_activation_is_reported_with_the_linear_name():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[7, 0] = float("inf")  # finite weights in the layers, inf activation
    ids = _ids()
    ids[0, 3] = 7
    with pytest.raises(NonFiniteError, match=r"input of layer 'model\.layers\.0\.self_attn\.q_proj'.*non-finite"):
        calibrate(model, ids, progress=False)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed on error too


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_held_out_samples_are_kept_apart_from_the_fit_statistics(family):
    """``holdout=h``: fit_max are the maxima of the first n - h samples alone, ``heldout`` the rows of
    the last h samples, the returned statistics still every sample's (exactly, batch for batch).
    OPT feeds fc1/fc2 a flattened [B * L, K] input: split by sample all the same."""
    model = tiny_model(family)
    ids = _ids(n=6, seq=16)
    seen = {}

    def keep(i, prefix, layer, stats, samples):
        seen[i] = samples

    full = calibrate(model, ids, batch_size=2, progress=False, on_layer=keep, keep_rows=24, holdout=2,
                     holdout_rows=32)
    plain = calibrate(model, ids, batch_size=2, progress=False)
    assert set(full) == set(plain) and all(np.array_equal(full[k], v) for k, v in plain.items())
    fit = calibrate(model, ids[:4], batch_size=2, progress=False)
    rows = {}

    def keep_rows(i, prefix, layer, stats, samples):
        rows.update(samples)

    calibrate(model, ids[4:], batch_size=2, progress=False, on_layer=keep_rows, keep_rows=32)
    assert set(seen[0].fit_max) and all(set(s.fit_max) == set(s.heldout) == set(s) for s in seen.values())
    for s in seen.values():
        for name in s:
            np.testing.assert_array_equal(s.fit_max[name], fit[name], err_msg=name)
            assert torch.equal(s.heldout[name], rows[name]), name
            assert s[name].shape[0] == -(-6 * 16 // 4)  # every 4th token of all samples
    with pytest.raises(ValueError, match="holdout must be between 1 and n_samples - 1 = 5"):
        calibrate(model, ids, progress=False, keep_rows=8, holdout=6)
    with pytest.raises(ValueError, match="holdout needs keep_rows"):
        calibrate(model, ids, progress=False, holdout=1)


def test_the_plan_judges_on_held_out_rows_with_the_fit_maxima():
    from fptq.models.calibrate import LayerSamples
    from fptq.models.plan import _judging_rows

    names = ("a.q", "a.k")
    every, held = torch.ones(8, 3), torch.full((4, 3), 2.0)
    m_all = np.array([5.0, 6.0, 7.0], np.float32)
    plain = LayerSamples({"a.q": every})
    x, m = _judging_rows(plain, names, m_all)
    assert np.array_equal(x, every.numpy()) and m is m_all
    split = LayerSamples({"a.q": every})
    split.heldout = {"a.q": held}
    split.fit_max = {"a.q": np.array([1.0, 4.0, 2.0], np.float32), "a.k": np.array([3.0, 1.0, 2.0], np.float32)}
    x, m = _judging_rows(split, names, m_all)
    assert np.array_equal(x, held.numpy()) and m.tolist() == [3.0, 4.0, 2.0]
    with pytest.raises(ValueError, match="needs calibration samples"):
        _judging_rows({}, names, m_all)


def _whole_model_inputs(model, ids, batch_size):
    """Every decoder linear's input over all samples: name -> float32 [n, L, K] (hooks on one forward per batch)."""
    seen, length = {}, ids.shape[1]
    _hooked_forward(model, ids, batch_size,
                    lambda name, x: seen.setdefault(name, []).append(x.reshape(-1, length, x.shape[-1])))
    return {k: torch.cat(v) for k, v in seen.items()}


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("balanced", [False, True])
def test_kept_rows_are_the_strided_or_balanced_positions(family, balanced):
    """keep_rows=32 of 8 x 16 tokens: stride 4. Unbalanced, positions 0, 4, 8, 12 of every sample (its first
    token in each); ``balanced_rows``, positions (j mod 4) + 4 t of sample j, across batches of 3 (the offset
    follows the sample's index in the set, not its place in the batch): each position kept in 2 of the 8
    samples, as many rows. OPT's fc1/fc2 read a flattened [B * L, K] input: the same rows."""
    model = tiny_model(family)
    ids = _ids(n=8, seq=16)
    kept = {}

    def keep(i, prefix, layer, stats, samples):
        kept.update({name: rows.clone() for name, rows in samples.items()})

    calibrate(model, ids, batch_size=3, progress=False, on_layer=keep, keep_rows=32, balanced_rows=balanced)
    inputs = _whole_model_inputs(model, ids, 3)
    assert set(kept) == set(inputs)
    for name, x in inputs.items():
        want = torch.cat([x[j, ((j % 4) if balanced else 0)::4] for j in range(8)])
        assert torch.equal(kept[name], want), name
        assert kept[name].shape[0] == 32
