"""Layer-by-layer calibration equals hooks on a whole-model forward; NaNs are named."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.calibrate import NonFiniteError, calibrate  # noqa: E402
from fptq.testing import tiny_model  # noqa: E402


def _ids(n=4, seq=20, seed=1):
    return torch.randint(3, 259, (n, seq), generator=torch.Generator().manual_seed(seed))


def _whole_model_amax(model, ids, batch_size):
    stats, handles = {}, []

    def hook(mod, inp, out, name):
        m = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
        stats[name] = m if name not in stats else torch.maximum(stats[name], m)

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            handles.append(mod.register_forward_hook(functools.partial(hook, name=name)))
    try:
        with torch.no_grad():
            for i in range(0, ids.shape[0], batch_size):
                model(ids[i:i + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
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
