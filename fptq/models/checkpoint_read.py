"""Reading a W4A8 checkpoint: the checks :func:`fptq.models.checkpoint.load_quantized` runs, in order.

The tensors file's header (:mod:`fptq.models.checkpoint_meta`), the digests of every tensor and of
every file written with it, ``config.json`` (bounded, checked key by key), the model it describes
built on the ``meta`` device and compared tensor by tensor with the file, the tensor values, and
after loading the ties; then the tokenizer from the verified bytes. The values are read and checked a
group at a time (:func:`checked_groups`), kept by :func:`read_tensors` or dropped by
:func:`fptq.models.checkpoint.verify_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from ..io.reading import CONFIG_LIMIT, SIDE_FILE_LIMIT, InputFileError, read_bounded
from ..io.tensorfile import DTYPES, TORCH_DTYPE_NAMES, TensorFile, TensorFileError
from ._torch import nn, torch
from .arch import arch_of_model
from .checkpoint_meta import (
    INPUT_ROTATION_TENSOR, INT8_ROW_SUFFIXES, LAYER_SUFFIXES, ONLINE_ROTATION_TENSOR, TENSORS_FILE, CheckpointError,
    check_int8_row_values, check_layer_values, check_rotation_values, parse_metadata,
)
from .checkpoint_shards import parse_shards
from .finite import EXPONENT_MASKS, all_finite, bits_finite
from .int8rows import install_int8_rows, int8_row_modules, int8_row_targets
from .qlinear import W4A8Linear
from .rotate import online_rotation_targets

__all__ = ["CheckpointWarning", "open_checkpoint", "check_quant_config", "verified_files", "verify_tensor_digests", "build_config",
           "build_model", "check_against_model", "expected_tensors", "value_groups", "checked_groups", "read_tensors",
           "loaded_dtype", "load_tokenizer"]

#: the stored run-time rotations (float32, checked orthogonal, kept as read)
_ROTATIONS = (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR)


class CheckpointWarning(UserWarning):
    """A checkpoint loads, but without a guarantee (a version-1 file has no digests)."""


def open_checkpoint(ckpt_dir) -> tuple[TensorFile, dict]:
    """Open the tensors file and check its header; returns (open TensorFile, parsed metadata). A sharded
    checkpoint's header is checked against every tensor its shard index lists (``meta["shards"]``, ``{}``
    when none); the shard files themselves are opened by :func:`fptq.models.checkpoint_shards.open_shards`."""
    d = Path(ckpt_dir)
    path = d / TENSORS_FILE
    if not d.is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {TENSORS_FILE}; not an fptq checkpoint")
    try:
        tf = TensorFile(path)
    except (TensorFileError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    try:
        shards, table = parse_shards(tf.metadata, {n: (tf.dtype(n), tf.shape(n)) for n in tf.names}, path)
        meta = parse_metadata(tf.metadata, table, path)
        check_quant_config(meta, path)
    except BaseException:
        tf.close()
        raise
    meta["_keys"] = set(table)  # every stored tensor, the shards' too (read them with checkpoint_shards.open_shards)
    meta["_path"] = path
    meta["shards"] = shards
    return tf, meta



def check_quant_config(meta: dict, where) -> None:
    """The recorded ``quant_config`` (when there is one) agrees with every layer entry: the group size
    (``-1`` = per-channel, G = K), the weight format, a forced policy, and whether run-time rotations can
    exist (``rotate`` ``"none"`` stores none). A header whose fields shape the math differently from the
    configuration it claims is refused, digests or not."""
    qc = meta.get("quant_config")
    if qc is None:
        return
    g, fmt, forced, rotate = (qc.get(k) for k in ("group_size", "weight_format", "force_policy", "rotate"))
    if "group_size" in qc and (type(g) is not int or (g < 1 and g != -1)):
        raise CheckpointError(f"{where}: metadata key 'quant_config': group_size must be -1 or an integer >= 1, "
                              f"got {g!r}")
    for name, e in sorted(meta["layers"].items()):
        want = {"group_size": (e["in_features"] if g == -1 else g) if "group_size" in qc else e["group_size"],
                "weight_format": fmt if "weight_format" in qc else e["weight_format"],
                "policy": forced if forced is not None else e["policy"]}
        for key, value in want.items():
            if e[key] != value:
                raise CheckpointError(f"{where}: layer {name}: {key} {e[key]!r} does not match metadata key "
                                      f"'quant_config' ({key if key != 'policy' else 'force_policy'} "
                                      f"{qc.get(key if key != 'policy' else 'force_policy')!r})")
    if rotate == "none" and (meta["online_rotations"] or meta["input_rotations"]):
        raise CheckpointError(f"{where}: metadata key 'quant_config' says rotate 'none' but the header lists "
                              "run-time rotations (online_rotations / input_rotations)")


def verified_files(d: Path, meta: dict) -> dict[str, bytes]:
    """filename -> bytes of every file the header lists, each checked against its digest (version 2);
    version 1: config.json unchecked, with a CheckpointWarning."""
    if "digests" not in meta:
        warnings.warn(f"{meta['_path']}: format version 1 has no digests; corrupted tensor data or config.json "
                      "cannot be detected (re-quantize to get a version-2 checkpoint)", CheckpointWarning,
                      stacklevel=4)  # the caller of load_quantized / verify_checkpoint (via checkpoint._read_checked)
        names = {"config.json": None}
    else:
        names = meta["digests"]["files"]
        if "config.json" not in names:
            raise CheckpointError(f"{meta['_path']}: metadata key 'file_sha256' does not list config.json")
    out = {}
    for name, digest in sorted(names.items()):
        limit = CONFIG_LIMIT if name == "config.json" else SIDE_FILE_LIMIT
        try:
            data = read_bounded(d / name, limit)
        except InputFileError as e:
            raise CheckpointError(f"{e} (a file of the checkpoint)") from None
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{d / name}: digest mismatch (the file changed after the checkpoint was written)")
        out[name] = data
    return out


def verify_tensor_digests(tf: TensorFile, meta: dict) -> None:
    if "digests" not in meta:
        return
    for name, digest in sorted(meta["digests"]["tensors"].items()):
        if tf.sha256(name) != digest:
            raise CheckpointError(f"{meta['_path']}: tensor {name}: digest mismatch (its data is corrupt)")


def build_config(data: bytes, where: Path, meta: dict):
    """A transformers config from ``config.json`` bytes, every problem a CheckpointError naming the file;
    its layer count must be the one the stored tensors hold (checked before anything is built)."""
    from transformers import CONFIG_MAPPING

    from .loading import ModelLoadError, check_config_dict, check_layer_count

    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where}: not valid UTF-8 JSON ({e})") from None
    try:
        check_config_dict(d, where)
        check_layer_count(d, meta["_keys"], where, "the checkpoint's tensors")
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from None
    try:
        return CONFIG_MAPPING[d["model_type"]].from_dict(d)
    except Exception as e:  # transformers validates in many ways; none may escape unnamed
        raise CheckpointError(f"{where}: cannot build a {d['model_type']} config ({type(e).__name__}: {e})") from None


def build_model(cfg, meta: dict, backend: str, mode: str, where: Path):
    """The float32 model of ``cfg`` with every listed linear replaced by an empty W4A8Linear (and the
    INT8-rows modules of ``int8_rows``), every tensor the checkpoint stores on the ``meta`` device (no memory):
    the parameters (:func:`fptq.models.skeleton.skeleton`: no initialization, ties made) and the W4A8 /
    INT8-rows buffers. The buffers the modules compute themselves (rotary ``inv_freq``, Gemma's
    ``embed_scale``) are real, computed by their constructors as a model built on the CPU gets them
    (under ``torch.device("meta")`` they are meta too: the shape check). ``load_quantized`` fills it with the
    tensors of :func:`read_tensors` (``load_state_dict(assign=True)``)."""
    from .skeleton import skeleton

    try:
        model = skeleton(cfg)
        model.__dict__.pop("_fptq_ties", None)  # the streamed run's record of ties, not needed here
        arch_of_model(model)
    except Exception as e:
        raise CheckpointError(f"{where}: cannot build a model from config.json ({type(e).__name__}: {e})") from None
    with torch.device("meta"):
        _install_quantized(model, cfg, meta, backend, mode, where)
    return model


def _install_quantized(model, cfg, meta: dict, backend: str, mode: str, where: Path) -> None:
    """Replace the linears of ``meta["layers"]`` by W4A8Linear and the modules of ``meta["int8_rows"]`` by
    INT8-rows modules (their buffers made where torch's default device says: meta in :func:`build_model`)."""
    for name, e in meta["layers"].items():
        parent_path, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            parent = None
        lin = getattr(parent, attr, None)
        if not isinstance(lin, nn.Linear):
            raise CheckpointError(f"{where}: layer {name}: no nn.Linear of that name in a {cfg.model_type} model")
        if (lin.in_features, lin.out_features, lin.bias is not None) != (e["in_features"], e["out_features"],
                                                                          e["bias"]):
            raise CheckpointError(f"{where}: layer {name}: the header's {e['out_features']}x{e['in_features']} "
                                  f"(bias {str(e['bias']).lower()}) does not match the config's "
                                  f"{lin.out_features}x{lin.in_features} (bias {str(lin.bias is not None).lower()}"
                                  f"{', see attention_bias / mlp_bias' if e['bias'] != (lin.bias is not None) else ''})")
        setattr(parent, attr, W4A8Linear(e["in_features"], e["out_features"], e["bias"], e["group_size"],
                                         e["weight_format"], e["policy"], backend, mode))
    rows = meta["int8_rows"]
    if rows:
        try:
            targets = int8_row_targets(model)
        except ValueError as e:
            raise CheckpointError(f"{where}: metadata key 'int8_rows': {e}") from None
        if any(targets.get(n) != k for n, k in rows.items()):
            raise CheckpointError(f"{where}: metadata key 'int8_rows' {rows} does not name this {cfg.model_type} "
                                  f"model's embedding / lm_head ({targets})")
        model.tie_weights()  # so that a lm_head the config ties shares the embedding's INT8 rows
        install_int8_rows(model, int8_row_modules(model, rows, quantize=False))


def _stored_dtype(key: str, model_dtype: str, ndim: int, meta: dict) -> str:
    """The dtype a tensor of the model must be stored in: float32 matrices (2 or more dimensions) in
    ``float_dtype``; 1-D float parts, the W4A8 layers' and the INT8 rows' tensors (and anything not
    float32) as the model holds them."""
    owner, _, suffix = key.rpartition(".")
    exact = (owner in meta["layers"] and suffix in LAYER_SUFFIXES) or \
        (owner in meta["int8_rows"] and suffix in INT8_ROW_SUFFIXES) or key in (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR)
    return model_dtype if exact or model_dtype != "F32" or ndim < 2 else meta["float_dtype"]


def expected_tensors(model, meta: dict, where: Path) -> dict:
    """The tensors the checkpoint of ``model`` (built by :func:`_build`) must hold: its state dict, plus
    ``Q`` (F32 ``[d, d]``) when ``online_rotations`` names modules, which must be norms of the model's layers."""
    expected = model.state_dict()
    online = meta["online_rotations"]
    if online:
        targets = online_rotation_targets(model)
        bad = [p for p in online if p not in targets]
        if bad:
            raise CheckpointError(f"{where}: metadata key 'online_rotations' names {bad[:3]}, not norms of the "
                                  f"layers of this {model.config.model_type} model (its norms: {targets[:4]}"
                                  f"{'...' if len(targets) > 4 else ''})")
        d = expected[f"{online[0]}.weight"].shape[0]
        expected[ONLINE_ROTATION_TENSOR] = torch.empty((d, d), dtype=torch.float32)
    inputs = meta["input_rotations"]
    if inputs:
        k = meta["layers"][inputs[0]]["in_features"]
        expected[INPUT_ROTATION_TENSOR] = torch.empty((k, k), dtype=torch.float32)
    return expected


def check_against_model(expected: dict, meta: dict, table: dict, where: Path) -> set:
    """The stored tensors are exactly the model's (less tied ones), with its shapes and the dtypes it
    is stored in (:func:`_stored_dtype`)."""
    tied = meta["tied"]
    want = set(expected) - set(tied)
    missing, unexpected = sorted(want - meta["_keys"]), sorted(meta["_keys"] - want)
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors do not match the model "
                              f"(missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                              f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''})")
    for dup, kept in tied.items():
        if dup not in expected or kept not in expected:
            raise CheckpointError(f"{where}: tied entry {dup} -> {kept} names an unknown tensor")
    for k in sorted(want):
        ref = expected[k]
        dt = _stored_dtype(k, TORCH_DTYPE_NAMES.get(str(ref.dtype).replace("torch.", "")), ref.dim(), meta)
        if table[k] != (dt, tuple(ref.shape)):
            raise CheckpointError(f"{where}: tensor {k}: {table[k][0]} {list(table[k][1])} where the model needs "
                                  f"{dt} {list(ref.shape)} ({ref.dtype})")
    return want


