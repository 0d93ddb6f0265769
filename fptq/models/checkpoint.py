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
replaces only an fptq checkpoint holding nothing but its own files, or an empty
directory, never the model being read (:func:`check_checkpoint_out`).

Loading (:func:`load_quantized`) checks, before it builds anything: the header
field by field (:mod:`fptq.models.checkpoint_meta`), the header digest, the
SHA-256 of every tensor and of every file written with it (``config.json``,
the tokenizer files, ``fptq_plan.json``), and every tensor's name, dtype and
shape against the model that ``config.json`` describes, built first on the
``meta`` device (no memory). Then the values: finite floats, scales within
the bounds the spec can produce, zero points, padding nibbles. Anything else
is a :class:`CheckpointError` naming the file and the tensor, key or layer.
Each tensor is then held once: the model is built again with everything the file stores on ``meta``
(its computed buffers real) and takes the tensors read with ``load_state_dict(assign=True)``, no copy
(``docs/checkpoint.md``, "Loading: each tensor held once").
:func:`verify_checkpoint` (``fptq report``) runs every one of these checks without loading: one layer's
tensors held at a time, BF16 never widened (``docs/checkpoint.md``, "Verifying without loading").
The checks live in :mod:`fptq.models.checkpoint_read` (and the header's in
:mod:`fptq.models.checkpoint_meta`); what is written, in :mod:`fptq.models.checkpoint_write`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from ..defaults import resolve_backend
from ..io.atomic import atomic_directory
from ..io.outputs import check_output_dir
from ._torch import torch
from .arch import get_submodule
from .checkpoint_meta import (
    DEFAULT_FLOAT_DTYPE, FLOAT_DTYPES, FORMAT_NAME, FORMAT_VERSION, INPUT_ROTATION_TENSOR, ONLINE_ROTATION_TENSOR,
    PLAN_FILE, SHARDED_FORMAT_VERSION, TENSORS_FILE, CheckpointError,
)
from .checkpoint_read import (
    CheckpointWarning, build_config, build_model, check_against_model, checked_groups, expected_tensors, load_tokenizer,
    loaded_dtype, open_checkpoint, read_tensors, verified_files, verify_tensor_digests,
)
from .checkpoint_shards import DEFAULT_SHARD_BYTES, open_shards
from .checkpoint_write import CheckpointWriter, check_writer_args, source_paths, tied_duplicates
from .qlinear import MODES, W4A8Linear
from .rotate import attach_input_rotation, factor_tensors, wrap_online_rotations

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SHARDED_FORMAT_VERSION", "FLOAT_DTYPES", "DEFAULT_FLOAT_DTYPE",
           "DEFAULT_SHARD_BYTES", "TENSORS_FILE", "PLAN_FILE", "CheckpointError", "CheckpointWarning",
           "CheckpointWriter", "open_writer", "save_quantized", "load_quantized", "verify_checkpoint", "read_metadata",
           "is_checkpoint", "checkpoint_refusal", "check_checkpoint_out", "storage_summary", "widen_bf16"]

#: the files a version-1 checkpoint (which lists none) may hold besides its tensors file
_V1_FILES = ("config.json", "generation_config.json", PLAN_FILE, "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json",
             "tokenizer.model")


def is_checkpoint(path) -> bool:
    """True when ``path`` is a directory holding an fptq tensors file."""
    return (Path(path) / TENSORS_FILE).is_file()


def checkpoint_refusal(path) -> str | None:
    """Why ``--force`` must not replace the directory ``path`` (None: it may).

    It may be replaced only when it *is* an fptq checkpoint: a tensors file whose header checks
    (:func:`read_metadata`) and nothing in the directory beyond the files that header lists. Files of
    the user's inside a checkpoint are never deleted: their presence is a refusal that names them."""
    p = Path(path)
    if not (p / TENSORS_FILE).is_file():
        return f"not an fptq checkpoint (it has no {TENSORS_FILE})"
    try:
        meta = read_metadata(p)
    except CheckpointError as e:
        return f"not a valid fptq checkpoint ({e})"
    listed = (set(meta["digests"]["files"]) if "digests" in meta else set(_V1_FILES)) | set(meta["shards"])
    extra = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in os.scandir(p)
                   if e.name != TENSORS_FILE and not (e.name in listed and e.is_file(follow_symlinks=False)))
    if extra:
        more = f" and {len(extra) - 8} more" if len(extra) > 8 else ""
        return (f"an fptq checkpoint that also holds files it does not list, which --force would delete: "
                f"{', '.join(extra[:8])}{more}; move them out first")
    return None


