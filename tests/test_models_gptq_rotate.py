"""GPTQ weights and the rotations (online, residual) inside the pipeline (tiny models; mechanics, not accuracy)."""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import as_stored, rewrite  # noqa: E402

from fptq import spec  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.io.tensorfile import TensorFile  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    TENSORS_FILE, CheckpointError, load_quantized, read_metadata, save_quantized,
)
from fptq.models.checkpoint_meta import INPUT_ROTATION_TENSOR, ONLINE_ROTATION_TENSOR  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.qlinear import W4A8Linear, quantized_linears, set_quantized_mode  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.models.rotate import INPUT_ROTATION, RotateOutput, factors_of, input_rotation_modules  # noqa: E402
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
    res = quantize_model(model, IDS, QuantConfig(group_size=32, rotate="residual", n_samples=8, seq_len=32),
                         backend="numpy", progress=False)
    assert res.model.config.tie_word_embeddings is False   # rotation untied lm_head from the embeddings
    d = tmp_path / "rot"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, res.config, float_dtype="float32")  # exact float parts
    loaded, _, meta = load_quantized(d, backend="numpy")
    assert meta["quant_config"]["rotate"] == "residual"
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, res.model(IDS).logits)


@pytest.mark.parametrize("family", ["llama", "opt", "gemma3"])
def test_online_rotation_round_trips_through_a_checkpoint(tmp_path, family, capsys):
    """The default rotation wraps every pre-norm (any norm kind, OPT's LayerNorm too); the checkpoint stores
    them as plain norms plus one Q, and the reloaded model computes the same logits bit for bit."""
    res = quantize_model(tiny_model(family), IDS, QuantConfig(group_size=32, n_samples=8, seq_len=32),
                         backend="numpy", progress=False)
    assert res.config.rotate == "online" and res.rotation.mode == "online" and not res.rotation.untied
    layers = "model.decoder.layers" if family == "opt" else "model.layers"
    norms = ("self_attn_layer_norm", "final_layer_norm") if family == "opt" else (
        ("input_layernorm", "pre_feedforward_layernorm") if family == "gemma3"
        else ("input_layernorm", "post_attention_layernorm"))
    paths = [f"{layers}.{i}.{n}" for i in range(2) for n in norms]
    assert res.rotation.online_norms == paths and sorted(_online(res.model)) == sorted(paths)
    down = "mlp.fc2" if family == "opt" else "mlp.down_proj"
    downs = [f"{layers}.{i}.{down}".replace("mlp.fc2", "fc2") for i in range(2)]
    assert res.rotation.input_rotations == downs and sorted(input_rotation_modules(res.model)) == downs
    assert all(isinstance(m, W4A8Linear) for m in input_rotation_modules(res.model).values())   # carried over
    # the norms keep their gains (nothing folded into the rotated weights): LAE has no norm weight to fold into,
    # and 1/s cannot fold into the rows before a rotated down projection
    assert all(gp.policy.value != "lae_static" for gp in res.plan.groups if gp.group in ("qkv", "gate_up", "down"))
    d = save_quantized(tmp_path / "on", res.model, tiny_tokenizer(), res.plan, res.config, float_dtype="float32")
    meta = read_metadata(d)
    assert meta["online_rotations"] == sorted(paths) and meta["quant_config"]["rotate"] == "online"
    assert meta["input_rotations"] == downs
    f = res.model.get_submodule(downs[0]).in_features
    assert _table(d)[INPUT_ROTATION_TENSOR] == ("F32", (f, f))
    for backend in ("numpy", "numba"):
        set_quantized_mode(res.model, "integer", backend)
        loaded, _, _ = load_quantized(d, backend=backend)
        # the stored Q and Q_f are recognised as fptq's randomized Hadamard matrices: the fast product again
        assert all(factors_of(m, "rotation") is not None for m in _online(loaded).values())
        assert all(factors_of(m, INPUT_ROTATION) is not None for m in input_rotation_modules(loaded).values())
        with torch.no_grad():
            assert torch.equal(loaded(IDS).logits, res.model(IDS).logits), backend
    set_quantized_mode(res.model, "integer", "numpy")
    capsys.readouterr()
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert "online rotation: 4 norm outputs times one float32 Q at run time" in out
    assert "input rotation: 2 layers' inputs times one float32 Q_f at run time" in out


