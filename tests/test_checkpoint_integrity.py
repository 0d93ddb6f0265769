"""Checkpoint integrity (issue 13): digests of every tensor, file and the header; header
cross-checks; typed metadata; scale bounds; hostile configs; version 1; reproducible bytes;
permissions that follow the umask."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import IDS, edit_layers, rewrite, save_tiny, stored_logits  # noqa: E402

from fptq.io.tensorfile import TensorFile, TensorFileError, write_tensor_file  # noqa: E402
from fptq.models import checkpoint as ckpt_mod  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    TENSORS_FILE, CheckpointError, CheckpointWarning, load_quantized, read_metadata, save_quantized,
)
from fptq.models.checkpoint_meta import (  # noqa: E402
    MAX_ACT_SCALE, MAX_WSCALE, V2_KEYS, V3_KEYS, V4_KEYS, V5_KEYS, V6_KEYS,
)
from fptq.spec import WeightFormat  # noqa: E402

LAYER = "model.layers.1.mlp.gate_proj"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ck") / "w4a8")


def _load(d):
    return load_quantized(d, backend="numpy")


def _data_offset(d):
    """(start of the tensor data, {name: (begin, end)} absolute offsets) of a checkpoint's tensors file."""
    p = d / TENSORS_FILE
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__")
    return 8 + n, {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()}


# ---- case 2: tensor data ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.embed_tokens.weight", f"{LAYER}.qweight", f"{LAYER}.wscale",
                                  "model.norm.weight"])
def test_one_flipped_data_bit_is_refused_naming_the_tensor(saved, tmp_path, name):
    d = rewrite(saved[0], tmp_path / "flip", redigest=False)
    _, where = _data_offset(d)
    b, e = where[name]
    p = d / TENSORS_FILE
    data = bytearray(p.read_bytes())
    data[(b + e) // 2] ^= 0x04  # one bit, e.g. an exponent or a nibble bit
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"tensor {name}: digest mismatch"):
        _load(d)


# ---- case 3: header fields -------------------------------------------------------------------
def _bump_group(layers):
    layers[LAYER]["group_size"] += 1  # 24 -> 25: ceil(64/25) = ceil(64/24) = 3 groups, same shapes


def test_group_size_change_with_the_same_group_count_is_refused(saved, tmp_path):
    d = rewrite(saved[0], tmp_path / "stale", edit_meta=edit_layers(_bump_group), redigest=False)
    with pytest.raises(CheckpointError, match="header digest mismatch"):
        _load(d)
    # even with every digest recomputed, the top-level group size disagrees with the layer's
    d = rewrite(saved[0], tmp_path / "redigest", edit_meta=edit_layers(_bump_group), redigest=True)
    with pytest.raises(CheckpointError, match="metadata key 'group_size' is '24' but the layers use"):
        _load(d)


@pytest.mark.parametrize("key,value", [("info", '{"model_name": "other"}'), ("fptq_version", "9.9"),
                                       ("model_type", "llama ")])
def test_any_metadata_edit_is_refused_by_the_header_digest(saved, tmp_path, key, value):
    d = rewrite(saved[0], tmp_path / "m", edit_meta=lambda m: m.__setitem__(key, value), redigest=False)
    with pytest.raises(CheckpointError, match="header digest mismatch"):
        read_metadata(d)


def test_policy_without_its_act_scale_tensor_is_refused(saved, tmp_path):
    meta = read_metadata(saved[0])
    static = next(n for n, e in meta["layers"].items() if e["policy"] != "dynamic")

    def to_dynamic(layers):
        layers[static]["policy"] = "dynamic"
        layers[static]["act_scale"] = None

    d = rewrite(saved[0], tmp_path / "p", edit_meta=edit_layers(to_dynamic), redigest=True)
    with pytest.raises(CheckpointError, match=f"tensor {static}.act_scale present but layer"):
        _load(d)


# ---- case 4: config and tokenizer files ---------------------------------------------------------
@pytest.mark.parametrize("key,value", [("rope_theta", 20000.0), ("rms_norm_eps", 1e-3), ("hidden_act", "gelu")])
def test_config_edits_are_refused(saved, tmp_path, key, value):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))

    d = rewrite(saved[0], tmp_path / "cfg", edit_files=edit, redigest=False)
    with pytest.raises(CheckpointError, match=r"config\.json: digest mismatch"):
        _load(d)


