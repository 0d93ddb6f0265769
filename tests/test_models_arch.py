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
    for fam in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "opt"):
        assert fam in msg


def test_opt_post_norm_variant_is_refused():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("opt")
    cfg.do_layer_norm_before = False
    with pytest.raises(UnsupportedArchitecture, match="do_layer_norm_before"):
        arch_of_model(AutoModelForCausalLM.from_config(cfg))
