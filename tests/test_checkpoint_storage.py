"""Storage of the float parts (issue 14): bfloat16 / float16 / float32 float parts and INT8-row
embeddings; each loads to exactly the model it stores (computed here in memory), shrinks the file
by the expected bytes, keeps every W4A8 tensor as the spec needs it, and refuses bad values."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import IDS, as_stored, quantized, rewrite, stored_logits  # noqa: E402

from fptq.io.tensorfile import TensorFile  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    TENSORS_FILE, CheckpointError, load_quantized, read_metadata, save_quantized, storage_summary,
)
from fptq.models.checkpoint_meta import LAYER_SUFFIXES  # noqa: E402
from fptq.models.int8rows import Int8Embedding, Int8LMHead  # noqa: E402
from fptq.models.qlinear import W4A8Linear  # noqa: E402
from fptq.reference import quantize_weight_int8_per_channel  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.testing import save_tiny_model, tiny_tokenizer  # noqa: E402

ITEM = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1}


@pytest.fixture(scope="module")
def tiny():
    return quantized("llama")


def _save(d, res, cfg=None, **storage):
    return save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, **storage)


def _table(d):
    with TensorFile(d / TENSORS_FILE) as f:
        return {n: (f.dtype(n), tuple(f.shape(n))) for n in f.names}


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def _layer_keys(meta):
    return {f"{n}.{s}" for n in meta["layers"] for s in LAYER_SUFFIXES}


# ---- round trips --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3", "opt", "qwen2"])
@pytest.mark.parametrize("float_dtype,stored", [("bfloat16", "BF16"), ("float16", "F16"), ("float32", "F32")])
def test_float_parts_load_as_the_rounded_model(tmp_path, family, float_dtype, stored):
    res, cfg = quantized(family)
    d = _save(tmp_path / "ck", res, cfg, float_dtype=float_dtype)
    m2, _, meta = load_quantized(d, backend="numpy")
    assert meta["float_dtype"] == stored and meta["int8_rows"] == {} and meta["format_version"] == "5"
    assert torch.equal(_logits(m2), stored_logits(res.model, float_dtype))
    exact = _layer_keys(meta)
    table = _table(d)
    for k, (dt, shape) in table.items():  # W4A8 tensors as the spec needs them, float matrices in float_dtype
        if k in exact:
            assert dt == {"qweight": "U8", "wzero": "U8"}.get(k.rpartition(".")[2], "F32"), k
        else:
            assert dt == (stored if len(shape) >= 2 else "F32"), k
    assert table["model.norm.weight" if family != "opt" else "model.decoder.final_layer_norm.weight"][0] == "F32"
    sd2, want = m2.state_dict(), as_stored(res.model, float_dtype).state_dict()
    assert sd2.keys() == want.keys() and all(torch.equal(sd2[k], want[k]) for k in sd2)
    assert all(t.dtype != torch.bfloat16 and t.dtype != torch.float16 for t in sd2.values())


def test_default_is_bfloat16(tmp_path, tiny):
    meta = read_metadata(_save(tmp_path / "ck", tiny[0], tiny[1]))
    assert meta["float_dtype"] == "BF16" and meta["int8_rows"] == {}
    assert storage_summary(meta) == ("lm_head and embeddings: bfloat16 (not quantized); other float matrices: "
                                     "bfloat16; norms and biases: float32")


@pytest.mark.parametrize("family", ["llama", "gemma3", "opt"])
@pytest.mark.parametrize("float_dtype", ["bfloat16", "float32"])
def test_int8_embeddings_load_as_the_dequantized_rows(tmp_path, family, float_dtype):
    """Tied embeddings (all tiny families tie): one INT8 matrix + row scales, from fptq.reference."""
    res, cfg = quantized(family)
    d = _save(tmp_path / "ck", res, cfg, float_dtype=float_dtype, int8_embeddings=True)
    m2, _, meta = load_quantized(d, backend="numpy")
    emb_name = next(n for n, m in res.model.named_modules() if m is res.model.get_input_embeddings())
    assert meta["int8_rows"] == {emb_name: "embedding", "lm_head": "lm_head"}
    assert meta["tied"] == {"lm_head.qweight": f"{emb_name}.qweight", "lm_head.scale": f"{emb_name}.scale"}
    assert isinstance(m2.get_input_embeddings(), Int8Embedding) and isinstance(m2.lm_head, Int8LMHead)
    assert m2.lm_head.qweight is m2.get_input_embeddings().qweight  # stored once, shared at run time
    w = res.model.get_input_embeddings().weight.detach().numpy()
    q, s = quantize_weight_int8_per_channel(w)
    with TensorFile(d / TENSORS_FILE) as f:
        assert f.dtype(f"{emb_name}.qweight") == "I8" and f.dtype(f"{emb_name}.scale") == "F32"
        np.testing.assert_array_equal(f.numpy(f"{emb_name}.qweight"), q)
        assert f.numpy(f"{emb_name}.scale").tobytes() == s.tobytes()
        assert not {f"{emb_name}.weight", "lm_head.weight", "lm_head.qweight"} & set(f.names)
    assert torch.equal(_logits(m2), stored_logits(res.model, float_dtype, int8_embeddings=True))
    assert storage_summary(meta) == (f"lm_head and embeddings: INT8 per row, float32 row scales (lm_head, "
                                     f"{emb_name}); other float matrices: {float_dtype}; norms and biases: float32")


def test_int8_embeddings_untied_lm_head(tmp_path):
    """A model that does not tie: embedding and lm_head are two INT8 matrices, both stored."""
    res, cfg = quantized("llama")
    model = res.model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().flip(1).clone())
    d = _save(tmp_path / "ck", res, cfg, int8_embeddings=True)
    m2, _, meta = load_quantized(d, backend="numpy")
    assert meta["tied"] == {} and m2.lm_head.qweight is not m2.get_input_embeddings().qweight
    table = _table(d)
    assert table["lm_head.qweight"] == ("I8", (260, 64)) and table["lm_head.scale"] == ("F32", (260,))
    assert torch.equal(_logits(m2), stored_logits(model, "bfloat16", int8_embeddings=True))
    assert not torch.equal(m2.lm_head.qweight, m2.get_input_embeddings().qweight)


def test_int8_embeddings_do_not_change_the_model_saved(tmp_path, tiny):
    res, cfg = tiny
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    _save(tmp_path / "ck", res, cfg, int8_embeddings=True)
    after = res.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(res.model.get_input_embeddings()) is torch.nn.Embedding


def test_int8_embedding_generates(tmp_path, tiny):
    """transformers' generate runs on INT8-row embeddings (greedy, same tokens as the stored model)."""
    res, cfg = tiny
    d = _save(tmp_path / "ck", res, cfg, int8_embeddings=True)
    m2, _, _ = load_quantized(d, backend="numpy")
    ref = as_stored(res.model, "bfloat16", int8_embeddings=True)
    ids = IDS[:1, :6]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(m2.generate(ids, **kw), ref.generate(ids, **kw))