def test_tokenizer_edit_and_missing_file_are_refused(saved, tmp_path):
    d = rewrite(saved[0], tmp_path / "tok", edit_files=lambda d: (d / "tokenizer.json").write_text("{}"),
                redigest=False)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: digest mismatch"):
        _load(d)
    d = rewrite(saved[0], tmp_path / "gone", edit_files=lambda d: (d / "tokenizer_config.json").unlink(),
                redigest=False)
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: missing"):
        _load(d)


def test_files_added_later_do_not_change_the_tokenizer(saved, tmp_path):
    import shutil

    d = tmp_path / "added"
    shutil.copytree(saved[0], d)
    (d / "chat_template.jinja").write_text("{{ 'planted' }}")
    (d / "notes.txt").write_text("a file the loader ignores")
    _, tok, _ = _load(d)
    assert tok.chat_template is None and tok.name_or_path == str(d)


# ---- case 8: malformed metadata is a CheckpointError naming the key ------------------------------------
def _entry(fn):
    return edit_layers(lambda layers: fn(layers[LAYER]))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.__setitem__("layers", "[1, 2]"), "metadata key 'layers' must be"),
    (lambda m: m.__setitem__("tied", '["a"]'), "metadata key 'tied' must be"),
    (lambda m: m.__setitem__("info", "[]"), "metadata key 'info' must be"),
    (lambda m: m.__setitem__("quant_config", '{"v0": "fifteen"}'), "metadata key 'quant_config' must be"),
    (lambda m: m.__setitem__("group_size", "abc"), "metadata key 'group_size' is 'abc'"),
    (lambda m: m.__setitem__("weight_format", "int3"), "metadata key 'weight_format' is 'int3'"),
    (lambda m: m.pop("model_type"), "metadata key 'model_type' is missing"),
    (lambda m: m.pop("layers"), "metadata key 'layers' is missing"),
    (lambda m: m.__setitem__("tensor_sha256", "{}"), "metadata key 'tensor_sha256' does not list"),
    (lambda m: m.__setitem__("file_sha256", '{"../x": "' + "0" * 64 + '"}'), "not plain file names"),
    (_entry(lambda e: e.pop("bias")), f"entry '{LAYER}' lacks 'bias'"),
    (_entry(lambda e: e.__setitem__("bias", 1)), "'bias' must be true or false"),
    (_entry(lambda e: e.__setitem__("in_features", "64")), "'in_features' must be an integer"),
    (_entry(lambda e: e.__setitem__("layer", "one")), "'layer' must be an integer"),
    (_entry(lambda e: e.__setitem__("v", [1])), "'v' must be a number or null"),
    (_entry(lambda e: e.__setitem__("rotation", "hadamard")), "unknown keys \\['rotation'\\]"),
    (edit_layers(lambda layers: layers.__setitem__(LAYER, [])), f"entry '{LAYER}' is not an object"),
])
def test_malformed_metadata_names_the_key(saved, tmp_path, edit, match):
    d = rewrite(saved[0], tmp_path / "bad", edit_meta=edit, redigest="header")
    with pytest.raises(CheckpointError, match=match) as info:
        _load(d)
    assert TENSORS_FILE in str(info.value)  # and the file


# ---- case 9: scale bounds (the largest the spec produces from finite float32 weights) ---------------------
def _set(name, value):
    def edit(t):
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value
    return edit


def test_scale_bounds_come_from_the_spec():
    fmax = np.finfo(np.float32).max
    assert MAX_WSCALE[WeightFormat.SYMMETRIC] == float(np.float32(fmax) / np.float32(7))  # 4.86e37
    assert MAX_WSCALE[WeightFormat.ASYMMETRIC] == float(np.float32(fmax) / np.float32(15))
    assert MAX_ACT_SCALE == float(np.float32(fmax) / np.float32(127))


def test_corrupt_finite_weight_scale_is_refused(saved, tmp_path):
    d = rewrite(saved[0], tmp_path / "big", edit_tensors=_set(f"{LAYER}.wscale", 3e38), redigest=True)
    with pytest.raises(CheckpointError,
                       match=rf"tensor {LAYER}\.wscale: scale 3\.0\d*e\+38 outside \[1\.18e-38, 4\.861e\+37\]"):
        _load(d)
    d = rewrite(saved[0], tmp_path / "tiny", edit_tensors=_set(f"{LAYER}.wscale", 1e-39), redigest=True)
    with pytest.raises(CheckpointError, match=rf"tensor {LAYER}\.wscale: scale"):
        _load(d)


