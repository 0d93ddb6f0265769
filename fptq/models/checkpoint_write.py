"""Writing a W4A8 checkpoint: the state to store, its header, and :class:`CheckpointWriter`, which writes
it a decoder layer at a time (used by :func:`fptq.models.checkpoint.open_writer` and
:func:`~fptq.models.checkpoint.save_quantized`; ``docs/checkpoint.md`` is the format).

The model's state dict with tied tensors dropped, the embedding / lm_head as INT8 rows when
asked, run-time rotated norms stored as their norms plus one float32 ``Q``, and every other
float matrix converted to ``float_dtype`` (:func:`storage_state`, on the whole model or one layer's
keys); the per-layer entries and the header fields; the layers' tensors buffered into shard files
(:mod:`fptq.models.checkpoint_shards`) when they do not fit one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__ as FPTQ_VERSION
from .. import spec
from ..io.reading import file_sha256
from ..io.tensorfile import dtype_name, raw_bytes, write_tensor_file
from ._torch import torch
from .arch import UnsupportedArchitecture, find_decoder_layers
from .checkpoint_meta import (
    FLOAT_DTYPES, FORMAT_NAME, FORMAT_VERSION, INPUT_ROTATION_TENSOR, INT8_ROW_SUFFIXES, LAYER_SUFFIXES,
    ONLINE_ROTATION_TENSOR, PLAN_FILE, SHARDED_FORMAT_VERSION, SHARDS_KEY, TENSORS_FILE, CheckpointError,
    header_digest,
)
from .checkpoint_shards import remove_spilled, shard_file_name, spill_tensor, write_shard
from .finite import all_finite
from .int8rows import int8_row_modules, int8_row_targets
from .qlinear import W4A8Linear
from .rotate import input_rotation_modules, input_rotation_of, online_rotation_modules, online_rotation_targets
from .trace import mark

__all__ = ["storage_state", "layer_entries", "header_fields", "tied_duplicates", "file_sha256", "source_paths",
           "in_scope", "plan_fields", "tensor_digests", "CheckpointWriter",
           "check_writer_args"]

def tied_duplicates(state: dict) -> dict[str, str]:
    """key -> the earlier key sharing its storage (tied weights are stored once)."""
    seen, tied = {}, {}
    for k, t in state.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen and t.numel():
            tied[k] = seen[ptr]
        else:
            seen[ptr] = k
    return tied


def in_scope(name: str, prefix=None, skip=()) -> bool:
    """Whether the key or module path ``name`` lies under ``prefix`` (a path, or a tuple of paths: under one
    of them; None: anywhere) and under none of the paths of ``skip`` (a path is under itself)."""
    under = (lambda p: name == p or name.startswith(f"{p}."))  # noqa: E731
    inside = prefix is None or (under(prefix) if isinstance(prefix, str) else any(under(p) for p in prefix))
    return inside and not any(under(p) for p in skip)


def _named_modules(model, prefix: str | None, skip):
    mods = model.named_modules() if prefix is None else model.get_submodule(prefix).named_modules(prefix=prefix)
    return ((n, m) for n, m in mods if in_scope(n, None, skip))


def plan_fields(gp) -> dict:
    """The informative fields a layer entry takes from its linear's group in the plan (``plan.by_linear()``)."""
    return {"group": gp.group, "layer": gp.layer, "v": gp.v, "band": gp.band.value, "v_after": gp.v_after,
            "fold": gp.fold, "fallback": gp.fallback}


def layer_entries(model, plan, prefix: str | None = None, skip=()) -> dict:
    """name -> header entry of every W4A8 layer of ``model`` (under ``prefix``, outside ``skip``:
    :func:`in_scope`)."""
    by_linear = plan.by_linear() if plan is not None else {}
    out = {}
    for name, m in _named_modules(model, prefix, skip):
        if not isinstance(m, W4A8Linear):
            continue
        if m.qweight.device.type == "meta":
            raise CheckpointError(f"layer {name} is on the meta device (released before being written): its "
                                  "entry cannot be stored")
        e = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
             "group_size": m.group_size, "weight_format": m.weight_format.value, "policy": m.policy.value,
             "act_scale": None if m.act_scale is None else float(m.act_scale.item())}
        if name in by_linear:
            e.update(plan_fields(by_linear[name]))
        out[name] = e
    return out


