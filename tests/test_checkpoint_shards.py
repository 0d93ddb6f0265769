"""Sharded checkpoints (format version 6) and the writer that stores a model a decoder layer at a time
(``open_writer`` / ``CheckpointWriter.add_layer`` / ``finish``): a streamed write loads to exactly the
single-file checkpoint of the same model, the whole-model path writes the same bytes, a checkpoint that
fits one shard is the single file it always was, and a damaged, missing, extra or misplaced shard is
refused with the file named."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import IDS  # noqa: E402

from fptq.io.tensorfile import TensorFile, dtype_name, write_tensor_file  # noqa: E402
from fptq.models.arch import find_decoder_layers  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    FORMAT_NAME, FORMAT_VERSION, PLAN_FILE, SHARDED_FORMAT_VERSION, TENSORS_FILE, CheckpointError,
    checkpoint_refusal, load_quantized, open_writer, read_metadata, save_quantized, storage_summary,
)
from fptq.models.checkpoint_meta import V6_KEYS, header_digest  # noqa: E402
from fptq.models.checkpoint_shards import shard_file_name  # noqa: E402
from fptq.models.checkpoint_write import (  # noqa: E402
    file_sha256, header_fields, layer_entries, storage_state, tensor_digests,
)
from fptq.models.quantize import QuantConfig, quantize_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402

INFO = {"model_name": "tiny"}
SHARD1, SHARD2 = shard_file_name(1), shard_file_name(2)


@pytest.fixture(scope="module")
def tiny():
    """A tiny llama quantized with the default rotation (online Q and input Q_f both stored)."""
    cfg = QuantConfig(group_size=32)
    return quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False), cfg


def _prefixes(model):
    path, layers, _ = find_decoder_layers(model)
    return [f"{path}.{i}" for i in range(len(layers))]


def _streamed(d, res, cfg, shard_bytes=1, release=True, **storage):
    """Write ``res`` as the streamed run does: each layer added, then released to the meta device; then
    the rest (on a copy, so the module-scoped model stays whole)."""
    import copy

    model = copy.deepcopy(res.model) if release else res.model
    with open_writer(d, shard_bytes=shard_bytes, **storage) as w:
        for p in _prefixes(model):
            w.add_layer(model, p, res.plan)
            if release:
                model.get_submodule(p).to("meta")
        w.finish(model, tiny_tokenizer(), res.plan, cfg, INFO)
    return Path(d)


def _files(d) -> dict:
    return {f: (Path(d) / f).read_bytes() for f in sorted(os.listdir(d))}


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def sharded(tiny, tmp_path_factory):
    return _streamed(tmp_path_factory.mktemp("sh") / "ck", *tiny)


def _unsharded_save(d, model, plan, cfg, float_dtype="bfloat16", int8_embeddings=False):
    """save_quantized's body as it was before shards (commit 6bbef20), from the whole-model primitives:
    the bytes a checkpoint that fits one shard must still have."""
    layers = layer_entries(model, plan)
    state, tied, rows, online, inputs = storage_state(model, layers, float_dtype, int8_embeddings)
    meta = header_fields(model, layers, tensor_digests(state), tied, rows, online, inputs, float_dtype, cfg, INFO)
    d.mkdir()
    model.config.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": INFO, "quant_config": cfg.to_json(),
           "plan": plan.to_json()}
    (d / PLAN_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    meta["file_sha256"] = json.dumps({f.name: file_sha256(f) for f in sorted(d.iterdir())}, sort_keys=True)
    meta["header_sha256"] = header_digest(meta, {k: (dtype_name(t), tuple(t.shape)) for k, t in state.items()})
    write_tensor_file(d / TENSORS_FILE, state, meta)
    return d


# ---- writing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", [{}, {"float_dtype": "float32", "int8_embeddings": True}])
def test_single_file_checkpoint_has_the_bytes_it_had_before_shards(tiny, tmp_path, storage):
    res, cfg = tiny
    want = _files(_unsharded_save(tmp_path / "before", res.model, res.plan, cfg, **storage))
    save_quantized(tmp_path / "save", res.model, tiny_tokenizer(), res.plan, cfg, INFO, **storage)
    streamed = _streamed(tmp_path / "streamed", res, cfg, shard_bytes=1 << 30, **storage)
    assert _files(tmp_path / "save") == want and _files(streamed) == want
    assert read_metadata(streamed)["format_version"] == str(FORMAT_VERSION) == "5"


def test_streamed_sharded_checkpoint_loads_as_the_single_file_one(tiny, sharded, tmp_path):
    res, cfg = tiny
    meta = read_metadata(sharded)
    assert meta["format_version"] == str(SHARDED_FORMAT_VERSION) and sorted(meta["shards"]) == [SHARD1, SHARD2]
    assert sorted(os.listdir(sharded)) == sorted({*meta["digests"]["files"], *meta["shards"], TENSORS_FILE})
    assert "2 shard files" in storage_summary(meta)
    with TensorFile(sharded / TENSORS_FILE) as f:  # the layers live in the shards, the rest in the main file
        assert not [n for n in f.names if n.startswith("model.layers.")]
        assert {"fptq.online_rotation", "fptq.input_rotation", "model.embed_tokens.weight"} <= set(f.names)
    with TensorFile(sharded / SHARD2) as f:
        assert f.names and all(n.startswith("model.layers.1.") for n in f.names) and f.metadata == {}
    single = save_quantized(tmp_path / "single", res.model, tiny_tokenizer(), res.plan, cfg, INFO)
    m1, _, meta1 = load_quantized(single, backend="numpy")
    m2, tok, meta2 = load_quantized(sharded, backend="numpy")
    assert tok is not None and meta2["layers"] == meta1["layers"] and meta2["tied"] == meta1["tied"]
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(_logits(m1), _logits(m2))


def test_whole_model_path_writes_the_streamed_bytes(tiny, sharded, tmp_path):
    res, cfg = tiny
    with open_writer(tmp_path / "whole", shard_bytes=1) as w:
        w.finish(res.model, tiny_tokenizer(), res.plan, cfg, INFO)
    assert _files(tmp_path / "whole") == _files(sharded)


def _tensor_bytes(entry) -> int:
    size = {"F32": 4, "BF16": 2, "F16": 2, "U8": 1, "I8": 1}
    return sum(size[dt] * int(np.prod(shape)) for dt, shape in entry["tensors"].values())


def test_a_shard_is_cut_before_a_layer_that_would_pass_shard_bytes(tiny, sharded, tmp_path):
    res, cfg = tiny
    one, two = (_tensor_bytes(e) for _, e in sorted(read_metadata(sharded)["shards"].items()))
    for limit, shards in [(one + two, {}), (one + two - 1, {SHARD1: one, SHARD2: two}),
                          (one, {SHARD1: one, SHARD2: two})]:
        got = read_metadata(_streamed(tmp_path / str(limit), res, cfg, shard_bytes=limit))["shards"]
        assert {n: _tensor_bytes(e) for n, e in got.items()} == shards, limit


def test_a_released_layer_that_was_not_added_is_refused(tiny, tmp_path):
    import copy

    res, cfg = tiny
    model = copy.deepcopy(res.model)
    first, second = _prefixes(model)
    with pytest.raises(CheckpointError, match="meta device"):
        with open_writer(tmp_path / "ck", shard_bytes=1) as w:
            w.add_layer(model, first, res.plan)
            model.get_submodule(first).to("meta")
            model.get_submodule(second).to("meta")  # released without add_layer
            w.finish(model, tiny_tokenizer(), res.plan, cfg, INFO)
    assert os.listdir(tmp_path) == []  # nothing left: not the checkpoint, not a temporary directory


def test_writer_closed_without_finish_leaves_nothing(tiny, tmp_path):
    res, _ = tiny
    with pytest.raises(CheckpointError, match="without finish"):
        with open_writer(tmp_path / "ck", shard_bytes=1) as w:
            w.add_layer(res.model, _prefixes(res.model)[0], res.plan)
    assert os.listdir(tmp_path) == []


def test_add_layer_refuses_a_layer_twice_and_a_foreign_prefix(tiny, tmp_path):
    res, _ = tiny
    first = _prefixes(res.model)[0]
    with pytest.raises(ValueError, match="overlaps"), open_writer(tmp_path / "ck") as w:
        w.add_layer(res.model, first, res.plan)
        w.add_layer(res.model, f"{first}.mlp", res.plan)
    with pytest.raises(ValueError, match="not a module"), open_writer(tmp_path / "ck") as w:
        w.add_layer(res.model, "model.layers.99", res.plan)
    with pytest.raises(ValueError, match="shard_bytes"):
        with open_writer(tmp_path / "ck", shard_bytes=0):
            pass
    assert os.listdir(tmp_path) == []


def test_force_replaces_a_sharded_checkpoint_but_not_its_users_files(tiny, sharded, tmp_path):
    res, cfg = tiny
    d = tmp_path / "ck"
    shutil.copytree(sharded, d)
    assert checkpoint_refusal(d) is None  # the shards are files the header lists
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, INFO, overwrite=True)
    assert read_metadata(d)["shards"] == {} and not (d / SHARD1).exists()
    shutil.rmtree(d)
    shutil.copytree(sharded, d)
    (d / "notes.txt").write_text("mine")
    assert "notes.txt" in checkpoint_refusal(d)


# ---- reading: what is refused -------------------------------------------------------------------------------
def _copy(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


@pytest.mark.parametrize("shard", [SHARD1, SHARD2])
@pytest.mark.parametrize("where", [0.0, 0.001, 0.01, 0.3, 0.6, 0.97, 1.0])  # header length, header, data
def test_a_flipped_byte_in_a_shard_is_refused(sharded, tmp_path, shard, where):
    d = _copy(sharded, tmp_path / "ck")
    raw = bytearray((d / shard).read_bytes())
    raw[min(int(where * len(raw)), len(raw) - 1)] ^= 0x01
    (d / shard).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{shard}: digest mismatch"):
        load_quantized(d, backend="numpy")


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / SHARD2).unlink(), f"{SHARD2}: a shard the header lists .* is missing"),
    (lambda d: (d / SHARD2).rename(d / shard_file_name(3)), f"{shard_file_name(3)}: a shard file the header"),
    (lambda d: shutil.copy(d / SHARD2, d / shard_file_name(3)), "renamed, extra or foreign shard"),
    (lambda d: (d / SHARD1).write_bytes((d / SHARD1).read_bytes()[:-1]), f"{SHARD1}: .* bytes where the header"),
    (lambda d: (d / SHARD1).write_bytes((d / SHARD1).read_bytes() + b"\0"), f"{SHARD1}: .* bytes where the header"),
    (lambda d: shutil.copy(d / SHARD1, d / SHARD2), f"{SHARD2}: .* bytes where the header|{SHARD2}: digest"),
])
def test_a_missing_extra_renamed_or_resized_shard_is_refused(sharded, tmp_path, damage, match):
    d = _copy(sharded, tmp_path / "ck")
    damage(d)
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


def test_a_shard_outside_the_directory_or_not_a_file_is_refused(sharded, tmp_path):
    d = _copy(sharded, tmp_path / "ck")
    (d / SHARD1).rename(tmp_path / "elsewhere.safetensors")
    (d / SHARD1).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=f"{SHARD1}: a shard must be a regular file inside .* outside it"):
        load_quantized(d, backend="numpy")
    (d / SHARD1).unlink()
    os.mkfifo(d / SHARD1)  # opening it would block: refused before
    with pytest.raises(CheckpointError, match=f"{SHARD1}: .* not a regular file"):
        load_quantized(d, backend="numpy")


def _edit_header(src, dst, edit):
    """Copy checkpoint ``src`` to ``dst`` with ``edit(meta, tensors)`` applied to the main file's metadata
    and tensors, the tensor and header digests recomputed (a careful hostile writer), so that the check
    under test, not a digest, refuses it."""
    d = _copy(src, dst)
    with TensorFile(d / TENSORS_FILE) as f:
        meta, tensors = dict(f.metadata), {k: f.tensor(k) for k in f.names}
    edit(meta, tensors)
    table = {k: (dtype_name(t), tuple(t.shape)) for k, t in tensors.items()}
    try:
        for e in json.loads(meta.get("shards", "{}")).values():
            table.update({k: (dt, tuple(s)) for k, (dt, s) in e["tensors"].items()})
    except (ValueError, AttributeError, TypeError):
        pass
    digests = json.loads(meta["tensor_sha256"])
    digests.update(tensor_digests(tensors))
    meta["tensor_sha256"] = json.dumps({k: v for k, v in digests.items() if k in table}, sort_keys=True)
    meta["header_sha256"] = header_digest(meta, table)
    write_tensor_file(d / TENSORS_FILE, tensors, meta)
    return d


def _set_shards(fn):
    def edit(meta, tensors):
        shards = json.loads(meta["shards"])
        fn(shards)
        meta["shards"] = json.dumps(shards, sort_keys=True)
    return edit


@pytest.mark.parametrize("edit,match", [
    (lambda m, t: m.pop("shards"), "'shards' is missing"),
    (lambda m, t: m.__setitem__("format_version", "5"), "format_version says 5 .* version field is corrupt"),
    (lambda m, t: m.__setitem__("shards", "{not json"), "'shards': not JSON"),
    (lambda m, t: m.__setitem__("shards", "{}"), "non-empty object"),
    (_set_shards(lambda s: s.__setitem__("../x.safetensors", s.pop(SHARD2))), "plain file names"),
    (_set_shards(lambda s: s.__setitem__(shard_file_name(3), s.pop(SHARD2))), "numbered from 1"),
    (_set_shards(lambda s: s[SHARD1].pop("sha256")), "exactly"),
    (_set_shards(lambda s: s[SHARD1].__setitem__("bytes", "12")), "bytes must be an integer"),
    (_set_shards(lambda s: s[SHARD1]["tensors"].update(s[SHARD2]["tensors"])), "is stored twice"),
    (_set_shards(lambda s: s[SHARD1]["tensors"].__setitem__("x", ["F99", [1]])), "must map to"),
])
def test_a_malformed_shard_index_is_refused(sharded, tmp_path, edit, match):
    d = _edit_header(sharded, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=match):
        read_metadata(d)


def test_a_shard_table_that_differs_from_the_file_is_refused(sharded, tmp_path):
    def shrink(s):
        name = sorted(s[SHARD2]["tensors"])[0]
        s[SHARD2]["tensors"][name][1] = [1]
    d = _edit_header(sharded, tmp_path / "ck", _set_shards(shrink))
    with pytest.raises(CheckpointError):  # the header's own checks or the shard's table
        load_quantized(d, backend="numpy")


def test_version_5_header_with_a_version_6_key_and_single_file_with_stray_shard(tiny, tmp_path):
    res, cfg = tiny
    single = save_quantized(tmp_path / "single", res.model, tiny_tokenizer(), res.plan, cfg, INFO)
    d = _edit_header(single, tmp_path / "v5", lambda m, t: m.__setitem__(V6_KEYS[0], "{}"))
    with pytest.raises(CheckpointError, match="format_version says 5 but the header has version-6"):
        read_metadata(d)
    shutil.copy(single / TENSORS_FILE, single / SHARD1)
    with pytest.raises(CheckpointError, match=f"{SHARD1}: a shard file the header .* does not list"):
        load_quantized(single, backend="numpy")


def test_a_sharded_checkpoint_merged_into_version_5_still_loads(sharded, tmp_path):
    """The same tensors in one file under a version-5 header (shards popped, digests redone) load to
    the same model: version 6 changed where tensors live, nothing of what they mean."""
    def merge(meta, tensors):
        for name in json.loads(meta.pop("shards")):
            with TensorFile(sharded / name) as f:
                tensors.update({k: f.tensor(k) for k in f.names})
        meta["format_version"] = "5"
    d = _edit_header(sharded, tmp_path / "v5", merge)
    for name in (SHARD1, SHARD2):
        (d / name).unlink()
    m5, _, meta = load_quantized(d, backend="numpy")
    m6, _, _ = load_quantized(sharded, backend="numpy")
    assert meta["format_version"] == "5" and meta["shards"] == {}
    assert torch.equal(_logits(m5), _logits(m6))


def test_layers_with_different_shared_rotations_are_refused(tiny, tmp_path):
    """Q_f is stored once for all layers: a layer whose input rotation differs is refused, streamed
    (checked against the layers added before it) or whole."""
    import copy

    from fptq.models.rotate import INPUT_ROTATION, input_rotation_of

    res, cfg = tiny
    model = copy.deepcopy(res.model)
    down = model.get_submodule(f"{_prefixes(model)[1]}.mlp.down_proj")
    setattr(down, INPUT_ROTATION, -input_rotation_of(down))  # still orthogonal, but another matrix
    with pytest.raises(CheckpointError, match="another rotation \\(fptq.input_rotation\\)"):
        with open_writer(tmp_path / "streamed", shard_bytes=1) as w:
            for p in _prefixes(model):
                w.add_layer(model, p, res.plan)
    with pytest.raises(CheckpointError, match="rotate their inputs by different matrices"):
        save_quantized(tmp_path / "whole", model, tiny_tokenizer(), res.plan, cfg, INFO)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def fuzz_sharded(sharded, tmp_path_factory):
    d = _copy(sharded, tmp_path_factory.mktemp("fuzz") / "ck")
    model, _, _ = load_quantized(d, backend="numpy")
    return d, {n: (d / n).read_bytes() for n in (TENSORS_FILE, SHARD1, SHARD2)}, _logits(model)


def test_every_mutation_of_a_sharded_checkpoint_is_refused_or_harmless(fuzz_sharded):
    """Random flips, byte changes, truncations and insertions in the tensors file (its header holds the
    shard index) and in each shard: refused with a CheckpointError, or loaded to identical logits."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    d, originals, ref = fuzz_sharded

    @hypothesis.settings(max_examples=int(os.environ.get("FPTQ_FUZZ_EXAMPLES", "60")), deadline=None,
                         derandomize=True, database=None)
    @hypothesis.given(name=st.sampled_from(sorted(originals)), kind=st.sampled_from(["flip", "set", "cut", "insert"]),
                      where=st.floats(0, 1), value=st.integers(0, 255))
    def mutate_and_load(name, kind, where, value):
        data = originals[name]
        n = int.from_bytes(data[:8], "little")
        pos = min(int(where * min(len(data), 8 + n + 64)), len(data) - 1)  # mostly the header, some data
        new = {"flip": data[:pos] + bytes([data[pos] ^ (1 << value % 8)]) + data[pos + 1:],
               "set": data[:pos] + bytes([value]) + data[pos + 1:], "cut": data[:pos],
               "insert": data[:pos] + bytes([value]) + data[pos:]}[kind]
        (d / name).write_bytes(new)
        try:
            model, _, _ = load_quantized(d, backend="numpy")
            assert torch.equal(_logits(model), ref), (name, kind, pos, value)
        except CheckpointError:
            pass
        finally:
            (d / name).write_bytes(data)

    mutate_and_load()