def check_checkpoint_out(out, force: bool = False, protect=()) -> Path:
    """Check ``--out`` before any work: with ``force`` it may only be an fptq checkpoint holding nothing
    but its own files (:func:`checkpoint_refusal`) or an empty directory, never a file, a symbolic link,
    a mount point, the working directory or a parent of it, nor overlap a path in ``protect`` (the model
    being read). Raises FileExistsError without ``force``."""
    return check_output_dir(out, "--out", force=bool(force), refusal=checkpoint_refusal, protect=protect)


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
    shards = meta.get("shards") or {}
    if shards:
        line += f"; the layers in {len(shards)} shard files"
    return line


@contextlib.contextmanager
def open_writer(out_dir, overwrite: bool = False, protect=(), float_dtype: str = DEFAULT_FLOAT_DTYPE,
                int8_embeddings: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES, workdir=None):
    """``with open_writer(out) as w: ...w.add_layer(model, prefix, plan)...; w.finish(model, tokenizer, plan,
    config, info)``: a :class:`~fptq.models.checkpoint_write.CheckpointWriter` writing into the atomic
    directory of ``out_dir`` (:func:`fptq.io.atomic.atomic_directory`: an exception, or leaving the block
    without :meth:`finish`, leaves nothing). ``overwrite`` / ``protect``: as :func:`save_quantized` (checked
    on entry, and again by ``finish`` with the model's own source directory added, and before the rename);
    ``shard_bytes``: the layers' tensors are written into shard files of about this size
    (:data:`~fptq.models.checkpoint_shards.DEFAULT_SHARD_BYTES`) when they do not fit one. ``workdir``: write in this
    existing directory instead of a temporary one, kept on a failure (a resumable run's: :mod:`fptq.models.journal`)."""
    protect = [*protect]
    check = (lambda d: check_checkpoint_out(d, overwrite, protect))  # noqa: E731

    def guard(model):
        protect.extend(source_paths(model))
        check(Path(out_dir).absolute())

    args = dict(float_dtype=float_dtype, int8_embeddings=int8_embeddings, shard_bytes=shard_bytes)
    check_writer_args(**args)  # before anything is touched
    with atomic_directory(out_dir, overwrite=overwrite, check=check, workdir=workdir) as tmp:
        writer = CheckpointWriter(tmp, **args, guard=guard)
        yield writer
        if not writer.finished:
            raise CheckpointError(f"{out_dir}: the checkpoint writer was closed without finish(); nothing written")


def save_quantized(out_dir, model, tokenizer=None, plan=None, config=None, info: dict | None = None,
                   overwrite: bool = False, protect=(), float_dtype: str = DEFAULT_FLOAT_DTYPE,
                   int8_embeddings: bool = False) -> Path:
    """Write a quantized model (its quantized linears :class:`~fptq.models.qlinear.W4A8Linear`) to
    ``out_dir`` atomically and deterministically (``docs/checkpoint.md``).

    ``tokenizer`` is saved alongside (needed for a self-contained directory); ``plan``
    (:class:`fptq.models.plan.Plan`), ``config`` (:class:`fptq.models.config.QuantConfig`) and ``info``
    (JSON-able provenance; keep run-dependent values out of it for reproducible files) are recorded.
    ``overwrite`` replaces only what :func:`check_checkpoint_out` allows; ``protect``: paths ``out_dir``
    must not overlap (the model's own source directory is added). ``float_dtype``: storage of the float
    matrices (every float32 tensor of 2 or more dimensions outside the W4A8 layers; :data:`FLOAT_DTYPES`,
    loaded back as float32; a value out of range is a CheckpointError); norms, biases and the W4A8
    tensors are never converted. ``int8_embeddings``: the embedding and lm_head as INT8 rows
    (:mod:`fptq.models.int8rows`). Run-time rotations are stored once each as float32 (tensors
    ``fptq.online_rotation`` / ``fptq.input_rotation``, metadata ``online_rotations`` / ``input_rotations``).
    Layers of more than :data:`DEFAULT_SHARD_BYTES` go to shard files (:func:`open_writer`).
    """
    if not any(isinstance(m, W4A8Linear) for m in model.modules()):
        raise CheckpointError("the model has no quantized (W4A8Linear) layers to save")
    with open_writer(out_dir, overwrite, [*protect, *source_paths(model)], float_dtype, int8_embeddings) as w:
        w.finish(model, tokenizer, plan, config, info)
    return Path(out_dir)