def source_paths(model) -> list[str]:
    """The local directory the float model was loaded from, if transformers recorded one."""
    src = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    return [src] if src and os.path.exists(src) else []


def same_tensor(a, b) -> bool:
    """``torch.equal(a, b)``, without reading them when they are views of the same memory (the rotations a
    model's modules share: a [14336, 14336] ``Q_f`` compared per layer would cost a pass over 822 MB)."""
    if (a.device, a.dtype, a.shape, a.stride()) == (b.device, b.dtype, b.shape, b.stride()) and \
            a.data_ptr() == b.data_ptr():
        return True
    return torch.equal(a, b)


def _shared_rotation(by_path: dict, who: str, differ: str, name: str, checked: dict | None = None):
    """The one float32 rotation every module of ``by_path`` (path -> tensor, sorted) holds, contiguous on the
    CPU; a CheckpointError when two differ or it is not finite float32 (a checkpoint stores it once).
    ``checked`` (a writer's): ``name`` -> (tensor, its version counter) found finite float32 before; the same
    tensor object, not changed in place since, is not read again (a streamed run's layers share one ``Q_f``:
    822 MB per layer on an 8B model)."""
    paths = list(by_path)
    src = by_path[paths[0]]
    q = src.detach().cpu()
    for p in paths[1:]:
        if not same_tensor(by_path[p].detach().cpu(), q):
            raise CheckpointError(f"{who} {paths[0]} and {p} {differ}; a checkpoint stores one {name} for all "
                                  "of them")
    seen = None if checked is None else checked.get(name)
    if seen is None or seen[0] is not src or seen[1] != src._version:
        if q.dtype != torch.float32 or not all_finite(q):
            raise CheckpointError(f"{paths[0]}: its rotation {name} must be finite float32, got {q.dtype}")
        if checked is not None:
            checked[name] = (src, src._version)
    return q.contiguous()


def _unwrap_rotations(model, sd: dict, prefix=None, skip=(), checked=None):
    """(state dict, online rotation paths, Q): each :class:`~fptq.models.rotate.RotateOutput` at ``P``
    (:func:`in_scope`) stored as the plain norm it wraps (``P.norm.x`` -> ``P.x``, ``P.rotation`` dropped)
    and its ``Q`` once (float32, as the model holds it); ``Q`` None when there are none. All must share
    one ``Q``."""
    rot = {p: m for p, m in online_rotation_modules(model).items() if in_scope(p, prefix, skip)}
    if not rot:
        return sd, [], None
    bad = sorted(set(rot) - set(online_rotation_targets(model)))
    if bad:
        raise CheckpointError(f"RotateOutput modules {bad[:3]} are not norms of this model's decoder layers; a "
                              "checkpoint stores online rotations of those norms only")
    paths = sorted(rot)
    q = _shared_rotation({p: rot[p].rotation for p in paths}, "RotateOutput modules", "hold different rotations",
                         "Q", checked)
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


def _input_rotations(model, layers: dict, prefix=None, skip=(), checked=None):
    """(paths, Q_f): the W4A8 layers with an input rotation (:func:`in_scope`) and their one shared float32
    ``Q_f`` (None when there are none)."""
    mods = {p: m for p, m in input_rotation_modules(model).items() if in_scope(p, prefix, skip)}
    if not mods:
        return [], None
    stray = sorted(set(mods) - set(layers))
    if stray:
        raise CheckpointError(f"modules {stray[:3]} rotate their input but are not W4A8 layers; a checkpoint "
                              "stores input rotations of quantized layers only")
    paths = sorted(mods)
    q = _shared_rotation({p: input_rotation_of(mods[p]) for p in paths}, "layers",
                         "rotate their inputs by different matrices", "Q_f", checked)
    return paths, q