def test_rotate_config_values():
    assert QuantConfig().rotate == "online"
    # checkpoints written before 2026-11-30 recorded a bool
    assert QuantConfig(rotate=True).rotate == "residual" and QuantConfig(rotate=False).rotate == "none"
    with pytest.raises(ValueError, match="rotate must be one of"):
        QuantConfig(rotate="hadamard")


def test_rotation_seed_picks_the_rotation_and_defaults_to_the_calibration_seed():
    """``rotation_seed`` chooses the Hadamard matrices alone (the calibration set stays ``seed``'s); None keeps
    the rotation every checkpoint before the field had: ``seed``'s."""
    from fptq.reference.rotation import hadamard_factors

    assert QuantConfig().rotation_seed is None and QuantConfig(seed=3).rotation_seed_used == 3
    assert QuantConfig(seed=3, rotation_seed=0).rotation_seed_used == 0
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="rotation_seed must be None or an integer"):
            QuantConfig(rotation_seed=bad)
    res = {seed: quantize_model(tiny_model("llama"), IDS, QuantConfig(group_size=32, n_samples=8, seq_len=32,
                                                                       **kw), backend="numpy", progress=False)
           for seed, kw in ((0, {}), (1, {"rotation_seed": 1}))}
    stored = {seed: next(iter(_online(r.model).values())).rotation for seed, r in res.items()}
    for seed, q in stored.items():
        want = hadamard_factors(q.shape[0], seed).dense().astype(np.float32)
        assert torch.equal(q, torch.from_numpy(np.ascontiguousarray(want))), seed
    assert not torch.equal(stored[0], stored[1])


# ---- post-norm families (Gemma 2/3): online rotations stored in the checkpoint ------------------------------
@pytest.fixture(scope="module")
def rotated_post_norm():
    """family -> QuantResult of a rotated tiny Gemma 2 / Gemma 3 (numpy backend, integer mode)."""
    return {f: quantize_model(tiny_model(f), IDS, QuantConfig(group_size=32, rotate="residual", n_samples=8,
                                                              seq_len=32),
                              backend="numpy", progress=False) for f in ("gemma2", "gemma3")}


def _online(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, RotateOutput)}


def _table(d):
    with TensorFile(d / TENSORS_FILE) as f:
        return {n: (f.dtype(n), tuple(f.shape(n))) for n in f.names}


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_rotated_post_norm_model_round_trips_through_a_checkpoint(tmp_path, rotated_post_norm, family, capsys):
    res = rotated_post_norm[family]
    paths = [f"model.layers.{i}.{n}" for i in range(2) for n in ("post_attention_layernorm",
                                                                 "post_feedforward_layernorm")]
    assert res.rotation is not None and res.rotation.online_norms == paths
    assert sorted(_online(res.model)) == paths
    d = tmp_path / "rot"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, res.config, float_dtype="float32")  # exact float parts
    table = _table(d)
    assert table[ONLINE_ROTATION_TENSOR] == ("F32", (64, 64))   # Q once, not once per module
    assert not any(k.endswith(".rotation") or "layernorm.norm." in k for k in table)  # norms under their own names
    assert all(table[f"{p}.weight"] == ("F32", (64,)) for p in paths)
    q = res.model.model.layers[0].post_attention_layernorm.rotation
    try:
        for backend in ("numpy", "numba"):
            set_quantized_mode(res.model, "integer", backend)
            loaded, _, meta = load_quantized(d, backend=backend)
            assert meta["format_version"] == "5" and meta["online_rotations"] == paths
            online = _online(loaded)
            assert sorted(online) == paths
            assert len({m.rotation.data_ptr() for m in online.values()}) == 1   # one shared Q in memory too
            assert all(torch.equal(m.rotation, q) for m in online.values())
            with torch.no_grad():
                assert torch.equal(loaded(IDS).logits, res.model(IDS).logits), backend
    finally:
        set_quantized_mode(res.model, "integer", "numpy")
    capsys.readouterr()
    assert main(["report", str(d)]) == 0
    assert "online rotation: 4 norm outputs times one float32 Q at run time" in capsys.readouterr().out


