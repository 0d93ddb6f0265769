"""A tiny model written as a ``.gguf`` file the way llama.cpp's converter writes one (tests only).

:func:`write_tiny_gguf` takes :func:`fptq.testing.tiny_model` of a family (``llama``, ``qwen2``,
``gemma3``) and writes it with ``gguf.GGUFWriter``: the metadata transformers reads back into the
config, :func:`fptq.testing.tiny_tokenizer` as a byte-level BPE (``gpt2``) vocabulary, and every tensor
under its GGUF name (the inverse of transformers' ``get_gguf_hf_weights_map``) with llama.cpp's changes
applied: q/k rows permuted for LLaMA (``convert_hf_to_gguf.py`` ``LlamaModel.permute``), ``1 + w`` for
Gemma-3's norms; 1-D tensors in F32, matrices in ``qtype`` (``F32`` keeps them exact). A tied
``lm_head`` is not written (llama.cpp writes ``output.weight`` only when it is not the embedding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the families this writer knows: fptq tiny family -> GGUF architecture
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (the inverse of transformers' ``_reverse_permute_weights``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(model, arch: str) -> dict[str, str]:
    """State-dict name -> GGUF tensor name, as transformers maps them back."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    return {hf: g for g, hf in get_gguf_hf_weights_map(model, TensorProcessor(), model_type=arch).items()}


def _add_metadata(w, cfg, arch: str) -> None:
    w.add_name(f"tiny-{arch}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        w.add_rope_dimension_count(cfg.head_dim)
    if arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)


def _add_tokenizer(w) -> None:
    from fptq.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t, _ in vocab])
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(vocab))
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)


def _stored(name: str, t, cfg, arch: str) -> np.ndarray:
    """The float32 array llama.cpp's converter stores for state-dict tensor ``name``."""
    w = t.detach().to("cpu").float().numpy().copy()
    if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
        w = _permute(w, cfg.num_attention_heads)
    elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
        w = _permute(w, cfg.num_key_value_heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
        w = w + np.float32(1.0)
    return w


def write_tiny_gguf(path, family: str = "llama", qtype: str = "Q8_0", seed: int = 0):
    """Write :func:`fptq.testing.tiny_model` ``(family, seed)`` as a GGUF file at ``path`` (module
    docstring); returns ``(path, model)``."""
    import gguf

    from fptq.testing import tiny_model

    arch = GGUF_ARCHS[family]
    model = tiny_model(family, seed)
    cfg = model.config
    names = _gguf_names(model, arch)
    qt = gguf.GGMLQuantizationType[qtype]
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    _add_metadata(w, cfg, arch)
    _add_tokenizer(w)
    for name, t in model.state_dict().items():
        if name not in names or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        data = _stored(name, t, cfg, arch)
        if data.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(names[name], data)
        else:
            w.add_tensor(names[name], gguf.quants.quantize(data, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model
