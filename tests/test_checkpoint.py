"""Checkpoints: bit-identical round trip; corrupt, truncated, wrong-version and inconsistent
checkpoints get clear errors; writes are atomic."""

import json
import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from checkpoint_helpers import IDS, rewrite, stored_logits  # noqa: E402

from fptq.io.atomic import atomic_directory  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    FORMAT_VERSION, TENSORS_FILE, CheckpointError, load_quantized, read_metadata, save_quantized,
)
from fptq.models.checkpoint_meta import SUPPORTED_VERSIONS  # noqa: E402
from fptq.models.qlinear import W4A8Linear  # noqa: E402
from fptq.models.quantize import QuantConfig, quantize_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402


def _quantized(family="llama", fmt="int4_sym"):
    cfg = QuantConfig(group_size=24, weight_format=fmt, rotate="none")  # 64 = 24 + 24 + 16: ragged; unrotated
    return quantize_model(tiny_model(family), IDS, cfg, backend="numpy", progress=False), cfg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    res, cfg = _quantized()
    d = tmp_path_factory.mktemp("ck") / "llama-w4a8"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, {"model_name": "tiny llama"})
    return d, stored_logits(res.model), res


def _rewrite(src, dst, edit_meta=None, edit_tensors=None):
    """Copy a checkpoint dir with edited metadata/tensors and recomputed digests (so that the
    check under test, not the digest, is what refuses it)."""
    return rewrite(src, dst, edit_meta, edit_tensors, redigest=True)


@pytest.mark.parametrize("family,fmt", [("llama", "int4_sym"), ("gemma3", "int4_sym"), ("opt", "uint4_asym"),
                                        ("qwen2", "uint4_asym")])
def test_round_trip_is_bit_identical(tmp_path, family, fmt):
    """float32 storage: the loaded model is the saved one, bit for bit (other storages:
    tests/test_checkpoint_storage.py)."""
    res, cfg = _quantized(family, fmt)
    d = tmp_path / "ck"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, float_dtype="float32")
    m2, tok, meta = load_quantized(d, backend="numpy")
    assert tok is not None and meta["weight_format"] == fmt and meta["group_size"] == "24"
    with torch.no_grad():
        a, b = res.model(IDS).logits, m2(IDS).logits
    assert torch.equal(a, b)
    sd1, sd2 = res.model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    for name, mod in m2.named_modules():
        if isinstance(mod, W4A8Linear):
            src = res.model.get_submodule(name)
            assert (mod.policy, mod.group_size, mod.weight_format) == (src.policy, src.group_size, src.weight_format)


