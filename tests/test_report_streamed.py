"""``fptq report`` verifies a checkpoint without loading it (``verify_checkpoint``): the same checks as
``load_quantized``, the same CheckpointError messages, one group of tensors held at a time, BF16 never widened.

* a valid checkpoint of every storage (BF16, F16, INT8 rows, online and input rotations, shards): the same
  metadata as ``load_quantized``, and the same ``fptq report`` output;
* corruptions ``load_quantized`` refuses (values reached past the digests by a careful writer that recomputes
  them, ties the config contradicts, a broken tokenizer): the same message from both;
* the streamed check widens nothing (``_to_torch`` never called) and holds one group's arrays at a time;
* the bit-level finiteness of BF16 / F16 is ``np.isfinite`` of the widened values, on every bit pattern.
"""

import json
import re
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import IDS, rewrite  # noqa: E402

import fptq.models.checkpoint as ckpt_mod  # noqa: E402
import fptq.models.checkpoint_read as read_mod  # noqa: E402
import fptq.models.finite as finite  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.models.checkpoint import (  # noqa: E402
    CheckpointError, load_quantized, open_writer, read_metadata, save_quantized, verify_checkpoint,
)
from fptq.models.checkpoint_meta import INPUT_ROTATION_TENSOR, ONLINE_ROTATION_TENSOR  # noqa: E402
from fptq.models.checkpoint_read import checked_groups, open_checkpoint, value_groups  # noqa: E402
from fptq.models.checkpoint_shards import CheckpointTensors, open_shards  # noqa: E402
from fptq.models.arch import find_decoder_layers  # noqa: E402
from fptq.models.quantize import QuantConfig, quantize_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402

EMBED, NORM = "model.embed_tokens.weight", "model.norm.weight"
LAYER = "model.layers.0.mlp.down_proj"


def _quantize(fmt="int4_sym", rotate="online"):
    cfg = QuantConfig(group_size=32, weight_format=fmt, rotate=rotate)
    return quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False), cfg


def _sharded(d, res, cfg):
    """``res`` written as the streamed run writes it, one layer per shard file (format version 6)."""
    path, layers, _ = find_decoder_layers(res.model)
    with open_writer(d, shard_bytes=1) as w:
        for i in range(len(layers)):
            w.add_layer(res.model, f"{path}.{i}", res.plan)
        w.finish(res.model, tiny_tokenizer(), res.plan, cfg, {"model_name": "tiny"})
    return d


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """name -> a valid checkpoint directory of each storage the loader reads."""
    root = tmp_path_factory.mktemp("ck")
    plain, plain_cfg = _quantize(rotate="none")
    asym, asym_cfg = _quantize("uint4_asym", rotate="none")
    rot, rot_cfg = _quantize()  # online Q and input Q_f

    def save(name, res, cfg, **storage):
        return save_quantized(root / name, res.model, tiny_tokenizer(), res.plan, cfg, {"model_name": "tiny"},
                              **storage)

    return {"plain": save("plain", plain, plain_cfg), "asym": save("asym", asym, asym_cfg),
            "f16": save("f16", plain, plain_cfg, float_dtype="float16"),
            "rotated_int8": save("rotated_int8", rot, rot_cfg, int8_embeddings=True),
            "sharded": _sharded(root / "sharded", rot, rot_cfg)}


def _load_meta(d):
    return load_quantized(d, backend="numpy", mode="fake_quant")[2]


# ---- (a) valid checkpoints: the same metadata, the same report ----------------------------------------------------
@pytest.mark.parametrize("name", ["plain", "asym", "f16", "rotated_int8", "sharded"])
def test_verify_returns_the_metadata_load_returns(ckpts, name):
    meta = verify_checkpoint(ckpts[name])
    assert meta == _load_meta(ckpts[name])
    for key in ("layers", "quant_config", "info", "weight_format", "group_size", "packing", "float_dtype",
                "int8_rows", "online_rotations", "input_rotations", "shards"):  # what fptq report reads
        assert key in meta
    assert bool(meta["shards"]) == (name == "sharded") and bool(meta["int8_rows"]) == (name == "rotated_int8")


@pytest.mark.parametrize("name", ["plain", "rotated_int8", "sharded"])
def test_report_output_is_the_one_load_quantized_gave(ckpts, name, monkeypatch, capsys):
    assert main(["report", str(ckpts[name])]) == 0
    streamed = capsys.readouterr().out
    monkeypatch.setattr(ckpt_mod, "verify_checkpoint", _load_meta)  # what cmd_report called before
    assert main(["report", str(ckpts[name])]) == 0
    assert capsys.readouterr().out == streamed and "| layer | group |" in streamed