def test_spilled_tensor_written_back_exactly_or_refused(tmp_path):
    """A tensor spilled to a file (the writer's embeddings / lm_head at the final write) is written into a
    tensors file with the same bytes as the tensor itself (bfloat16 included); spill files changed on disk
    before the write are refused; remove_spilled leaves no spill directory."""
    from fptq.models.checkpoint_shards import SPILL_DIR, remove_spilled, spill_tensor

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(300, 7, generator=gen).to(torch.bfloat16), "b": torch.randn(5, generator=gen),
               "c": torch.arange(12, dtype=torch.int8).reshape(3, 4)}
    digests = tensor_digests(tensors)
    spilled = {k: spill_tensor(tmp_path, k, t, digests[k]) for k, t in tensors.items()}
    write_tensor_file(tmp_path / "direct.safetensors", tensors, {"k": "v"})
    write_tensor_file(tmp_path / "spilled.safetensors", spilled, {"k": "v"})
    assert (tmp_path / "direct.safetensors").read_bytes() == (tmp_path / "spilled.safetensors").read_bytes()
    data = bytearray(spilled["a"].path.read_bytes())
    data[5] ^= 1
    spilled["a"].path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed before they were written"):
        write_tensor_file(tmp_path / "bad.safetensors", spilled)
    remove_spilled(spilled)
    assert not (tmp_path / SPILL_DIR).exists()