def test_metadata_describes_every_layer(saved):
    d, _, res = saved
    meta = read_metadata(d)
    assert meta["format"] == "fptq-w4a8" and meta["format_version"] == str(FORMAT_VERSION)
    assert meta["packing"] == "int4_k_low_first"
    by = res.plan.by_linear()
    assert set(meta["layers"]) == set(by)
    for name, e in meta["layers"].items():
        assert e["policy"] == by[name].policy.value and e["group"] == by[name].group
        assert (e["act_scale"] is None) == (by[name].act_scale is None)
    assert meta["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    plan = json.loads((d / "fptq_plan.json").read_text())
    assert plan["plan"]["groups"][0]["policy"] in ("static", "lae_static", "dynamic")
    assert {"config.json", "tokenizer.json", "fptq_plan.json", TENSORS_FILE} <= set(os.listdir(d))


def test_truncated_file_is_refused(saved, tmp_path):
    import shutil

    d = tmp_path / "trunc"
    shutil.copytree(saved[0], d)
    p = d / TENSORS_FILE
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_quantized(d, backend="numpy")


def test_garbage_header_is_refused(saved, tmp_path):
    import shutil

    d = tmp_path / "garbage"
    shutil.copytree(saved[0], d)
    p = d / TENSORS_FILE
    data = bytearray(p.read_bytes())
    data[8:20] = b"\xff" * 12  # inside the JSON header
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_metadata(d)
    (d / TENSORS_FILE).write_bytes(struct.pack("<Q", 10**12) + b"{}")  # header length beyond the file
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_metadata(d)


@pytest.mark.parametrize("field,value,match", [
    ("format_version", str(max(SUPPORTED_VERSIONS) + 1), f"format version {max(SUPPORTED_VERSIONS) + 1} is not "
     "supported"),
    ("format_version", "one", "unreadable format_version"),
    ("format", "gptq", "is not 'fptq-w4a8'"),
    ("packing", "int4_k_high_first", "unknown INT4 packing"),
    ("layers", "{not json", "metadata field unreadable"),
])
def test_unknown_metadata_is_refused(saved, tmp_path, field, value, match):
    d = _rewrite(saved[0], tmp_path / "bad", edit_meta=lambda m: m.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


def test_bad_layer_policy_is_refused(saved, tmp_path):
    def edit(m):
        layers = json.loads(m["layers"])
        layers[next(iter(layers))]["policy"] = "per_channel_magic"
        m["layers"] = json.dumps(layers)

    d = _rewrite(saved[0], tmp_path / "bad", edit_meta=edit)
    with pytest.raises(CheckpointError, match="unsupported or malformed entry"):
        load_quantized(d, backend="numpy")


def test_missing_wrong_dtype_and_wrong_shape_tensors_are_refused(saved, tmp_path):
    key = "model.layers.0.mlp.down_proj.qweight"
    d = _rewrite(saved[0], tmp_path / "missing", edit_tensors=lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing \['model\.layers\.0\.mlp\.down_proj\.qweight'\]"):
        load_quantized(d, backend="numpy")
    d = _rewrite(saved[0], tmp_path / "dtype", edit_tensors=lambda t: t.__setitem__(key, t[key].to(torch.int8)))
    with pytest.raises(CheckpointError, match=f"tensor {key}: I8 .* needs U8"):
        load_quantized(d, backend="numpy")
    d = _rewrite(saved[0], tmp_path / "shape", edit_tensors=lambda t: t.__setitem__(key, t[key][:, :-1].clone()))
    with pytest.raises(CheckpointError, match=f"tensor {key}"):
        load_quantized(d, backend="numpy")
    d = _rewrite(saved[0], tmp_path / "extra", edit_tensors=lambda t: t.__setitem__("junk", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected \['junk'\]"):
        load_quantized(d, backend="numpy")


def test_bad_values_are_refused(saved, tmp_path):
    key = "model.layers.1.mlp.gate_proj.wscale"

    def neg(t):
        t[key] = t[key].clone()
        t[key][0, 0] = -1.0

    d = _rewrite(saved[0], tmp_path / "neg", edit_tensors=neg)
    with pytest.raises(CheckpointError, match="scales must be > 0"):
        load_quantized(d, backend="numpy")

    def nan(t):
        t["model.norm.weight"] = t["model.norm.weight"].clone()
        t["model.norm.weight"][0] = float("nan")

    d = _rewrite(saved[0], tmp_path / "nan", edit_tensors=nan)
    with pytest.raises(CheckpointError, match="model.norm.weight holds NaN"):
        load_quantized(d, backend="numpy")


def test_config_that_does_not_match_is_refused(saved, tmp_path):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["intermediate_size"] = 128
        (d / "config.json").write_text(json.dumps(cfg))

    d = rewrite(saved[0], tmp_path / "cfg", edit_files=edit, redigest=True)  # digests recomputed: the shape check
    with pytest.raises(CheckpointError, match="does not match the config"):
        load_quantized(d, backend="numpy")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        read_metadata(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not an fptq checkpoint"):
        read_metadata(tmp_path)


def test_save_is_atomic_and_refuses_to_overwrite(saved, tmp_path):
    d, _, res = saved
    with pytest.raises(FileExistsError):
        save_quantized(d, res.model)
    # a crash in the middle of writing leaves nothing under the real name, and no temp dir
    dest = tmp_path / "crash"

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with atomic_directory(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise Boom
    assert not dest.exists() and os.listdir(tmp_path) == []
    # overwrite replaces the whole directory at once
    with atomic_directory(dest) as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(dest)) == ["b"] and sorted(os.listdir(tmp_path)) == ["crash"]


def test_odd_k_padding_nibble_is_checked(tmp_path):
    """K odd: the high nibble of each row's last byte is padding and must be 0."""
    from transformers import AutoModelForCausalLM

    from fptq.testing import tiny_config

    cfg = tiny_config("llama")
    cfg.intermediate_size = 95  # down_proj has K = 95
    model = AutoModelForCausalLM.from_config(cfg).eval()
    res = quantize_model(model, IDS, QuantConfig(group_size=32), backend="numpy", progress=False)
    d = tmp_path / "odd"
    save_quantized(d, res.model, None, res.plan, None, float_dtype="float32")
    m2, tok, _ = load_quantized(d, backend="numpy")
    assert tok is None
    with torch.no_grad():
        assert torch.equal(res.model(IDS).logits, m2(IDS).logits)
    key = "model.layers.0.mlp.down_proj.qweight"

    def poke(t):
        t[key] = t[key].clone()
        t[key][0, -1] |= 0x50

    bad = _rewrite(d, tmp_path / "odd-bad", edit_tensors=poke)
    with pytest.raises(CheckpointError, match="padding nibble"):
        load_quantized(bad, backend="numpy")
    np.testing.assert_array_equal(m2.get_submodule(key[:-8]).qweight.numpy()[:, -1] >> 4, 0)
