"""W4A8 checkpoints: one safetensors file with format metadata and digests, plus config and tokenizer.

Layout (``docs/checkpoint.md`` is the full description another tool can load from)::

    DIR/
      fptq_w4a8.safetensors   every tensor (quantized linears + float parts) + metadata + digests
      config.json             the transformers config of the float model
      tokenizer files         (tokenizer.json, tokenizer_config.json, ...)
      fptq_plan.json          the plan in readable form (informative; the metadata is authoritative)

The float matrices (embeddings, lm_head, linears left float) are stored in ``float_dtype``
(bfloat16 by default, float32 on request) and restored to float32, what the model computes in;
1-D float parts (norm gains, which carry the folded LAE scales, and biases) stay float32: they
are under 0.1 % of the bytes. With ``int8_embeddings`` the embedding and lm_head are stored as INT8 rows
(:mod:`fptq.models.int8rows`). Every tensor of a W4A8 layer keeps its spec dtype (float32 scales
and bias, uint8 codes): nothing the integer path reads is ever rounded. A rotated model's norms
that rotate their output at run time (the pre-norms with ``--rotate online``, the default; Gemma 2/3's
post-norms with ``--rotate residual``) (:class:`~fptq.models.rotate.RotateOutput`) are stored
as plain norms plus one float32 ``Q`` (tensor ``fptq.online_rotation``, never rounded) and their paths
(metadata ``online_rotations``); the loader wraps them again.

Writing is atomic (:func:`fptq.io.atomic.atomic_directory`) and deterministic:
the same model, plan, config and ``info`` give the same bytes. ``overwrite``
replaces only an fptq checkpoint or an empty directory, never the model being
read (:func:`check_checkpoint_out`).

Loading (:func:`load_quantized`) checks, before it builds anything: the header
field by field (:mod:`fptq.models.checkpoint_meta`), the header digest, the
SHA-256 of every tensor and of every file written with it (``config.json``,
the tokenizer files, ``fptq_plan.json``), and every tensor's name, dtype and
shape against the model that ``config.json`` describes, built first on the
``meta`` device (no memory). Then the values: finite floats, scales within
the bounds the spec can produce, zero points, padding nibbles. Anything else
is a :class:`CheckpointError` naming the file and the tensor, key or layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .. import __version__ as FPTQ_VERSION
from .. import spec
from ..io.atomic import atomic_directory
from ..io.outputs import check_output_dir
from ..io.tensorfile import TORCH_DTYPE_NAMES, TensorFile, TensorFileError, dtype_name, raw_bytes, write_tensor_file
from ._torch import nn, torch
from .arch import arch_of_model, get_submodule
from .checkpoint_meta import (
    DEFAULT_FLOAT_DTYPE, FLOAT_DTYPES, FORMAT_NAME, FORMAT_VERSION, INT8_ROW_SUFFIXES, LAYER_SUFFIXES,
    INPUT_ROTATION_TENSOR, ONLINE_ROTATION_TENSOR, CheckpointError, check_int8_row_values, check_layer_values, check_rotation_values,
    header_digest, parse_metadata,
)
from .int8rows import install_int8_rows, int8_row_modules, int8_row_targets
from .qlinear import MODES, W4A8Linear
from .rotate import (
    attach_input_rotation, factor_tensors, input_rotation_modules, input_rotation_of, online_rotation_modules,
    online_rotation_targets, wrap_online_rotations,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FLOAT_DTYPES", "DEFAULT_FLOAT_DTYPE", "TENSORS_FILE", "PLAN_FILE",
           "CheckpointError", "CheckpointWarning", "save_quantized", "load_quantized", "read_metadata",
           "is_checkpoint", "check_checkpoint_out", "storage_summary"]

TENSORS_FILE = "fptq_w4a8.safetensors"
PLAN_FILE = "fptq_plan.json"


class CheckpointWarning(UserWarning):
    """A checkpoint loads, but without a guarantee (a version-1 file has no digests)."""


def is_checkpoint(path) -> bool:
    """True when ``path`` is a directory holding an fptq tensors file."""
    return (Path(path) / TENSORS_FILE).is_file()


def check_checkpoint_out(out, force: bool = False, protect=()) -> Path:
    """Check ``--out`` before any work: with ``force`` it may only be an existing fptq checkpoint or
    an empty directory, never a file, a symbolic link, the working directory or a parent of it,
    nor overlap a path in ``protect`` (the model being read). Raises FileExistsError without ``force``."""
    return check_output_dir(out, "--out", force=bool(force), replaceable=is_checkpoint,
                            kind=f"an fptq checkpoint (it has no {TENSORS_FILE})", protect=protect)


def _tied_duplicates(state: dict) -> dict[str, str]:
    """key -> the earlier key sharing its storage (tied weights are stored once)."""
    seen, tied = {}, {}
    for k, t in state.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen and t.numel():
            tied[k] = seen[ptr]
        else:
            seen[ptr] = k
    return tied


def _layer_entries(model, plan) -> dict:
    by_linear = plan.by_linear() if plan is not None else {}
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, W4A8Linear):
            continue
        e = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
             "group_size": m.group_size, "weight_format": m.weight_format.value, "policy": m.policy.value,
             "act_scale": None if m.act_scale is None else float(m.act_scale.item())}
        gp = by_linear.get(name)
        if gp is not None:
            e.update({"group": gp.group, "layer": gp.layer, "v": gp.v, "band": gp.band.value,
                      "v_after": gp.v_after, "fold": gp.fold, "fallback": gp.fallback})
        out[name] = e
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_paths(model) -> list[str]:
    """The local directory the float model was loaded from, if transformers recorded one."""
    src = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    return [src] if src and os.path.exists(src) else []


def _shared_rotation(by_path: dict, who: str, differ: str, name: str):
    """The one float32 rotation every module of ``by_path`` (path -> tensor, sorted) holds, contiguous on the
    CPU; a CheckpointError when two differ or it is not finite float32 (a checkpoint stores it once)."""
    paths = list(by_path)
    q = by_path[paths[0]].detach().cpu()
    for p in paths[1:]:
        if not torch.equal(by_path[p].detach().cpu(), q):
            raise CheckpointError(f"{who} {paths[0]} and {p} {differ}; a checkpoint stores one {name} for all "
                                  "of them")
    if q.dtype != torch.float32 or not bool(torch.isfinite(q).all()):
        raise CheckpointError(f"{paths[0]}: its rotation {name} must be finite float32, got {q.dtype}")
    return q.contiguous()


def _unwrap_rotations(model, sd: dict):
    """(state dict, online rotation paths, Q): each :class:`~fptq.models.rotate.RotateOutput` at ``P``
    stored as the plain norm it wraps (``P.norm.x`` -> ``P.x``, ``P.rotation`` dropped) and its ``Q`` once
    (float32, as the model holds it); ``Q`` None when there are none. All must share one ``Q``."""
    rot = online_rotation_modules(model)
    if not rot:
        return sd, [], None
    bad = sorted(set(rot) - set(online_rotation_targets(model)))
    if bad:
        raise CheckpointError(f"RotateOutput modules {bad[:3]} are not norms of this model's decoder layers; a "
                              "checkpoint stores online rotations of those norms only")
    paths = sorted(rot)
    q = _shared_rotation({p: rot[p].rotation for p in paths}, "RotateOutput modules", "hold different rotations",
                         "Q")
    out = {}
    for k, v in sd.items():
        owner = next((p for p in paths if k.startswith(f"{p}.")), None)
        if owner is None:
            out[k] = v
        elif k.startswith(f"{owner}.norm."):
            out[f"{owner}.{k[len(owner) + 6:]}"] = v
        elif k != f"{owner}.rotation":
            raise CheckpointError(f"RotateOutput {owner}: unexpected tensor {k}")
    return out, paths, q


def _input_rotations(model, layers: dict):
    """(paths, Q_f): the W4A8 layers with an input rotation and their one shared float32 ``Q_f`` (None
    when there are none)."""
    mods = input_rotation_modules(model)
    if not mods:
        return [], None
    stray = sorted(set(mods) - set(layers))
    if stray:
        raise CheckpointError(f"modules {stray[:3]} rotate their input but are not W4A8 layers; a checkpoint "
                              "stores input rotations of quantized layers only")
    paths = sorted(mods)
    q = _shared_rotation({p: input_rotation_of(mods[p]) for p in paths}, "layers",
                         "rotate their inputs by different matrices", "Q_f")
    return paths, q


def _storage_state(model, layers: dict, float_dtype: str, int8_embeddings: bool):
    """(state to write, tied, int8_rows, online rotation paths, input rotation paths): the model's state dict
    with tied tensors
    dropped, the embedding / lm_head replaced by INT8 rows when asked, run-time rotated norms as
    their norms plus one float32 ``Q`` (:func:`_unwrap_rotations`), and every other float matrix (a float32
    tensor of 2 or more dimensions outside the W4A8 layers) converted to ``float_dtype``."""
    sd, online, q = _unwrap_rotations(model, model.state_dict())
    rows = int8_row_targets(model) if int8_embeddings else {}
    if rows:
        try:
            mods = int8_row_modules(model, rows)
        except ValueError as e:
            raise CheckpointError(f"int8_embeddings: {e}") from None
        sd = {k: v for k, v in sd.items() if not any(k.startswith(f"{n}.") for n in rows)}
        for n, m in mods.items():
            sd.update({f"{n}.{k}": v for k, v in m.state_dict().items()})
    tied = _tied_duplicates(sd)  # on the model's own tensors, before any conversion makes copies
    keep = {f"{n}.{x}" for n in layers for x in LAYER_SUFFIXES} | {f"{n}.{x}" for n in rows for x in INT8_ROW_SUFFIXES}
    dt = getattr(torch, float_dtype)
    state = {}
    for k, v in sd.items():
        if k in tied:
            continue
        v = v.detach().cpu()
        if k not in keep and v.dtype == torch.float32 and v.dim() >= 2 and dt != torch.float32:
            v = v.to(dt)
            if not bool(torch.isfinite(v).all()):
                big = float(sd[k].detach().abs().max())
                raise CheckpointError(f"float_dtype={float_dtype!r}: tensor {k} has values beyond {float_dtype}'s "
                                      f"range (max |x| = {big:.4g}); store the float parts as bfloat16 or float32")
        state[k] = v.contiguous()
    if q is not None:
        state[ONLINE_ROTATION_TENSOR] = q  # float32 whatever float_dtype says: Q stays orthogonal
    inputs, q_in = _input_rotations(model, layers)
    if q_in is not None:
        state[INPUT_ROTATION_TENSOR] = q_in
    return state, tied, rows, online, inputs


def storage_summary(meta: dict) -> str:
    """One line: how a checkpoint stores the parts that are not W4A8 linears (from its metadata)."""
    names = {v: k for k, v in FLOAT_DTYPES.items()}
    fd = names.get(meta.get("float_dtype", "F32"), meta.get("float_dtype"))
    rows = meta.get("int8_rows") or {}
    head = f"{fd} (not quantized)" if not rows else f"INT8 per row, float32 row scales ({', '.join(sorted(rows))})"
    line = f"lm_head and embeddings: {head}; other float matrices: {fd}; norms and biases: float32"
    online = meta.get("online_rotations") or []
    if online:
        line += f"; online rotation: {len(online)} norm outputs times one float32 Q at run time"
    inputs = meta.get("input_rotations") or []
    if inputs:
        line += f"; input rotation: {len(inputs)} layers' inputs times one float32 Q_f at run time"
    return line


def save_quantized(out_dir, model, tokenizer=None, plan=None, config=None, info: dict | None = None,
                   overwrite: bool = False, protect=(), float_dtype: str = DEFAULT_FLOAT_DTYPE,
                   int8_embeddings: bool = False) -> Path:
    """Write a quantized model to ``out_dir`` atomically and deterministically.

    Args:
        model: a model whose quantized linears are :class:`W4A8Linear`.
        tokenizer: saved alongside (optional, but needed for a self-contained directory).
        plan: :class:`fptq.models.plan.Plan` (its per-layer v/band/fold are recorded).
        config: :class:`fptq.models.quantize.QuantConfig` (recorded).
        info: extra JSON-able provenance (source model, calibration...); recorded as given, so keep
            run-dependent values (dates, host names) out of it for reproducible files.
        overwrite: replace an existing ``out_dir``; only an fptq checkpoint or an empty directory is
            replaced (see :func:`check_checkpoint_out`).
        protect: paths that ``out_dir`` must not overlap (the model directory it was read from is
            protected automatically when the model's config records it).
        float_dtype: storage dtype of the float matrices (embeddings, lm_head, float linears; every
            float32 tensor of 2 or more dimensions outside the W4A8 layers): ``"bfloat16"`` (default),
            ``"float16"`` or ``"float32"`` (:data:`FLOAT_DTYPES`); they load back as float32. A value
            that does not fit (float16's range) is a CheckpointError. 1-D float parts (norms, biases)
            and the W4A8 layers' tensors are never converted.
        int8_embeddings: store the input embedding and lm_head as INT8 rows with float32 row scales
            (:mod:`fptq.models.int8rows`); tied ones once. The model passed in is not modified.

    Norms wrapped in :class:`~fptq.models.rotate.RotateOutput` (``--rotate online``, the default) are
    stored as their norms, their shared ``Q`` once as float32 (tensor ``fptq.online_rotation``) and
    their paths in metadata ``online_rotations``; W4A8 layers with an input rotation
    (:func:`~fptq.models.rotate.attach_input_rotation`, the down projections with ``--rotate online``)
    as their shared ``Q_f`` once as float32 (tensor ``fptq.input_rotation``) and their paths in
    metadata ``input_rotations``.
    """
    if float_dtype not in FLOAT_DTYPES:
        raise ValueError(f"float_dtype must be one of {sorted(FLOAT_DTYPES)}, got {float_dtype!r}")
    if type(int8_embeddings) is not bool:
        raise ValueError(f"int8_embeddings must be True or False, got {int8_embeddings!r}")
    layers = _layer_entries(model, plan)
    if not layers:
        raise CheckpointError("the model has no quantized (W4A8Linear) layers to save")
    gsizes = {e["group_size"] for e in layers.values() if e["group_size"] < e["in_features"]}
    fmts = {e["weight_format"] for e in layers.values()}
    state, tied, rows, online, inputs = _storage_state(model, layers, float_dtype, int8_embeddings)
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "fptq_version": FPTQ_VERSION,
        "packing": spec.PACKING.value,
        "act_format": spec.INT8_ACT.name,
        "weight_format": fmts.pop() if len(fmts) == 1 else "mixed",
        "group_size": str(gsizes.pop() if len(gsizes) == 1 else (-1 if not gsizes else "mixed")),
        "model_type": str(getattr(model.config, "model_type", "")),
        "layers": json.dumps(layers, sort_keys=True),
        "tied": json.dumps(tied, sort_keys=True),
        "float_dtype": FLOAT_DTYPES[float_dtype],
        "int8_rows": json.dumps(rows, sort_keys=True),
        "online_rotations": json.dumps(online),
        "input_rotations": json.dumps(inputs),
        "quant_config": json.dumps(config.to_json() if config is not None else None, sort_keys=True),
        "info": json.dumps(info or {}, sort_keys=True),
        "tensor_sha256": json.dumps({k: hashlib.sha256(raw_bytes(t)).hexdigest() for k, t in state.items()},
                                    sort_keys=True),
    }
    protect = [*protect, *_source_paths(model)]
    with atomic_directory(out_dir, overwrite=overwrite,
                          check=lambda d: check_checkpoint_out(d, overwrite, protect)) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": info or {},
               "quant_config": config.to_json() if config is not None else None,
               "plan": plan.to_json() if plan is not None else None}
        (tmp / PLAN_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        meta["file_sha256"] = json.dumps({f.name: _file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()},
                                         sort_keys=True)
        table = {k: (dtype_name(t), tuple(t.shape)) for k, t in state.items()}
        meta["header_sha256"] = header_digest(meta, table)
        write_tensor_file(tmp / TENSORS_FILE, state, meta)
    return Path(out_dir)


# ---- reading -------------------------------------------------------------------------------
def _open(ckpt_dir) -> tuple[TensorFile, dict]:
    """Open the tensors file and check its header; returns (open TensorFile, parsed metadata)."""
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
        table = {n: (tf.dtype(n), tf.shape(n)) for n in tf.names}
        meta = parse_metadata(tf.metadata, table, path)
    except BaseException:
        tf.close()
        raise
    meta["_keys"] = set(table)
    meta["_path"] = path
    return tf, meta


def read_metadata(ckpt_dir) -> dict:
    """The checked metadata of a checkpoint (``layers``, ``tied``, ... parsed from JSON).

    Checks the header only (fields, cross-checks, header digest); :func:`load_quantized` checks the data too.
    """
    tf, meta = _open(ckpt_dir)
    tf.close()
    return meta


def _verified_files(d: Path, meta: dict) -> dict[str, bytes]:
    """filename -> bytes of every file the header lists, each checked against its digest (version 2);
    version 1: config.json unchecked, with a CheckpointWarning."""
    if "digests" not in meta:
        warnings.warn(f"{meta['_path']}: format version 1 has no digests; corrupted tensor data or config.json "
                      "cannot be detected (re-quantize to get a version-2 checkpoint)", CheckpointWarning,
                      stacklevel=3)
        names = {"config.json": None}
    else:
        names = meta["digests"]["files"]
        if "config.json" not in names:
            raise CheckpointError(f"{meta['_path']}: metadata key 'file_sha256' does not list config.json")
    out = {}
    for name, digest in sorted(names.items()):
        try:
            data = (d / name).read_bytes()
        except OSError as e:
            raise CheckpointError(f"{d / name}: missing or unreadable ({e.strerror or e})") from None
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{d / name}: digest mismatch (the file changed after the checkpoint was written)")
        out[name] = data
    return out


def _verify_tensor_digests(tf: TensorFile, meta: dict) -> None:
    if "digests" not in meta:
        return
    for name, digest in sorted(meta["digests"]["tensors"].items()):
        if tf.sha256(name) != digest:
            raise CheckpointError(f"{meta['_path']}: tensor {name}: digest mismatch (its data is corrupt)")


def _config(data: bytes, where: Path):
    """A transformers config from ``config.json`` bytes, every problem a CheckpointError naming the file."""
    from transformers import CONFIG_MAPPING

    from .loading import ModelLoadError, check_config_dict

    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where}: not valid UTF-8 JSON ({e})") from None
    try:
        check_config_dict(d, where)
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from None
    try:
        return CONFIG_MAPPING[d["model_type"]].from_dict(d)
    except Exception as e:  # transformers validates in many ways; none may escape unnamed
        raise CheckpointError(f"{where}: cannot build a {d['model_type']} config ({type(e).__name__}: {e})") from None


def _build(cfg, meta: dict, backend: str, mode: str, where: Path):
    """The float model of ``cfg`` with every listed linear replaced by an (empty) W4A8Linear."""
    from transformers import AutoModelForCausalLM

    try:  # every persistent tensor is overwritten from the file: skip the random init (~2 s for 135M)
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        arch_of_model(model)
    except Exception as e:
        raise CheckpointError(f"{where}: cannot build a model from config.json ({type(e).__name__}: {e})") from None
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
            raise CheckpointError(f"{where}: layer {name}: shape {e['out_features']}x{e['in_features']} "
                                  f"(bias={e['bias']}) does not match the config's "
                                  f"{lin.out_features}x{lin.in_features}")
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
    return model


def _stored_dtype(key: str, model_dtype: str, ndim: int, meta: dict) -> str:
    """The dtype a tensor of the model must be stored in: float32 matrices (2 or more dimensions) in
    ``float_dtype``; 1-D float parts, the W4A8 layers' and the INT8 rows' tensors (and anything not
    float32) as the model holds them."""
    owner, _, suffix = key.rpartition(".")
    exact = (owner in meta["layers"] and suffix in LAYER_SUFFIXES) or \
        (owner in meta["int8_rows"] and suffix in INT8_ROW_SUFFIXES) or key in (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR)
    return model_dtype if exact or model_dtype != "F32" or ndim < 2 else meta["float_dtype"]


def _expected_tensors(model, meta: dict, where: Path) -> dict:
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


def _check_against_model(expected: dict, meta: dict, table: dict, where: Path) -> set:
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


def _widen(a: np.ndarray, dtype: str) -> np.ndarray:
    """A stored BF16 (uint16 bit patterns) or F16 float part as float32, exactly."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32) if dtype == "F16" else a


def _read_tensors(tf: TensorFile, meta: dict, want: set) -> dict:
    """name -> torch tensor for every stored tensor (float parts widened to float32), values checked."""
    where = meta["_path"]
    layer_of = {f"{n}.{s}": (n, s) for n in meta["layers"] for s in LAYER_SUFFIXES}
    arrays, by_layer = {}, {}
    for k in sorted(want):
        a = _widen(tf.numpy(k), tf.dtype(k))
        if k in layer_of:
            n, s = layer_of[k]
            by_layer.setdefault(n, {})[s] = a
        elif k in (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR):
            try:
                check_rotation_values(a, k)
            except CheckpointError as e:
                raise CheckpointError(f"{where}: {e}") from None
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CheckpointError(f"{where}: tensor {k} holds NaN/Inf")
        arrays[k] = a
    for n, parts in sorted(by_layer.items()):
        try:
            check_layer_values(n, meta["layers"][n], parts)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
    for n in sorted(meta["int8_rows"]):
        if f"{n}.qweight" in arrays:  # else tied to another INT8-rows module, checked there
            try:
                check_int8_row_values(n, arrays[f"{n}.qweight"], arrays[f"{n}.scale"])
            except CheckpointError as e:
                raise CheckpointError(f"{where}: {e}") from None
    return {k: torch.from_numpy(a) for k, a in arrays.items()}


def load_quantized(ckpt_dir, backend: str = "torch", mode: str = "integer"):
    """Load a checkpoint written by :func:`save_quantized`, verifying it (see the module docstring).

    Returns:
        ``(model, tokenizer_or_None, metadata)``; the model is float32, eval mode (float parts stored
        as bfloat16 / float16 are widened exactly), its quantized linears are :class:`W4A8Linear` in
        ``mode`` on ``backend``, INT8-rows embeddings / lm_head are
        :class:`~fptq.models.int8rows.Int8Embedding` / :class:`~fptq.models.int8rows.Int8LMHead`, and the
        modules of ``online_rotations`` are :class:`~fptq.models.rotate.RotateOutput` sharing one float32 ``Q``,
        and the layers of ``input_rotations`` multiply their input by one shared float32 ``Q_f``
        (:func:`~fptq.models.rotate.attach_input_rotation`).
    Raises:
        ValueError: ``mode`` is unknown; UnknownBackend / BackendUnavailable: ``backend`` cannot be used
            (checked before the checkpoint is read).
        CheckpointError: anything missing, corrupt, of another version, or inconsistent.
    Warns:
        CheckpointWarning: a version-1 checkpoint (no digests: corrupted data cannot be detected).
    """
    from ..backends import get_backend

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    get_backend(backend)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = Path(ckpt_dir)
    tf, meta = _open(d)
    with tf:
        _verify_tensor_digests(tf, meta)
        files = _verified_files(d, meta)
        cfg = _config(files["config.json"], d / "config.json")
        table = {n: (tf.dtype(n), tf.shape(n)) for n in tf.names}
        with torch.device("meta"):  # shapes first, without memory: a hostile config costs nothing
            skeleton = _build(cfg, meta, backend, mode, d / "config.json")
            want = _check_against_model(_expected_tensors(skeleton, meta, meta["_path"]), meta, table, meta["_path"])
        tensors = _read_tensors(tf, meta, want)
    model = _build(cfg, meta, backend, mode, d / "config.json")
    q = tensors.pop(ONLINE_ROTATION_TENSOR, None)
    q_in = tensors.pop(INPUT_ROTATION_TENSOR, None)
    result = model.load_state_dict(tensors, strict=False)
    tied = meta["tied"]
    if set(result.missing_keys) - set(tied) or result.unexpected_keys:
        raise CheckpointError(f"{meta['_path']}: state dict mismatch: {result}")
    if not meta["int8_rows"]:  # INT8-rows modules are tied (or not) as they are built, from the config
        model.tie_weights()
    sd = model.state_dict()
    for dup, kept in tied.items():
        if sd[dup].data_ptr() != sd[kept].data_ptr():
            raise CheckpointError(f"{meta['_path']}: {dup} should be tied to {kept} but the config does not tie them")
    untied = sorted(set(_tied_duplicates(sd)) - set(tied))
    if untied:
        raise CheckpointError(f"{meta['_path']}: the config ties {untied[:4]} but the checkpoint stores them "
                              "separately (metadata key 'tied')")
    if meta["online_rotations"]:  # after the tie checks: the wrapped modules share one Q
        try:
            wrap_online_rotations(model, meta["online_rotations"], q, factor_tensors(q))
        except ValueError as e:
            raise CheckpointError(f"{meta['_path']}: metadata key 'online_rotations': {e}") from None
    f_in = factor_tensors(q_in) if meta["input_rotations"] else None
    for name in meta["input_rotations"]:  # one shared Q_f tensor
        attach_input_rotation(get_submodule(model, name), q_in, f_in)
    for name in meta["layers"]:
        get_submodule(model, name).origin = f"layer {name} of {d}"
    model.eval()
    return model, _tokenizer(d, files, meta), meta


def _tokenizer(d: Path, files: dict, meta: dict):
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