def _scoped_state(model, prefix, skip) -> dict:
    """The state dict entries of ``model`` under ``prefix`` and outside ``skip`` (:func:`in_scope`); a
    tensor among them on the meta device (never materialized, or released) is a CheckpointError."""
    if isinstance(prefix, str):
        sd = model.get_submodule(prefix).state_dict(prefix=f"{prefix}.")
    else:
        sd = model.state_dict()
    sd = {k: v for k, v in sd.items() if in_scope(k, None if isinstance(prefix, str) else prefix, skip)}
    lost = [k for k, v in sd.items() if v.device.type == "meta"]
    if lost:
        raise CheckpointError(f"tensors {lost[:4]} are on the meta device (not materialized, or released before "
                              "being written): nothing of them can be stored")
    return sd


def storage_state(model, layers: dict, float_dtype: str, int8_embeddings: bool, prefix=None, skip=(),
                  checked: dict | None = None):
    """(state to write, tied, int8_rows, online rotation paths, input rotation paths): the model's state dict
    with tied tensors
    dropped, the embedding / lm_head replaced by INT8 rows when asked, run-time rotated norms as
    their norms plus one float32 ``Q`` (:func:`_unwrap_rotations`), and every other float matrix (a float32
    tensor of 2 or more dimensions outside the W4A8 layers) converted to ``float_dtype``.

    ``prefix`` / ``skip``: only the keys under ``prefix`` (one decoder layer, or a tuple of module paths) and
    under none of ``skip`` (layers already stored), :func:`in_scope`; ``layers`` holds the entries of that
    scope; INT8 rows only of the embedding / lm_head in scope. Ties are found within the scope. ``checked``:
    see :func:`_shared_rotation`."""
    sd, online, q = _unwrap_rotations(model, _scoped_state(model, prefix, skip), prefix, skip, checked)
    rows = {n: k for n, k in int8_row_targets(model).items() if in_scope(n, prefix, skip)} if int8_embeddings else {}
    if rows:
        try:
            mods = int8_row_modules(model, rows)
        except ValueError as e:
            raise CheckpointError(f"int8_embeddings: {e}") from None
        sd = {k: v for k, v in sd.items() if not any(k.startswith(f"{n}.") for n in rows)}
        for n, m in mods.items():
            sd.update({f"{n}.{k}": v for k, v in m.state_dict().items()})
    tied = tied_duplicates(sd)  # on the model's own tensors, before any conversion makes copies
    keep = {f"{n}.{x}" for n in layers for x in LAYER_SUFFIXES} | {f"{n}.{x}" for n in rows for x in INT8_ROW_SUFFIXES}
    dt = getattr(torch, float_dtype)
    state = {}
    for k, v in sd.items():
        if k in tied:
            continue
        v = v.detach().cpu()
        if k not in keep and v.dtype == torch.float32 and v.dim() >= 2 and dt != torch.float32:
            v = v.to(dt)
            if not all_finite(v):
                big = float(sd[k].detach().abs().max())
                raise CheckpointError(f"float_dtype={float_dtype!r}: tensor {k} has values beyond {float_dtype}'s "
                                      f"range (max |x| = {big:.4g}); store the float parts as bfloat16 or float32")
        state[k] = v.contiguous()
    if q is not None:
        state[ONLINE_ROTATION_TENSOR] = q  # float32 whatever float_dtype says: Q stays orthogonal
    inputs, q_in = _input_rotations(model, layers, prefix, skip, checked)
    if q_in is not None:
        state[INPUT_ROTATION_TENSOR] = q_in
    return state, tied, rows, online, inputs



def tensor_digests(state: dict) -> dict[str, str]:
    """name -> SHA-256 hex of the tensor's stored bytes (metadata key ``tensor_sha256``)."""
    return {k: hashlib.sha256(raw_bytes(t)).hexdigest() for k, t in state.items()}


def header_fields(model, layers: dict, digests: dict, tied: dict, rows: dict, online: list, inputs: list,
                  float_dtype: str, config, info) -> dict:
    """The header's metadata strings (all but ``file_sha256`` and ``header_sha256``, which need the
    written files); ``digests``: :func:`tensor_digests` of every stored tensor."""
    gsizes = {e["group_size"] for e in layers.values() if e["group_size"] < e["in_features"]}
    fmts = {e["weight_format"] for e in layers.values()}
    return {
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
        "tensor_sha256": json.dumps(digests, sort_keys=True),
    }


