"""Test fixtures: tiny random-weight models, one per family of the architecture table.

For fptq's own tests and for anyone testing code built on fptq (needs torch
and transformers, imported when a function runs).

``tiny_model(family)`` builds a 2-layer model (hidden 64, 4 query heads, 2 kv
heads where the family has GQA, vocab 260) from a config, with random weights,
random norm weights (so the folds into ``w`` and ``1 + w`` are visible) and,
with ``outliers=True``, a few loud norm channels and up_proj rows so that
calibration ranges land in all three policy bands. These models are for testing the
pipeline's mechanics only; no accuracy claim is made on them.
"""

from __future__ import annotations

__all__ = ["TINY_FAMILIES", "tiny_config", "tiny_model", "tiny_tokenizer", "save_tiny_model", "save_tiny_bf16_shards"]

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2", "gemma3", "opt")

_COMMON = dict(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
#: what a family's tiny config sets beyond _COMMON (Qwen2 has q/k/v biases by construction)
_EXTRA = {"gemma2": dict(sliding_window=8, query_pre_attn_scalar=16),
          "gemma3": dict(sliding_window=8, query_pre_attn_scalar=16),
          "mistral": dict(sliding_window=None),
          "smollm3": dict(no_rope_layer_interval=2)}  # layer 1 of 2 without RoPE, as every 4th of SmolLM3-3B


def tiny_config(family: str):
    """The transformers config of a tiny model of ``family`` (see :data:`TINY_FAMILIES`)."""
    import transformers as tf

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")
    if family == "opt":
        return tf.OPTConfig(vocab_size=260, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                            num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=256,
                            do_layer_norm_before=True, enable_bias=True, bos_token_id=1, eos_token_id=2,
                            pad_token_id=0)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
           "qwen3": tf.Qwen3Config, "smollm3": tf.SmolLM3Config, "gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config,
           "gemma3": tf.Gemma3TextConfig}[family]
    return cls(**_COMMON, **_EXTRA.get(family, {}))


def tiny_model(family: str, seed: int = 0, outliers: bool = True):
    """A float32 tiny causal LM of ``family`` with random weights, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                # Gemma norms multiply by (1 + w) and start at w = 0; others start at 1
                base = 0.0 if float(p.abs().max()) == 0.0 else 1.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        if outliers:
            # loud input channels for q/k/v and gate/up (through the pre-norm weights)
            # and for down_proj (through up_proj/fc1 rows): ranges land in all three bands
            for name, p in model.named_parameters():
                if p.ndim == 1 and name.endswith(("input_layernorm.weight", "self_attn_layer_norm.weight")):
                    p[:2] = torch.tensor([60.0, 300.0])
                elif p.ndim == 1 and name.endswith(("post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
                                                    "final_layer_norm.weight")) and "layers.1." in name:
                    p[:1] = 25.0
                elif name.endswith(("up_proj.weight", "fc1.weight")):
                    p[:4] *= 30.0
    model.eval()
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer with a 259-token vocabulary (3 specials + 256 bytes), built in memory (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def save_tiny_model(directory, family: str = "llama", seed: int = 0, outliers: bool = True):
    """Write :func:`tiny_model` and :func:`tiny_tokenizer` as a local transformers model directory; returns it."""
    from pathlib import Path

    d = Path(directory)
    tiny_model(family, seed, outliers).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def save_tiny_bf16_shards(directory, layers: int = 4, seed: int = 0):
    """A tiny untied llama (hidden 64, MLP 160, 4/2 heads, vocab 259) saved as bfloat16 in shards of about 100 KB
    with an index, and :func:`tiny_tokenizer`: the multi-shard source of the streamed-run tests; returns it."""
    from pathlib import Path

    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=259,
                                   tie_word_embeddings=False, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    d = Path(directory)
    model.save_pretrained(d, max_shard_size="100KB")
    tiny_tokenizer().save_pretrained(d)
    return d