# ---- sizes ----------------------------------------------------------------------------------------------------
def test_sizes_shrink_by_the_expected_bytes(tmp_path, tiny):
    res, cfg = tiny
    tables = {name: _table(_save(tmp_path / name, res, cfg, **kw)) for name, kw in [
        ("f32", {"float_dtype": "float32"}), ("bf16", {}), ("f16", {"float_dtype": "float16"}),
        ("int8", {"int8_embeddings": True})]}

    def nbytes(table, keys=None):
        return sum(ITEM[dt] * int(np.prod(shape)) for k, (dt, shape) in table.items() if keys is None or k in keys)

    matrices = {k for k, (dt, shape) in tables["f32"].items() if len(shape) >= 2} - _layer_keys(
        read_metadata(tmp_path / "f32"))
    assert matrices == {"model.embed_tokens.weight"}  # the tiny llama's only float matrix (lm_head is tied)
    assert nbytes(tables["bf16"]) == nbytes(tables["f32"]) - nbytes(tables["f32"], matrices) // 2
    assert nbytes(tables["f16"]) == nbytes(tables["bf16"])
    v, h = 260, 64  # the embedding: 4 bytes -> 1 byte per element, plus one float32 scale per row
    assert nbytes(tables["int8"]) == nbytes(tables["bf16"]) - 2 * v * h + (v * h + 4 * v)
    sizes = {n: (tmp_path / n / TENSORS_FILE).stat().st_size for n in tables}
    assert sizes["int8"] < sizes["bf16"] < sizes["f32"]