# ---- (b) corruptions: the same CheckpointError ----------------------------------------------------------------------
def _poke(key, value, at=(0, 0)):
    def edit(t):
        t[key] = t[key].clone()
        t[key][at] = value
    return edit


def _both(*edits):
    def edit(t):
        for e in edits:
            e(t)
    return edit


def _edit_config(**kv):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(kv)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _static_act_scale(t):
    """The first static layer's ``act_scale`` set to 0.5 (its entry keeps the old value)."""
    key = next(k for k in sorted(t) if k.endswith(".act_scale"))
    t[key] = torch.full_like(t[key], 0.5)


def _store_lm_head_apart(t):
    t["lm_head.weight"] = t[EMBED].clone()


NAN, INF = float("nan"), float("inf")
CASES = [  # (checkpoint, edit_meta, edit_tensors, edit_files, what the message says)
    ("plain", None, _poke(EMBED, NAN, (3, 5)), None, r"tensor model\.embed_tokens\.weight holds NaN/Inf"),
    ("plain", None, _poke(EMBED, -INF, (259, 63)), None, r"tensor model\.embed_tokens\.weight holds NaN/Inf"),
    ("f16", None, _poke(EMBED, INF, (7, 1)), None, r"tensor model\.embed_tokens\.weight holds NaN/Inf"),
    ("plain", None, _poke(NORM, -INF, 0), None, r"tensor model\.norm\.weight holds NaN/Inf"),
    ("plain", None, _poke(f"{LAYER}.wscale", 3e38), None, rf"tensor {LAYER}\.wscale: scale 3\.0\d*e\+38 outside"),
    ("plain", None, _static_act_scale, None, r"\.act_scale: 0\.5 differs from the layer entry"),
    ("asym", None, _poke(f"{LAYER}.wzero", 16), None, rf"tensor {LAYER}\.wzero: zero points must be <= 15"),
    ("rotated_int8", None, _poke("model.embed_tokens.qweight", -128), None, r"code -128 outside \[-127, 127\]"),
    ("rotated_int8", None, _poke("model.embed_tokens.scale", INF, 5), None,
     r"tensor model\.embed_tokens\.scale holds NaN/Inf"),
    ("rotated_int8", None, _poke("model.embed_tokens.scale", 0.0, 5), None, r"embed_tokens\.scale: scale 0\.0 outside"),
    ("rotated_int8", None, lambda t: t.__setitem__(ONLINE_ROTATION_TENSOR, t[ONLINE_ROTATION_TENSOR] * 1.01), None,
     r"tensor fptq\.online_rotation: is not orthogonal"),
    ("rotated_int8", None, _poke(INPUT_ROTATION_TENSOR, NAN, (1, 1)), None, r"tensor fptq\.input_rotation: holds NaN"),
    ("plain", None, _both(_poke(NORM, NAN, 1), _poke(f"{LAYER}.wscale", 3e38)), None, r"holds NaN/Inf|outside"),
    ("plain", None, None, _edit_config(tie_word_embeddings=False),
     r"lm_head\.weight should be tied to model\.embed_tokens\.weight but the config does not tie them"),
    ("plain", lambda m: m.__setitem__("tied", "{}"), _store_lm_head_apart, None,
     r"the config ties \['lm_head\.weight'\] but the checkpoint stores them separately"),
    ("plain", None, None, lambda d: (d / "tokenizer.json").write_text("{not json"),
     r"the tokenizer files cannot be loaded"),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_a_corruption_gives_the_message_load_quantized_gives(ckpts, tmp_path, i):
    name, edit_meta, edit_tensors, edit_files, match = CASES[i]
    d = rewrite(ckpts[name], tmp_path / "bad", edit_meta=edit_meta, edit_tensors=edit_tensors, edit_files=edit_files,
                redigest=True)  # a careful writer: the digests agree, the values or the config do not
    with pytest.raises(CheckpointError) as loaded:
        _load_meta(d)
    with pytest.raises(CheckpointError) as verified:
        verify_checkpoint(d)
    assert str(verified.value) == str(loaded.value)
    assert re.search(match, str(verified.value)) and str(d) in str(verified.value)


def test_a_corrupted_byte_is_a_digest_mismatch_for_both(ckpts, tmp_path):
    d = rewrite(ckpts["plain"], tmp_path / "stale", edit_tensors=_poke(EMBED, NAN), redigest=False)
    msgs = []
    for f in (_load_meta, verify_checkpoint):
        with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight: digest mismatch") as e:
            f(d)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


# ---- (c) nothing widened, one group held at a time ---------------------------------------------------------------
def test_verify_never_widens_a_tensor(ckpts, monkeypatch, capsys):
    def refuse(*a, **k):
        raise AssertionError("a tensor was widened")

    monkeypatch.setattr(read_mod, "_to_torch", refuse)
    for name in ("plain", "f16", "rotated_int8", "sharded"):
        assert verify_checkpoint(ckpts[name])["layers"]
    assert main(["report", str(ckpts["plain"])]) == 0 and "| layer | group |" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="widened"):  # the patch bites: loading widens
        _load_meta(ckpts["plain"])