def test_online_rotation_is_stored_in_float32_whatever_float_dtype(tmp_path, rotated_post_norm):
    res = rotated_post_norm["gemma3"]
    d = save_quantized(tmp_path / "bf16", res.model, tiny_tokenizer(), res.plan, res.config)  # bfloat16 default
    table = _table(d)
    assert table[ONLINE_ROTATION_TENSOR] == ("F32", (64, 64)) and table["model.embed_tokens.weight"][0] == "BF16"
    loaded, _, _ = load_quantized(d, backend="numpy")
    expect = as_stored(res.model, "bfloat16")   # rounds every float matrix, the rotation buffers too ...
    q = res.model.model.layers[0].post_attention_layernorm.rotation
    with torch.no_grad():
        for m in _online(expect).values():       # ... which the checkpoint keeps exact
            m.rotation.copy_(q)
        assert torch.equal(loaded(IDS).logits, expect(IDS).logits)
    q_loaded = loaded.model.layers[1].post_feedforward_layernorm.rotation
    assert torch.equal(q_loaded, q)
    eye = torch.eye(64, dtype=torch.float64)
    assert float((q_loaded.double() @ q_loaded.double().T - eye).abs().max()) < 1e-6


def test_rotations_the_checkpoint_cannot_hold_are_refused_when_saving(tmp_path, rotated_post_norm):
    model = copy.deepcopy(rotated_post_norm["gemma2"].model)
    m = model.model.layers[1].post_feedforward_layernorm
    m.rotation = -m.rotation   # a different Q for one module
    with pytest.raises(CheckpointError, match="hold different rotations"):
        save_quantized(tmp_path / "x", model, None)
    assert not (tmp_path / "x").exists()


def _edit_online(fn):
    def edit(m):
        m["online_rotations"] = json.dumps(fn(json.loads(m["online_rotations"])))
    return edit


def _edit_q(fn):
    def edit(t):
        t[ONLINE_ROTATION_TENSOR] = fn(t[ONLINE_ROTATION_TENSOR])
    return edit


def _drop(key):
    return lambda d: d.pop(key)


@pytest.mark.parametrize("edit_meta,edit_tensors,match", [
    (_edit_online(lambda p: ["model.norm"]), None,   # a norm with an F32 [64] weight, but not a layer's
     r"'online_rotations' names \['model\.norm'\], not norms of the layers"),
    (_edit_online(lambda p: p + ["model.layers.7.post_attention_layernorm"]), None,
     r"module model\.layers\.7\.post_attention_layernorm needs an F32 \[64\] tensor .*it is missing"),
    (_edit_online(lambda p: p + p[:1]), None, r"'online_rotations' lists .* more than once"),
    (_edit_online(lambda p: ["model.layers.0.self_attn.q_proj"]), None, r"quantized layers or INT8-rows modules"),
    (_edit_online(lambda p: []), None, r"tensor fptq\.online_rotation present but .* names no module"),
    (_edit_online(lambda p: {"paths": p}), None, r"'online_rotations' must be a list of module paths"),
    (_drop("online_rotations"), None, r"metadata key 'online_rotations' is missing"),
    (None, _drop(ONLINE_ROTATION_TENSOR), r"tensor fptq\.online_rotation \(their rotation\) is missing"),
    (None, _edit_q(lambda q: q[:, :32].contiguous()),
     r"fptq\.online_rotation is F32 \[64, 32\]; it must be F32 \[d, d\]"),
    (None, _edit_q(lambda q: q[:32, :32].contiguous()), r"needs an F32 \[32\] tensor .*it is F32 \[64\]"),
    (None, _edit_q(lambda q: q.to(torch.bfloat16)), r"fptq\.online_rotation is BF16 \[64, 64\]; it must be F32"),
    (None, _edit_q(lambda q: torch.where(torch.eye(64, dtype=torch.bool), torch.tensor(float("nan")), q)),
     r"tensor fptq\.online_rotation: holds NaN/Inf"),
    (None, _edit_q(lambda q: q * 1.01), r"tensor fptq\.online_rotation: is not orthogonal"),
])
def test_bad_online_rotations_are_refused(tmp_path, rotated_post_norm, edit_meta, edit_tensors, match):
    res = rotated_post_norm["gemma2"]
    src = save_quantized(tmp_path / "ok", res.model, None, res.plan, res.config)
    d = rewrite(src, tmp_path / "bad", edit_meta=edit_meta, edit_tensors=edit_tensors, redigest=True)
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