# ---- old checkpoints ------------------------------------------------------------------------------------------
def _as_version_2(m):
    m.pop("float_dtype")
    m.pop("int8_rows")
    m.pop("online_rotations")
    m.pop("input_rotations")
    m["format_version"] = "2"


def _as_version_3(m):
    m.pop("online_rotations")
    m.pop("input_rotations")
    m["format_version"] = "3"


def _as_version_4(m):
    m.pop("input_rotations")
    m["format_version"] = "4"


def test_version_2_float32_checkpoint_still_loads(tmp_path, tiny):
    """A version-2 checkpoint (float32 parts, no storage keys), digests as its writer made them."""
    res, cfg = tiny
    f32 = _save(tmp_path / "f32", res, cfg, float_dtype="float32")
    d = rewrite(f32, tmp_path / "v2", edit_meta=_as_version_2, redigest=True)
    m2, _, meta = load_quantized(d, backend="numpy")
    assert meta["format_version"] == "2" and meta["float_dtype"] == "F32" and meta["int8_rows"] == {}
    assert torch.equal(_logits(m2), _logits(res.model))


def test_version_3_checkpoint_still_loads(tmp_path, tiny):
    """A version-3 checkpoint (no online_rotations), digests as its writer made them."""
    res, cfg = tiny
    bf16 = _save(tmp_path / "bf16", res, cfg)
    d = rewrite(bf16, tmp_path / "v3", edit_meta=_as_version_3, redigest=True)
    m3, _, meta = load_quantized(d, backend="numpy")
    assert meta["format_version"] == "3" and meta["online_rotations"] == [] and meta["float_dtype"] == "BF16"
    assert torch.equal(_logits(m3), stored_logits(res.model, "bfloat16"))


def test_version_4_checkpoint_still_loads(tmp_path, tiny):
    """A version-4 checkpoint (no input_rotations), digests as its writer made them."""
    res, cfg = tiny
    bf16 = _save(tmp_path / "bf16", res, cfg)
    d = rewrite(bf16, tmp_path / "v4", edit_meta=_as_version_4, redigest=True)
    m4, _, meta = load_quantized(d, backend="numpy")
    assert meta["format_version"] == "4" and meta["input_rotations"] == [] and meta["online_rotations"] == []
    assert torch.equal(_logits(m4), stored_logits(res.model, "bfloat16"))


@pytest.mark.parametrize("version,newer_key", [("4", "input_rotations"), ("3", "online_rotations")])
def test_an_older_version_with_a_newer_key_is_refused(tmp_path, tiny, version, newer_key):
    res, cfg = tiny
    bf16 = _save(tmp_path / "bf16", res, cfg)
    d = rewrite(bf16, tmp_path / "keys", edit_meta=lambda m: m.__setitem__("format_version", version))
    with pytest.raises(CheckpointError, match=rf"format_version says {version} but the header has version-"
                                              rf"{int(version) + 1} field \['{newer_key}'\]"):
        load_quantized(d, backend="numpy")


def test_version_2_with_storage_keys_or_bf16_tensors_is_refused(tmp_path, tiny):
    res, cfg = tiny
    bf16 = _save(tmp_path / "bf16", res, cfg)
    d = rewrite(bf16, tmp_path / "v2keys", edit_meta=lambda m: m.__setitem__("format_version", "2"))
    with pytest.raises(CheckpointError, match="format_version says 2 but the header has version-3 storage fields"):
        load_quantized(d, backend="numpy")
    d = rewrite(bf16, tmp_path / "v2bf16", edit_meta=_as_version_2)
    with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight: BF16 \[260, 64\] where the model "
                                              r"needs F32"):
        load_quantized(d, backend="numpy")