def loaded_dtype(dtype: str, keep_bf16: bool = False):
    """The torch dtype :func:`read_tensors` gives a stored tensor of safetensors dtype ``dtype``: a BF16 or F16 float
    part float32 (BF16 kept as torch.bfloat16 with ``keep_bf16``), any other its own."""
    if dtype == "BF16":
        return torch.bfloat16 if keep_bf16 else torch.float32
    if dtype == "F16":
        return torch.float32
    return torch.from_numpy(np.empty(0, DTYPES[dtype][0])).dtype


def _to_torch(a: np.ndarray, dtype: str, keep_bf16: bool = False):
    """A tensor of torch's own memory (as a model built on the CPU holds it) with the values of ``a`` (as
    :meth:`~fptq.io.tensorfile.TensorFile.numpy` gives it), of :func:`loaded_dtype`: a stored BF16 (uint16 bit
    patterns) or F16 float part widened to float32 exactly, written straight into the tensor (no second full-size
    copy); with ``keep_bf16`` a BF16 part is kept as torch.bfloat16 (the stored bits)."""
    t = torch.empty(a.shape, dtype=loaded_dtype(dtype, keep_bf16))
    if t.dtype == torch.bfloat16:
        t.view(torch.int16).numpy().view(np.uint16)[...] = a
    elif dtype == "BF16":
        np.left_shift(a, 16, out=t.numpy().view(np.uint32), dtype=np.uint32)
    else:
        t.numpy()[...] = a
    return t