def test_cli_gptq_and_rotate_reach_the_checkpoint(tmp_path, capsys):
    src = tmp_path / "tiny"
    save_tiny_model(src, "qwen2")
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--out", str(out), "--calib", "random", "--samples", "4", "--seq-len", "32",
                 "--group-size", "32", "--weight-quantizer", "gptq", "--gptq-act-order", "--rotate", "residual",
                 "--quiet"]) == 0
    qc = read_metadata(out)["quant_config"]
    assert (qc["weight_quantizer"], qc["gptq_act_order"], qc["rotate"]) == ("gptq", True, "residual")
    capsys.readouterr()
    assert main(["eval", str(out), "--ppl", "ptb", "--max-windows", "1", "--seq-len", "64", "--backend", "numpy",
                 "--quiet"]) == 0
    assert "W4A8 integer, backend numpy" in capsys.readouterr().out


# ---- input rotations (the down projections with --rotate online) ------------------------------------------
@pytest.fixture(scope="module")
def online_llama():
    return quantize_model(tiny_model("llama"), IDS, QuantConfig(group_size=32, n_samples=8, seq_len=32),
                          backend="numpy", progress=False)


def _edit_inputs(fn):
    def edit(m):
        m["input_rotations"] = json.dumps(fn(json.loads(m["input_rotations"])))
    return edit


def _edit_q_in(fn):
    def edit(t):
        t[INPUT_ROTATION_TENSOR] = fn(t[INPUT_ROTATION_TENSOR])
    return edit


@pytest.mark.parametrize("edit_meta,edit_tensors,match", [
    (_edit_inputs(lambda p: ["model.layers.0.mlp.up_proj_typo"]), None,
     r"'input_rotations' names \['model\.layers\.0\.mlp\.up_proj_typo'\], which are not quantized layers"),
    (_edit_inputs(lambda p: p + p[:1]), None, r"'input_rotations' lists .* more than once"),
    (_edit_inputs(lambda p: ["model.layers.0.self_attn.q_proj"]), None,
     r"layer model\.layers\.0\.self_attn\.q_proj has 64 inputs but fptq\.input_rotation is \[96, 96\]"),
    (_edit_inputs(lambda p: []), None, r"tensor fptq\.input_rotation present but .* names no layer"),
    (_edit_inputs(lambda p: {"paths": p}), None, r"'input_rotations' must be a list of quantized layer paths"),
    (_drop("input_rotations"), None, r"metadata key 'input_rotations' is missing"),
    (None, _drop(INPUT_ROTATION_TENSOR), r"tensor fptq\.input_rotation \(their rotation\) is missing"),
    (None, _edit_q_in(lambda q: q[:, :32].contiguous()), r"fptq\.input_rotation is F32 \[96, 32\]; it must be"),
    (None, _edit_q_in(lambda q: q * 1.01), r"tensor fptq\.input_rotation: is not orthogonal"),
    (None, _edit_q_in(lambda q: q.to(torch.bfloat16)), r"fptq\.input_rotation is BF16 \[96, 96\]"),
])
def test_bad_input_rotations_are_refused(tmp_path, online_llama, edit_meta, edit_tensors, match):
    res = online_llama
    src = save_quantized(tmp_path / "ok", res.model, None, res.plan, res.config)
    d = rewrite(src, tmp_path / "bad", edit_meta=edit_meta, edit_tensors=edit_tensors, redigest=True)
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


def test_input_rotations_the_checkpoint_cannot_hold_are_refused_when_saving(tmp_path, online_llama):
    model = copy.deepcopy(online_llama.model)
    m = model.model.layers[1].mlp.down_proj
    m.fptq_input_rotation = -m.fptq_input_rotation   # a different Q_f for one layer
    with pytest.raises(CheckpointError, match="rotate their inputs by different matrices"):
        save_quantized(tmp_path / "x", model, None)
    assert not (tmp_path / "x").exists()