def read_metadata(ckpt_dir) -> dict:
    """The checked metadata of a checkpoint (``layers``, ``tied``, ... parsed from JSON).

    Checks the header only (fields, cross-checks, header digest); :func:`load_quantized` checks the data too.
    """
    tf, meta = open_checkpoint(ckpt_dir)
    tf.close()
    return meta


def _check_ties(model, meta: dict) -> None:
    """The ties of the loaded model are exactly those the header records (metadata key ``tied``)."""
    sd = model.state_dict()
    for dup, kept in meta["tied"].items():
        if sd[dup].data_ptr() != sd[kept].data_ptr():
            raise CheckpointError(f"{meta['_path']}: {dup} should be tied to {kept} but the config does not tie them")
    untied = sorted(set(tied_duplicates(sd)) - set(meta["tied"]))
    if untied:
        raise CheckpointError(f"{meta['_path']}: the config ties {untied[:4]} but the checkpoint stores them "
                              "separately (metadata key 'tied')")


def _aliases(model) -> list[list[str]]:
    """The names of each tensor the model holds under several (tied weights, tied INT8 rows), in order."""
    names: dict[int, list[str]] = {}
    for kind in (model.named_parameters, model.named_buffers):
        for name, t in kind(remove_duplicate=False):
            names.setdefault(id(t), []).append(name)
    return [n for n in names.values() if len(n) > 1]


def _assign_tensors(model, tensors: dict, meta: dict) -> None:
    """Put the read tensors into ``model`` (built on meta by ``build_model``) as they are
    (``load_state_dict(assign=True)``: no second copy), then tie again what the model tied as it was built:
    a tensor stored once under one of its names is given to its other names."""
    aliases = _aliases(model)
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if set(result.missing_keys) - set(meta["tied"]) or result.unexpected_keys:
        raise CheckpointError(f"{meta['_path']}: state dict mismatch: {result}")
    for names in aliases:
        loaded = [n for n in names if n in tensors]
        if loaded:
            owner, _, attr = loaded[0].rpartition(".")
            kept = getattr(model.get_submodule(owner), attr)
            for n in names:
                owner, _, attr = n.rpartition(".")
                setattr(model.get_submodule(owner), attr, kept)
    if not meta["int8_rows"]:  # INT8-rows modules are tied (or not) as they are built, from the config
        model.tie_weights()


def _check_loaded(model, meta: dict) -> None:
    """Nothing of the model is left on the meta device (a stored tensor it did not take)."""
    empty = [n for kind in (model.named_parameters, model.named_buffers) for n, t in kind() if t.is_meta]
    if empty:
        raise CheckpointError(f"{meta['_path']}: the checkpoint leaves {empty[:4]} of the model unloaded")


def _attach_rotations(model, meta: dict, q, q_in, factors=factor_tensors) -> None:
    """Wrap the norms of ``online_rotations`` (one shared ``Q``) and give the layers of
    ``input_rotations`` their shared ``Q_f`` (with their Hadamard factors, ``factors(q)``)."""
    if meta["online_rotations"]:
        try:
            wrap_online_rotations(model, meta["online_rotations"], q, factors(q))
        except ValueError as e:
            raise CheckpointError(f"{meta['_path']}: metadata key 'online_rotations': {e}") from None
    f_in = factors(q_in) if meta["input_rotations"] else None
    for name in meta["input_rotations"]:
        attach_input_rotation(get_submodule(model, name), q_in, f_in)