def _finite(a: np.ndarray, dtype: str) -> bool:
    """No NaN/Inf in ``a`` as read (stored dtype ``dtype``): a BF16 / F16 part on its bits (:func:`bits_finite`,
    no float32 copy), a float32 / float64 one a chunk at a time (:func:`all_finite`); integers always."""
    if dtype in EXPONENT_MASKS:
        return bits_finite(a, dtype)
    return a.dtype.kind != "f" or all_finite(torch.from_numpy(a))


def _check_values(k: str, a: np.ndarray, dtype: str, where) -> None:
    """A tensor outside the W4A8 layers, as read: a rotation ``Q`` / ``Q_f`` finite and orthogonal
    (:func:`check_rotation_values`), any other float tensor free of NaN/Inf."""
    if k in _ROTATIONS:
        try:
            check_rotation_values(a, k)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
    elif not _finite(a, dtype):
        raise CheckpointError(f"{where}: tensor {k} holds NaN/Inf")


def _check_group(owner, arrays: dict, meta: dict, where) -> None:
    """The checks that need a module's tensors together: a W4A8 layer's against its entry and the spec's bounds
    (:func:`check_layer_values`), an INT8-rows module's codes and row scales (:func:`check_int8_row_values`)."""
    try:
        if owner in meta["layers"]:
            check_layer_values(owner, meta["layers"][owner], {k.rpartition(".")[2]: a for k, a in arrays.items()})
        elif owner in meta["int8_rows"]:
            check_int8_row_values(owner, arrays[f"{owner}.qweight"], arrays[f"{owner}.scale"])
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None