# ---- refusals -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"float_dtype": "bf16"}, r"float_dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'bf16'"),
    ({"float_dtype": None}, "float_dtype must be one of"),
    ({"int8_embeddings": "yes"}, "int8_embeddings must be True or False, got 'yes'"),
])
def test_bad_storage_arguments_are_refused(tmp_path, tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _save(tmp_path / "ck", tiny[0], tiny[1], **kwargs)
    assert not (tmp_path / "ck").exists()


def test_float16_overflow_is_refused(tmp_path):
    res, cfg = quantized("llama")
    with torch.no_grad():
        res.model.model.embed_tokens.weight[7, 3] = 1e5  # beyond float16's 65504
        res.model.model.norm.weight[3] = 1e6  # a norm stays float32: no limit
    with pytest.raises(CheckpointError, match=r"float_dtype='float16': tensor model\.embed_tokens\.weight has values "
                                              r"beyond float16's range \(max \|x\| = 1e\+05\)"):
        _save(tmp_path / "ck", res, cfg, float_dtype="float16")
    meta = read_metadata(_save(tmp_path / "bf", res, cfg))  # bfloat16 has float32's range
    assert meta["float_dtype"] == "BF16"


def test_cli_bad_float_dtype_names_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--out", "x", "--float-dtype", "bf16"])
    assert e.value.code == 2 and "--float-dtype: invalid choice: 'bf16'" in capsys.readouterr().err


def test_cli_storage_flags_reach_the_checkpoint(tmp_path, capsys):
    src = save_tiny_model(tmp_path / "tiny-llama", "llama")
    small = ["--calib", "random", "--samples", "2", "--seq-len", "16", "--group-size", "32", "--quiet"]
    for name, flags, fd, rows in [("default", [], "BF16", {}),
                                  ("f32", ["--float-dtype", "float32"], "F32", {}),
                                  ("int8", ["--int8-embeddings"], "BF16", {"model.embed_tokens": "embedding",
                                                                           "lm_head": "lm_head"})]:
        assert main(["quantize", str(src), "--out", str(tmp_path / name), *small, *flags]) == 0
        meta = read_metadata(tmp_path / name)
        assert (meta["float_dtype"], meta["int8_rows"]) == (fd, rows)
        assert "lm_head_and_embeddings" not in meta["info"]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "int8")]) == 0
    assert "lm_head and embeddings: INT8 per row, float32 row scales (lm_head, model.embed_tokens)" in \
        capsys.readouterr().out


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize("edit,match", [
    (_set("float_dtype", "F8"), r"metadata key 'float_dtype' is 'F8'; expected one of \['BF16', 'F16', 'F32'\]"),
    (_set("int8_rows", '{"model.embed_tokens": "matrix"}'), "metadata key 'int8_rows' must be an object"),
    (_set("int8_rows", "[1]"), "metadata key 'int8_rows' must be an object"),
    (lambda m: m.pop("float_dtype"), "metadata key 'float_dtype' is missing"),
    (lambda m: m.pop("int8_rows"), "metadata key 'int8_rows' is missing"),
])
def test_bad_storage_metadata_is_refused(tmp_path, tiny, edit, match):
    d = rewrite(_save(tmp_path / "ck", tiny[0], tiny[1], int8_embeddings=True), tmp_path / "bad", edit_meta=edit)
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