def test_act_scale_must_equal_its_entry(saved, tmp_path):
    meta = read_metadata(saved[0])
    static = next(n for n, e in meta["layers"].items() if e["policy"] != "dynamic")
    d = rewrite(saved[0], tmp_path / "a", edit_tensors=_set(f"{static}.act_scale", 0.5), redigest=True)
    with pytest.raises(CheckpointError, match=f"tensor {static}.act_scale: 0.5 differs from the layer entry"):
        _load(d)


def test_run_time_overflow_names_the_layer_and_the_checkpoint(saved, tmp_path):
    """The largest legal scale loads; if the arithmetic then overflows, the error says where."""
    name = "model.layers.0.mlp.down_proj"
    big = float(np.float32(MAX_WSCALE[WeightFormat.SYMMETRIC]))

    def edit(t):
        t[f"{name}.wscale"] = torch.full_like(t[f"{name}.wscale"], big)

    d = rewrite(saved[0], tmp_path / "edge", edit_tensors=edit, redigest=True)
    model, _, _ = _load(d)
    with pytest.raises(ArithmeticError, match=f"layer {name} of {d}"), np.errstate(all="ignore"), torch.no_grad():
        model(IDS)


# ---- case 14: a hostile config is refused before the model is built ---------------------------------------
def test_hostile_config_is_refused_before_building(saved, tmp_path, monkeypatch):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["vocab_size"] = 4_000_000
        (d / "config.json").write_text(json.dumps(cfg))

    stale = rewrite(saved[0], tmp_path / "stale", edit_files=edit, redigest=False)
    careful = rewrite(saved[0], tmp_path / "careful", edit_files=edit, redigest=True)
    devices = []
    real_build = ckpt_mod.build_model

    def spy(*a, **k):
        devices.append(str(torch.empty(0).device))
        return real_build(*a, **k)

    monkeypatch.setattr(ckpt_mod, "build_model", spy)
    with pytest.raises(CheckpointError, match=r"config\.json: digest mismatch"):
        _load(stale)
    assert devices == []
    with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight: BF16 \[260, 64\] where the "
                                              r"model needs BF16 \[4000000, 64\]"):
        _load(careful)
    assert devices == ["meta"]  # only the memory-free build ran


@pytest.mark.parametrize("key,value,match", [
    ("vocab_size", -5, "'vocab_size' must be an integer >= 1"),
    ("rms_norm_eps", "tiny", "'rms_norm_eps' must be a finite number > 0"),
    ("model_type", "no-such-model", "'model_type' is 'no-such-model'"),
    ("hidden_act", 3, "'hidden_act' must be a string"),
])
def test_bad_config_values_name_the_key_and_the_file(saved, tmp_path, key, value, match):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))

    d = rewrite(saved[0], tmp_path / "c", edit_files=edit, redigest=True)
    with pytest.raises(CheckpointError, match=r"config\.json: key " + match):
        _load(d)


# ---- versions ----------------------------------------------------------------------------------------------
def _as_version_1(m):
    for k in (*V2_KEYS, *V3_KEYS, *V4_KEYS, *V5_KEYS, *V6_KEYS):
        m.pop(k, None)  # a single-file checkpoint has no V6_KEYS
    m["format_version"] = "1"


def test_version_1_loads_with_a_warning(saved, tmp_path):
    res = saved[2]  # version 1 stored its float parts as float32
    f32 = save_quantized(tmp_path / "f32", res.model, None, res.plan, None, float_dtype="float32")
    d = rewrite(f32, tmp_path / "v1", edit_meta=_as_version_1, redigest=False)
    with pytest.warns(CheckpointWarning, match="format version 1 has no digests"):
        model, tok, meta = _load(d)
    assert meta["float_dtype"] == "F32" and meta["int8_rows"] == {}
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, stored_logits(res.model, "float32"))


def test_version_1_with_digest_fields_is_refused(saved, tmp_path):
    d = rewrite(saved[0], tmp_path / "v1bad", edit_meta=lambda m: m.__setitem__("format_version", "1"),
                redigest=False)
    with pytest.raises(CheckpointError, match="format_version says 1 but the header has version-2"):
        _load(d)