def check_writer_args(float_dtype: str, int8_embeddings: bool, shard_bytes: int) -> None:
    """ValueError naming the argument unless ``float_dtype`` is a key of :data:`FLOAT_DTYPES`,
    ``int8_embeddings`` a bool and ``shard_bytes`` an integer >= 1."""
    if float_dtype not in FLOAT_DTYPES:
        raise ValueError(f"float_dtype must be one of {sorted(FLOAT_DTYPES)}, got {float_dtype!r}")
    if type(int8_embeddings) is not bool:
        raise ValueError(f"int8_embeddings must be True or False, got {int8_embeddings!r}")
    if type(shard_bytes) is not int or shard_bytes < 1:
        raise ValueError(f"shard_bytes must be an integer >= 1, got {shard_bytes!r}")


class CheckpointWriter:
    """Writes one checkpoint into ``tmp_dir`` (the temporary directory of
    :func:`fptq.models.checkpoint.open_writer`, which makes it atomic), a decoder layer at a time.

    :meth:`add_layer` stores one layer that has just been quantized: its tensors converted as
    :func:`storage_state` does, its entries and digests taken at once (the caller may release the layer to
    the meta device afterwards; the tensors must not be changed in place), buffered; when a layer would
    take the buffer past ``shard_bytes``, the buffer is first written as a shard
    (:mod:`fptq.models.checkpoint_shards`): a shard holds at most ``shard_bytes`` of tensors unless one
    layer alone holds more, and so does the buffer.
    :meth:`finish` stores everything else (on the whole-model path every layer too, a layer at a time under
    the same rule), then the side files and the tensors file with the metadata. A checkpoint whose layers
    fit in ``shard_bytes`` (no shard written) is one tensors file, format version 5, byte for byte what a
    writer without shards wrote; else version 6 (two shards or more). ``guard(model)``: the destination's checks, run again by :meth:`finish` with
    the model's source directory protected."""

    def __init__(self, tmp_dir, *, float_dtype: str, int8_embeddings: bool, shard_bytes: int, guard=None):
        check_writer_args(float_dtype, int8_embeddings, shard_bytes)
        self.dir, self.float_dtype, self.int8_embeddings = Path(tmp_dir), float_dtype, int8_embeddings
        self.shard_bytes, self._guard = shard_bytes, guard
        self.added: list[str] = []  # layer prefixes stored, in order
        self.shards: dict[str, dict] = {}  # shard file name -> index entry
        self._layers, self._digests, self._tied, self._online, self._inputs = {}, {}, {}, [], []
        self._rotations = {}  # ONLINE_ROTATION_TENSOR / INPUT_ROTATION_TENSOR -> the one shared tensor
        self._checked = {}  # the rotations found finite, not read again (_shared_rotation)
        self._buffer, self._buffered, self.finished = {}, 0, False
        self._deferred, self._spilled = None, {}  # defer(); name -> SpilledTensor of the deferred modules
        self._expected_rotations = {}  # restore(): the shared rotations' digests the interrupted run recorded

    def defer(self, deferred) -> None:
        """Modules of the model :meth:`finish` gets that are left on the meta device for it to read one group
        at a time: ``deferred.groups`` (tuples of module paths; modules sharing a tied parameter in one
        group) and ``deferred.reading(group)``, a context manager holding the group's parameters real
        (:class:`fptq.models.stream.DeferredModules`). Each group is converted as :func:`storage_state`
        does, its digests taken and its stored tensors spilled to a file in the checkpoint's temporary
        directory before the next is read, so one of them is held at a time; the tensors file copies them
        back. The checkpoint is byte for byte the one of a model holding them all."""
        self._check_open()
        self._deferred = deferred

    def add_layer(self, model, prefix: str, plan=None) -> None:
        """Store the decoder layer at ``prefix`` (every state-dict key under ``f"{prefix}."``)."""
        self._check_open()
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"add_layer: prefix must be a module path, got {prefix!r}")
        clash = [p for p in self.added if in_scope(p, prefix) or in_scope(prefix, p)]
        if clash:
            raise ValueError(f"add_layer: {prefix!r} overlaps {clash[0]!r}, already stored")
        try:
            model.get_submodule(prefix)
        except AttributeError:
            raise ValueError(f"add_layer: {prefix!r} is not a module of the model") from None
        layers = layer_entries(model, plan, prefix)
        state, tied, _, online, inputs = storage_state(model, layers, self.float_dtype, False, prefix,
                                                       checked=self._checked)
        self._take(state, layers, tied, online, inputs)
        self._buffer_layer(prefix, state)

    def journal_state(self) -> dict:
        """What a resumable run's journal keeps of this writer (:mod:`fptq.models.journal`), JSON-able: the layers
        added, the shards written, the entries, digests, ties and rotated paths so far, and ``buffered``: the
        added layers still in the shard buffer (their tensors: :meth:`buffered`)."""
        return {"added": list(self.added), "shards": self.shards, "layers": self._layers, "digests": self._digests,
                "tied": self._tied, "online": self._online, "inputs": self._inputs,
                "buffered": [p for p in self.added if any(in_scope(k, p) for k in self._buffer)]}

    def buffered(self, prefix: str) -> dict:
        """The buffered stored tensors of the added layer ``prefix``."""
        return {k: t for k, t in self._buffer.items() if in_scope(k, prefix)}

    def restore(self, state: dict, buffer: dict) -> None:
        """Continue an interrupted run's writer (in its directory, with its shards): its :meth:`journal_state`
        and the tensors of its buffered layers. The shared rotations are taken again from the next layer added
        and must have the digests recorded (a CheckpointError otherwise)."""
        self._check_open()
        if self.added or self._buffer:
            raise CheckpointError("restore: this writer has stored layers already")
        self.added, self.shards = list(state["added"]), dict(state["shards"])
        self._layers, self._digests, self._tied = dict(state["layers"]), dict(state["digests"]), dict(state["tied"])
        self._online, self._inputs = list(state["online"]), list(state["inputs"])
        self._buffer = dict(buffer)
        self._buffered = sum(t.numel() * t.element_size() for t in buffer.values())
        self._expected_rotations = {n: self._digests[n] for n in (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR)
                                    if n in self._digests}

    def _check_open(self) -> None:
        if self.finished:
            raise CheckpointError("the checkpoint writer has finished; nothing more can be added")

    def _take(self, state: dict, layers: dict, tied: dict, online: list, inputs: list) -> None:
        """Record a scope's entries and digests; its shared rotations (popped from ``state``) must be the
        ones recorded before."""
        for name in (ONLINE_ROTATION_TENSOR, INPUT_ROTATION_TENSOR):
            q = state.pop(name, None)
            kept = self._rotations.get(name)
            if q is None or kept is q:
                continue
            if kept is None:
                self._rotations[name] = q
                self._digests.update(tensor_digests({name: q}))
                if self._expected_rotations.get(name, self._digests[name]) != self._digests[name]:
                    raise CheckpointError(f"{name}: the rotation differs from the one the interrupted run stored")
            elif not same_tensor(kept, q):
                raise CheckpointError(f"{(online if name == ONLINE_ROTATION_TENSOR else inputs)[0]} holds another "
                                      f"rotation ({name}) than the layers stored before it; a checkpoint stores one")
        again = sorted((set(state) | set(tied)) & (set(self._digests) | set(self._tied)))
        if again:
            raise CheckpointError(f"tensors {again[:4]} are stored twice")
        self._layers.update(layers)
        self._tied.update(tied)
        self._online += online
        self._inputs += inputs
        self._digests.update(tensor_digests(state))

    def _buffer_layer(self, prefix: str, state: dict) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        if self._buffer and self._buffered + nbytes > self.shard_bytes:
            self._flush()
        self.added.append(prefix)
        self._buffer.update(state)
        self._buffered += nbytes

    def _flush(self) -> None:
        name = shard_file_name(len(self.shards) + 1)
        self.shards[name] = write_shard(self.dir / name, self._buffer)
        self._buffer, self._buffered = {}, 0

    def finish(self, model, tokenizer=None, plan=None, config=None, info: dict | None = None) -> None:
        """Store everything :meth:`add_layer` has not (the decoder layers not added, a layer at a time, then
        the rest: embeddings, final norm, lm_head, the shared rotations), the side files (``config.json``,
        the tokenizer, the plan) and the tensors file with the metadata and digests; the groups of
        :meth:`defer` read and stored one at a time. Any other tensor on the meta device outside the added
        layers is a CheckpointError. Arguments as :func:`fptq.models.checkpoint.save_quantized`'s."""
        self._check_open()
        if self._guard is not None:
            self._guard(model)
        skip = tuple(self.added)
        groups = list(self._deferred.groups) if self._deferred is not None else []
        rest = skip + tuple(p for g in groups for p in g)
        layers = layer_entries(model, plan, skip=rest)
        state, tied, rows, online, inputs = storage_state(model, layers, self.float_dtype, self.int8_embeddings,
                                                          skip=rest, checked=self._checked)
        self._take(state, layers, tied, online, inputs)
        mark("write: stored")
        if not self._layers:
            raise CheckpointError("the model has no quantized (W4A8Linear) layers to save")
        for group in groups:
            rows.update(self._store_deferred(model, group, skip))
        by_linear = plan.by_linear() if plan is not None else {}
        for name, e in self._layers.items():  # the final plan's view of the layers added before it was whole
            if name in by_linear:
                e.update(plan_fields(by_linear[name]))
        for prefix in _layer_prefixes(model, skip):
            self._buffer_layer(prefix, {k: state.pop(k) for k in [k for k in state if in_scope(k, prefix)]})
        if self.shards and self._buffer:
            self._flush()
        main = {**(state if self.shards else {**self._buffer, **state}), **self._spilled, **self._rotations}
        version = SHARDED_FORMAT_VERSION if self.shards else FORMAT_VERSION
        meta = header_fields(model, self._layers, self._digests, self._tied, rows, sorted(self._online),
                             sorted(self._inputs), self.float_dtype, config, info)
        meta["format_version"] = str(version)
        if self.shards:
            meta[SHARDS_KEY] = json.dumps(self.shards, sort_keys=True)
        self._write_side_files(model, tokenizer, plan, config, info, version)
        meta["file_sha256"] = json.dumps({f.name: file_sha256(f) for f in sorted(self.dir.iterdir())
                                          if f.is_file() and f.name not in self.shards}, sort_keys=True)
        table = {k: (dtype_name(t), tuple(t.shape)) for k, t in main.items()}
        for e in self.shards.values():
            table.update({k: (dt, tuple(shape)) for k, (dt, shape) in e["tensors"].items()})
        meta["header_sha256"] = header_digest(meta, table)
        write_tensor_file(self.dir / TENSORS_FILE, main, meta)
        remove_spilled(self._spilled)
        self._buffer, self._spilled, self.finished = {}, {}, True
        mark("write: finish")

    def _store_deferred(self, model, group: tuple, skip: tuple) -> dict:
        """Read one group of :meth:`defer`, take its entries and digests, spill its stored tensors (files in
        :data:`~fptq.models.checkpoint_shards.SPILL_DIR` of the temporary directory) and release it; returns
        its INT8 rows (``int8_rows`` of the header)."""
        with self._deferred.reading(group):
            state, tied, rows, online, inputs = storage_state(model, {}, self.float_dtype, self.int8_embeddings,
                                                              prefix=tuple(group), skip=skip, checked=self._checked)
            self._take(state, {}, tied, online, inputs)
            for name in sorted(state):
                self._spilled[name] = spill_tensor(self.dir, name, state.pop(name), self._digests[name])
        mark(f"write: {', '.join(group)}")
        return rows

    def _write_side_files(self, model, tokenizer, plan, config, info, version: int) -> None:
        model.config.save_pretrained(self.dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.dir)
        doc = {"format": FORMAT_NAME, "format_version": version, "info": info or {},
               "quant_config": config.to_json() if config is not None else None,
               "plan": plan.to_json() if plan is not None else None}
        (self.dir / PLAN_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _layer_prefixes(model, skip) -> list[str]:
    """The paths of the model's decoder layers not under ``skip``, in order ([] when it has no stack)."""
    try:
        path, layers, _ = find_decoder_layers(model)
    except UnsupportedArchitecture:
        return []
    pre = f"{path}." if path else ""
    return [f"{pre}{i}" for i in range(len(layers)) if in_scope(f"{pre}{i}", None, skip)]
