"""Writing a W4A8 checkpoint: the state to store and its header (used by
:func:`fptq.models.checkpoint.save_quantized`; ``docs/checkpoint.md`` is the format).

The model's state dict with tied tensors dropped, the embedding / lm_head as INT8 rows when
asked, run-time rotated norms stored as their norms plus one float32 ``Q``, and every other
float matrix converted to ``float_dtype``; the per-layer entries and the header fields.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__ as FPTQ_VERSION
from .. import spec
from ..io.reading import file_sha256
from ..io.tensorfile import raw_bytes
from ._torch import torch
from .checkpoint_meta import (
    FLOAT_DTYPES, FORMAT_NAME, FORMAT_VERSION, INPUT_ROTATION_TENSOR, INT8_ROW_SUFFIXES, LAYER_SUFFIXES,
    ONLINE_ROTATION_TENSOR, CheckpointError,
)
from .int8rows import int8_row_modules, int8_row_targets
from .qlinear import W4A8Linear
from .rotate import input_rotation_modules, input_rotation_of, online_rotation_modules, online_rotation_targets

__all__ = ["storage_state", "layer_entries", "header_fields", "tied_duplicates", "file_sha256", "source_paths"]

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


def layer_entries(model, plan) -> dict:
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


def source_paths(model) -> list[str]:
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


def storage_state(model, layers: dict, float_dtype: str, int8_embeddings: bool):
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



def header_fields(model, layers: dict, state: dict, tied: dict, rows: dict, online: list, inputs: list,
                  float_dtype: str, config, info) -> dict:
    """The header's metadata strings (all but ``file_sha256`` and ``header_sha256``, which need the
    written files)."""
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
        "tensor_sha256": json.dumps({k: hashlib.sha256(raw_bytes(t)).hexdigest() for k, t in state.items()},
                                    sort_keys=True),
    }