def value_groups(meta: dict, want) -> list[tuple[str | None, list[str]]]:
    """``(owner, names)`` of the stored tensors ``want`` in the order their values are checked (by first name):
    a W4A8 layer's tensors together (owner: its path), an INT8-rows module's stored ``qweight`` and ``scale``
    together (a tied one's are stored, and checked, under the module it is tied to), every other tensor alone
    (owner None)."""
    suffixes = {**{n: INT8_ROW_SUFFIXES for n in meta["int8_rows"]}, **{n: LAYER_SUFFIXES for n in meta["layers"]}}
    groups: dict[tuple, tuple[str | None, list[str]]] = {}
    for k in sorted(want):
        owner, _, suffix = k.rpartition(".")
        key = (True, owner) if suffix in suffixes.get(owner, ()) else (False, k)
        groups.setdefault(key, (owner if key[0] else None, []))[1].append(k)
    return list(groups.values())


def checked_groups(tf: TensorFile, meta: dict, want: set):
    """Read the stored tensors ``want`` one group of :func:`value_groups` at a time and check their values; yield
    each group as ``{name: array as read}`` (:meth:`~fptq.io.tensorfile.TensorFile.numpy`: BF16 as its uint16 bits)
    once it has passed. The dict is emptied when the next group is asked for, so a caller that keeps nothing of it
    holds one group's arrays at most (one layer, one INT8-rows module or one other tensor).

    Checked: every tensor outside the W4A8 layers by :func:`_check_values` (an INT8-rows module's too), then the
    group by :func:`_check_group`. The first problem in this order is the one raised, a CheckpointError naming the
    file and the tensor or layer. :func:`read_tensors` keeps what it yields; ``fptq report``
    (:func:`fptq.models.checkpoint.verify_checkpoint`) drops it."""
    where = meta["_path"]
    for owner, names in value_groups(meta, want):
        arrays = {k: tf.numpy(k) for k in names}
        if owner not in meta["layers"]:
            for k in names:  # no loop variable left holding an array into the next group
                _check_values(k, arrays[k], tf.dtype(k), where)
        _check_group(owner, arrays, meta, where)
        yield arrays
        arrays.clear()