def widen_bf16(model) -> None:
    """Widen every torch.bfloat16 parameter and buffer of ``model`` (a ``load_quantized(keep_bf16=True)``
    model) to float32 in place, exactly (``bits << 16``): the model ``load_quantized`` returns by default."""
    for kind in (model.named_parameters, model.named_buffers):
        for name, t in list(kind()):   # a tied tensor is listed once, and widened once for all its names
            if t.dtype == torch.bfloat16:
                t.data = t.detach().float()   # every bfloat16 value is a float32 value: exact


def load_quantized(ckpt_dir, backend: str | None = None, mode: str = "integer", keep_bf16: bool = False):
    """Load a checkpoint written by :func:`save_quantized`, verifying it (see the module docstring).
    ``backend`` None: :func:`fptq.defaults.default_backend`. ``keep_bf16``: the float matrices stored as
    BF16 (embeddings, lm_head) stay torch.bfloat16 (half the memory of float32) for :mod:`fptq.runtime`,
    which reads their bits; such a model runs transformers' forward only after :func:`widen_bf16`.

    Returns:
        ``(model, tokenizer_or_None, metadata)``: a float32 model in eval mode (float parts widened
        exactly), its quantized linears :class:`~fptq.models.qlinear.W4A8Linear` in ``mode`` on
        ``backend``, INT8-rows embeddings / lm_head as :mod:`fptq.models.int8rows` modules, run-time
        rotations attached (:class:`~fptq.models.rotate.RotateOutput`, one shared ``Q``; ``Q_f`` on the
        layers of ``input_rotations``).
    Raises:
        ValueError: ``mode`` or ``backend`` is not a name; UnknownBackend / BackendUnavailable: ``backend``
            cannot be used (checked before the checkpoint is read).
        CheckpointError: anything missing, corrupt, of another version, or inconsistent.
    Warns:
        CheckpointWarning: a version-1 checkpoint (no digests: corrupted data cannot be detected).
    """
    from ..backends import get_backend

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    backend = resolve_backend(backend)
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be a backend name (a registered name or package.module:Class), "
                         f"got {backend!r}")
    get_backend(backend)
    d = Path(ckpt_dir)
    cfg, files, meta, tensors = _read_checked(d, backend, mode, functools.partial(read_tensors, keep_bf16=keep_bf16))
    model = build_model(cfg, meta, backend, mode, d / "config.json")  # what the file stores: on meta
    _assemble(model, tensors, meta)
    del tensors
    for name in meta["layers"]:
        get_submodule(model, name).origin = f"layer {name} of {d}"
    model.eval()
    return model, load_tokenizer(d, files, meta), meta