def test_int8_rows_tensors_and_values_are_checked(tmp_path, tiny):
    d0 = _save(tmp_path / "ck", tiny[0], tiny[1], int8_embeddings=True)
    q, s = "model.embed_tokens.qweight", "model.embed_tokens.scale"

    def poke(key, value, at=(0, 0)):
        def edit(t):
            t[key] = t[key].clone()
            t[key][at] = value
        return edit

    cases = [
        (poke(q, -128), r"tensor model\.embed_tokens\.qweight: code -128 outside \[-127, 127\]"),
        (poke(s, 0.0, 5), r"tensor model\.embed_tokens\.scale: scale 0\.0 outside"),
        (poke(s, 3e38, 5), r"tensor model\.embed_tokens\.scale: scale 3\.0\d*e\+38 outside "
                           r"\[1\.18e-38, 2\.679e\+36\]"),
        (poke(s, float("inf"), 5), r"tensor model\.embed_tokens\.scale holds NaN/Inf"),
        (lambda t: t.__setitem__(s, t[s].to(torch.bfloat16)), r"model\.embed_tokens\.scale BF16 \[260\]; they must "
                                                               r"be I8 \[V, H\] and F32 \[V\]"),
        (lambda t: t.pop(s), r"metadata key 'tied': lm_head\.scale -> model\.embed_tokens\.scale must name a stored"),
        (lambda t: t.__setitem__("model.embed_tokens.weight", torch.zeros(260, 64, dtype=torch.bfloat16)),
         r"tensor model\.embed_tokens\.weight present but metadata key 'int8_rows' stores model\.embed_tokens"),
    ]
    for i, (edit, match) in enumerate(cases):
        d = rewrite(d0, tmp_path / f"bad{i}", edit_tensors=edit)
        with pytest.raises(CheckpointError, match=match):
            load_quantized(d, backend="numpy")
    d = rewrite(d0, tmp_path / "notied", edit_meta=lambda m: m.__setitem__("tied", "{}"))  # lm_head's rows absent
    with pytest.raises(CheckpointError, match=r"missing \['lm_head\.qweight' or 'lm_head\.scale'\]\) for INT8-rows "
                                              r"module lm_head \(lm_head\)"):
        load_quantized(d, backend="numpy")


def test_int8_rows_must_name_the_embedding_and_lm_head(tmp_path, tiny):
    d0 = _save(tmp_path / "ck", tiny[0], tiny[1], int8_embeddings=True)

    def rename(m):
        m["int8_rows"] = json.dumps({"lm_head": "embedding", "model.embed_tokens": "lm_head"})

    d = rewrite(d0, tmp_path / "swap", edit_meta=rename)
    with pytest.raises(CheckpointError, match="metadata key 'int8_rows' .* does not name this llama model's "
                                              "embedding / lm_head"):
        load_quantized(d, backend="numpy")

    def untie(m):  # the config ties lm_head to the embedding, the header says it is stored apart
        m["tied"] = json.dumps({"lm_head.qweight": "model.embed_tokens.qweight"})

    d = rewrite(d0, tmp_path / "half", edit_meta=untie)
    with pytest.raises(CheckpointError, match="lm_head.qweight and lm_head.scale must both be tied"):
        load_quantized(d, backend="numpy")


def test_config_that_does_not_tie_is_refused(tmp_path, tiny):
    """The header stores lm_head once (tied) but config.json does not tie: refused, not half-loaded."""
    def untie(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["tie_word_embeddings"] = False
        (d / "config.json").write_text(json.dumps(cfg))

    for i8 in (False, True):
        d0 = _save(tmp_path / f"ck{i8}", tiny[0], tiny[1], int8_embeddings=i8)
        d = rewrite(d0, tmp_path / f"untied{i8}", edit_files=untie)
        with pytest.raises(CheckpointError, match="should be tied to .* but the config does not tie them"):
            load_quantized(d, backend="numpy")


def test_w4a8_tensors_are_never_rounded(tmp_path, tiny):
    """Scales, bias and act_scale of the W4A8 layers are the float32 bytes of the model, whatever the storage."""
    res, cfg = tiny
    d = _save(tmp_path / "ck", res, cfg, float_dtype="float16", int8_embeddings=True)
    with TensorFile(d / TENSORS_FILE) as f:
        for name, mod in res.model.named_modules():
            if isinstance(mod, W4A8Linear):
                for b, t in mod.named_buffers():
                    if t is not None and f"{name}.{b}" in f.names:
                        assert f.tensor(f"{name}.{b}").numpy().tobytes() == t.numpy().tobytes(), f"{name}.{b}"