def _spy_reads(monkeypatch, meta):
    """Record, at each tensor read, the groups (:func:`value_groups`) of the arrays read before that are still alive
    other than the group being read: ``[(name read, [its live neighbours' names])]`` for every violation."""
    group = {k: i for i, (_, names) in enumerate(value_groups(meta, meta["_keys"])) for k in names}
    live, violations = [], []
    real = CheckpointTensors.numpy

    def numpy(self, name):
        others = [n for r, n in live if r() is not None and group[n] != group[name]]
        if others:
            violations.append((name, others))
        a = real(self, name)
        live.append((weakref.ref(a), name))
        return a

    monkeypatch.setattr(CheckpointTensors, "numpy", numpy)
    return violations


@pytest.mark.parametrize("name", ["rotated_int8", "sharded"])
def test_verify_holds_one_group_at_a_time(ckpts, monkeypatch, name):
    d = ckpts[name]
    meta = read_metadata(d)
    violations = _spy_reads(monkeypatch, meta)
    verify_checkpoint(d)
    assert violations == []
    tf, meta = open_checkpoint(d)  # the spy sees a reader that keeps what it reads
    with open_shards(tf, d, meta) as tf:
        kept = [dict(g) for g in checked_groups(tf, meta, meta["_keys"])]
    assert len(kept) > 3 and len(violations) >= len(kept) - 2


def test_groups_are_whole_layers_and_int8_modules(ckpts):
    meta = read_metadata(ckpts["rotated_int8"])
    groups = dict((o, n) for o, n in value_groups(meta, meta["_keys"]) if o is not None)
    assert set(groups) == set(meta["layers"]) | {"model.embed_tokens"}  # lm_head's rows are tied to it
    assert groups[LAYER] == sorted(k for k in meta["_keys"] if k.rpartition(".")[0] == LAYER)
    assert groups["model.embed_tokens"] == ["model.embed_tokens.qweight", "model.embed_tokens.scale"]


# ---- the bit-level finiteness of 16-bit floats -----------------------------------------------------------------------
def _widened(bits, dtype):
    return (bits.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else bits.view(np.float16).astype(
        np.float32)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_bits_finite_is_isfinite_of_the_widened_values_for_every_pattern(dtype):
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = np.isfinite(_widened(every, dtype))
    got = np.array([finite.bits_finite(every[i:i + 1], dtype) for i in range(every.size)])
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < every.size  # NaN, +-Inf, subnormals, -0.0, the largest finite: all in
    assert finite.bits_finite(every[want], dtype) and not finite.bits_finite(every, dtype)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_bits_finite_checks_every_chunk(dtype, monkeypatch):
    monkeypatch.setattr(finite, "CHUNK_BYTES", 64)  # 32 values a chunk
    special = {"BF16": (0x7FC0, 0xFF80, 0x0001, 0x8000, 0x7F7F), "F16": (0x7E00, 0xFC00, 0x0001, 0x8000, 0x7BFF)}
    nan, neg_inf, subnormal, neg_zero, largest = special[dtype]
    bits = np.full((10, 33), 0x3F80 if dtype == "BF16" else 0x3C00, dtype=np.uint16)  # 1.0
    bits[0, :3] = (subnormal, neg_zero, largest)
    assert finite.bits_finite(bits, dtype)
    for bad in (nan, neg_inf):
        b = bits.copy()
        b[-1, -1] = bad  # in the last chunk
        assert not finite.bits_finite(b, dtype) and not np.isfinite(_widened(b, dtype)).all()
    f16 = bits.view(np.float16) if dtype == "F16" else None  # F16 arrives as float16 from TensorFile.numpy
    assert f16 is None or finite.bits_finite(f16, dtype)