def _read_checked(d: Path, backend: str, mode: str, read) -> tuple:
    """``(transformers config, verified files, metadata, read(tf, meta, want))`` of checkpoint ``d``, after every
    check before the values, in order: the header (:func:`~fptq.models.checkpoint_read.open_checkpoint`), the shards,
    the digests of every tensor and listed file, ``config.json``, and every stored tensor's name, dtype and shape
    against the model built on ``meta`` (``want``: the stored tensors). ``read`` reads and checks the values
    (:func:`~fptq.models.checkpoint_read.read_tensors` or :func:`_stream_values`) while the files are open."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tf, meta = open_checkpoint(d)
    with open_shards(tf, d, meta) as tf:  # every shard verified: its file digest, size and table
        verify_tensor_digests(tf, meta)
        files = verified_files(d, meta)
        cfg = build_config(files["config.json"], d / "config.json", meta)
        table = {n: (tf.dtype(n), tf.shape(n)) for n in tf.names}
        with torch.device("meta"):  # shapes first, without memory: a hostile config costs nothing
            skeleton = build_model(cfg, meta, backend, mode, d / "config.json")
            want = check_against_model(expected_tensors(skeleton, meta, meta["_path"]), meta, table, meta["_path"])
        return cfg, files, meta, read(tf, meta, want)


def _assemble(model, tensors: dict, meta: dict, factors=factor_tensors) -> None:
    """Give ``model`` (of :func:`~fptq.models.checkpoint_read.build_model`) the ``tensors`` read (the rotations
    popped from the dict, the rest taken by the model: :func:`_assign_tensors`), then check it: the ties the header
    records are the config's (:func:`_check_ties`), nothing is left unloaded (:func:`_check_loaded`), the run-time
    rotations attach (:func:`_attach_rotations`, after the tie checks: the wrapped modules share one Q)."""
    q, q_in = tensors.pop(ONLINE_ROTATION_TENSOR, None), tensors.pop(INPUT_ROTATION_TENSOR, None)
    _assign_tensors(model, tensors, meta)
    _check_ties(model, meta)
    _check_loaded(model, meta)
    _attach_rotations(model, meta, q, q_in, factors)


def _stand_in(dtype: str, shape: tuple):
    """What :func:`_assemble` needs of a stored tensor without its values: a tensor of the shape and the dtype
    :func:`~fptq.models.checkpoint_read.read_tensors` gives it, with a storage of its own (the tie checks compare
    storages) of one element, expanded (stride 0)."""
    return torch.empty((1,) * len(shape), dtype=loaded_dtype(dtype)).expand(shape)


def _stream_values(tf, meta: dict, want: set) -> dict:
    """Check every stored tensor's values one group at a time, keeping none of them
    (:func:`~fptq.models.checkpoint_read.checked_groups`); returns :func:`_stand_in` tensors for ``want`` (the
    rotations on ``meta``: :func:`~fptq.models.rotate.wrap_online_rotations` makes ``Q`` contiguous)."""
    for arrays in checked_groups(tf, meta, want):
        arrays.clear()
    rotations = (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR)
    return {k: torch.empty(tf.shape(k), dtype=torch.float32, device="meta") if k in rotations
            else _stand_in(tf.dtype(k), tf.shape(k)) for k in want}


def verify_checkpoint(ckpt_dir) -> dict:
    """Check a checkpoint as :func:`load_quantized` does, without loading it; return its metadata (the ``meta``
    ``load_quantized`` returns). For ``fptq report``: it holds one group of tensors at a time (a W4A8 layer's, an
    INT8-rows module's, or one other tensor: the embedding as stored, BF16 never widened), where ``load_quantized``
    holds the whole model with its float parts in float32.

    The same checks, in the same order, with the same :class:`CheckpointError` messages: everything before the
    values (:func:`_read_checked`, shared), every value (:func:`~fptq.models.checkpoint_read.checked_groups`, the
    routine ``read_tensors`` runs; BF16 / F16 finiteness read on the bits, the same answer as on the widened values),
    the assembly checks (:func:`_assemble`, shared: state-dict keys, ties, nothing unloaded, rotations attached) on a
    model given :func:`_stand_in` tensors of the stored names, shapes and dtypes, which is all they read, and the
    tokenizer (built from the verified files, then dropped). Not computed: the Hadamard factors of ``Q`` / ``Q_f``
    (:func:`~fptq.models.rotate.factor_tensors` recognises a form or returns None; it refuses nothing). The backend
    ``load_quantized`` is given is not checked (it is no part of the checkpoint); the layers are built for
    ``numpy`` / ``fake_quant``, which nothing here runs.

    Warns: CheckpointWarning for a version-1 checkpoint, as ``load_quantized``."""
    d = Path(ckpt_dir)
    cfg, files, meta, stand_ins = _read_checked(d, "numpy", "fake_quant", _stream_values)
    model = build_model(cfg, meta, "numpy", "fake_quant", d / "config.json")
    _assemble(model, stand_ins, meta, factors=lambda q: None)
    del model, stand_ins
    load_tokenizer(d, files, meta)
    return meta