def read_tensors(tf: TensorFile, meta: dict, want: set, keep_bf16: bool = False) -> dict:
    """name -> torch tensor for every stored tensor (float parts widened to float32; with ``keep_bf16``
    BF16 ones kept as torch.bfloat16), values checked (:func:`checked_groups`).

    One tensor is held twice at a time (as read, and in the tensor of its own that the model takes with
    ``load_state_dict(assign=True)``); the rotations ``Q`` / ``Q_f`` are NumPy-backed as read."""
    out = {}
    for arrays in checked_groups(tf, meta, want):
        for k in list(arrays):
            a = arrays.pop(k)
            out[k] = torch.from_numpy(a) if k in _ROTATIONS else _to_torch(a, tf.dtype(k), keep_bf16)
            del a
    return out


def load_tokenizer(d: Path, files: dict, meta: dict):
    """The tokenizer saved with the checkpoint, or None when none was.

    Version 2: built from the verified bytes of the listed files only (copied to a temporary
    directory), so a file added to the checkpoint later cannot change it."""
    import tempfile

    from transformers import AutoTokenizer

    verified = "digests" in meta
    names = set(files) if verified else {p.name for p in d.iterdir()}
    if not names & {"tokenizer_config.json", "tokenizer.json"}:
        return None
    try:
        if not verified:
            return AutoTokenizer.from_pretrained(d, local_files_only=True)
        with tempfile.TemporaryDirectory(prefix="fptq-tokenizer-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        tok.name_or_path = str(d)
        return tok
    except Exception as e:
        raise CheckpointError(f"{d}: the tokenizer files cannot be loaded ({type(e).__name__}: {e})") from None
