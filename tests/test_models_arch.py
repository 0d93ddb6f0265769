"""The architecture table: every family resolves; unsupported ones get a clear error."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.arch import ARCHS, LINEAR_GROUPS, UnsupportedArchitecture, arch_of_model, get_submodule  # noqa: E402
from fptq.testing import TINY_FAMILIES, tiny_config, tiny_model  # noqa: E402


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_arch_of_model_every_family(family):
    model = tiny_model(family)
    arch = arch_of_model(model)
    assert arch.family == family
    layer = model.get_submodule("model.decoder.layers.0" if family == "opt" else "model.layers.0")
    # q, k, v, gate/up share the pre-norm's output width; down's input is the MLP width
    hidden = model.config.hidden_size
    for name in arch.group_linears("qkv") + arch.group_linears("gate_up"):
        assert get_submodule(layer, name).in_features == hidden, name
    assert get_submodule(layer, arch.attn_norm).weight.shape == (hidden,)
    assert get_submodule(layer, arch.mlp_norm).weight.shape == (hidden,)
    assert get_submodule(layer, arch.down_fold).out_features == get_submodule(layer, arch.down).in_features
    assert [arch.kind_of(n) for n in arch.linears()].count("qkv") == 3
    assert set(arch.kind_of(n) for n in arch.linears()) == set(LINEAR_GROUPS)


def test_table_keys_are_layer_classes():
    for cls, arch in ARCHS.items():
        assert arch.layer_class == cls and cls.endswith("DecoderLayer")


def test_every_family_has_a_tiny_model():
    """A row without a tiny config would never be checked by the fold and pipeline tests."""
    assert sorted(a.family for a in ARCHS.values()) == sorted(TINY_FAMILIES)


def test_smollm3_tiny_model_has_a_layer_without_rope():
    """The tiny SmolLM3 has SmolLM3-3B's NoPE layer (every 4th there, layer 1 of 2 here), so its fold
    test covers a layer whose q/k are not rotated by RoPE."""
    assert tiny_config("smollm3").no_rope_layers == [1, 0]


def test_gemma2_3_use_the_pre_feedforward_norm():
    for fam in ("gemma2", "gemma3"):
        arch = next(a for a in ARCHS.values() if a.family == fam)
        assert arch.mlp_norm == "pre_feedforward_layernorm" and arch.norm_kind == "rms_one_plus"


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UnsupportedArchitecture) as e:
        arch_of_model(model)
    msg = str(e.value)
    assert "GPT2Block" in msg
    for arch in ARCHS.values():
        assert f"{arch.family} ({arch.layer_class})" in msg


def test_opt_post_norm_variant_is_refused():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("opt")
    cfg.do_layer_norm_before = False
    with pytest.raises(UnsupportedArchitecture, match="do_layer_norm_before"):
        arch_of_model(AutoModelForCausalLM.from_config(cfg))