# ---- the strict reader ------------------------------------------------------------------------------------------
def _header_file(path, header: dict, data: bytes = b""):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5, "file has"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "8 needed"),
    ({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative integers"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\0" * 2, "gap or overlap"),
    ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, b"\0", "exactly dtype"),
    ({"__metadata__": {"k": 1}}, b"", "object of strings"),
])
def test_tensor_file_refuses_malformed_headers(tmp_path, header, data, match):
    p = _header_file(tmp_path / "t.safetensors", header, data)
    with pytest.raises(TensorFileError, match=match):
        TensorFile(p)


def test_tensor_file_refuses_duplicate_keys_and_nan(tmp_path):
    for text, match in [(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
                         b'"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}', "duplicate key"),
                        (b'{"__metadata__":{"k":NaN}}', "constant NaN")]:
        p = tmp_path / "t.safetensors"
        p.write_bytes(len(text).to_bytes(8, "little") + text)
        with pytest.raises(TensorFileError, match=match):
            TensorFile(p)


def test_tensor_file_is_readable_by_safetensors(tmp_path):
    from safetensors import safe_open

    t = {"b": torch.arange(5, dtype=torch.float32), "a": torch.arange(3, dtype=torch.uint8),
         "c": torch.ones(2, 2, dtype=torch.bfloat16)}
    write_tensor_file(tmp_path / "x.safetensors", t, {"z": "1", "y": "2"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"z": "1", "y": "2"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in t.items())
    with TensorFile(tmp_path / "x.safetensors") as f:
        assert all(torch.equal(f.tensor(k), v) for k, v in t.items())


# ---- case 16: byte-for-byte reproducible ------------------------------------------------------------------------
def test_checkpoints_are_byte_for_byte_reproducible(saved, tmp_path):
    d, _, res = saved
    from checkpoint_helpers import quantized
    from fptq.testing import tiny_tokenizer

    res2, cfg = quantized()
    d2 = save_quantized(tmp_path / "again", res2.model, tiny_tokenizer(), res2.plan, cfg, {"model_name": "tiny"})
    names = sorted(os.listdir(d))
    assert names == sorted(os.listdir(d2))
    for n in names:
        assert (d / n).read_bytes() == (d2 / n).read_bytes(), n


def test_tensor_file_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors' own writer orders the metadata by a per-process hash; ours sorts it."""
    code = ("import sys, torch; from fptq.io.tensorfile import write_tensor_file; "
            "write_tensor_file(sys.argv[1], {'w': torch.arange(6.0), 'q': torch.arange(3, dtype=torch.uint8)}, "
            "{f'k{i}': str(i) for i in range(30)})")
    outs = []
    for i in range(2):
        p = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(p)], check=True)
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]


# ---- case 13: permissions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,dmode,fmode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_permissions_follow_the_umask(saved, tmp_path, umask, dmode, fmode):
    d, _, res = saved
    old = os.umask(umask)
    try:
        out = save_quantized(tmp_path / "perm", res.model, None, res.plan, None)
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == dmode
    assert {os.stat(out / n).st_mode & 0o777 for n in os.listdir(out)} == {fmode}


# ---- case 15: the backend is checked first ------------------------------------------------------------------------
def test_unknown_backend_fails_before_reading(tmp_path):
    from fptq.backends import UnknownBackend

    with pytest.raises(UnknownBackend, match="unknown backend 'nosuch'"):
        load_quantized(tmp_path / "does-not-exist", backend="nosuch")


def test_round_trip_is_exact_and_warning_free(saved):
    d, logits, _ = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        model, tok, meta = _load(d)
    assert set(meta["digests"]["files"]) >= {"config.json", "tokenizer.json", "fptq_plan.json"}
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, logits)


def test_digests_are_what_docs_checkpoint_md_says(saved):
    """Recompute every digest from the file bytes with hashlib alone, as docs/checkpoint.md describes."""
    import hashlib

    d = saved[0]
    raw = (d / TENSORS_FILE).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    tensors = json.loads(meta["tensor_sha256"])
    for name, e in header.items():
        b, end = e["data_offsets"]
        assert hashlib.sha256(raw[8 + n + b:8 + n + end]).hexdigest() == tensors[name], name
    for name, digest in json.loads(meta["file_sha256"]).items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, name
    doc = {"__metadata__": {k: v for k, v in meta.items() if k != "header_sha256"},
           "tensors": {name: [e["dtype"], e["shape"]] for name, e in header.items()}}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == meta["header_sha256"]
