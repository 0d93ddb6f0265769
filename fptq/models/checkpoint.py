"""W4A8 checkpoints: one safetensors file with format metadata, plus config and tokenizer.

Layout (``docs/checkpoint.md`` is the full description another tool can load from)::

    DIR/
      fptq_w4a8.safetensors   every tensor (quantized linears + float parts) + metadata
      config.json             the transformers config of the float model
      tokenizer files         (tokenizer.json, tokenizer_config.json, ...)
      fptq_plan.json          the plan in readable form (informative; the metadata is authoritative)

Writing is atomic (:func:`fptq.models.atomic.atomic_directory`). Loading checks
the format name and version, packing, weight format, group size, every
layer's policy, and every tensor's key, dtype and shape against the model
rebuilt from ``config.json``; it refuses anything it does not understand with
a :class:`CheckpointError` naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__ as FPTQ_VERSION
from .. import spec
from ..spec import ActPolicy, WeightFormat
from ._torch import nn, torch
from .arch import arch_of_model, get_submodule
from .atomic import atomic_directory
from .qlinear import MODES, W4A8Linear
from .quantize import quantized_linears

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "TENSORS_FILE", "PLAN_FILE", "CheckpointError",
           "save_quantized", "load_quantized", "read_metadata", "is_checkpoint"]

FORMAT_NAME = "fptq-w4a8"
FORMAT_VERSION = 1
TENSORS_FILE = "fptq_w4a8.safetensors"
PLAN_FILE = "fptq_plan.json"

#: per-layer tensors: suffix -> (dtype, shape function of (N, K, ng))
_LAYER_TENSORS = {
    "qweight": (torch.uint8, lambda n, k, ng: (n, spec.packed_width(k))),
    "wscale": (torch.float32, lambda n, k, ng: (n, ng)),
    "wzero": (torch.uint8, lambda n, k, ng: (n, ng)),
    "bias": (torch.float32, lambda n, k, ng: (n,)),
    "act_scale": (torch.float32, lambda n, k, ng: (1,)),
}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, of an unknown version, or inconsistent."""


def is_checkpoint(path) -> bool:
    """True when ``path`` is a directory holding an fptq tensors file."""
    return (Path(path) / TENSORS_FILE).is_file()


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
    for name, m in quantized_linears(model).items():
        e = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
             "group_size": m.group_size, "weight_format": m.weight_format.value, "policy": m.policy.value,
             "act_scale": None if m.act_scale is None else float(m.act_scale.item())}
        gp = by_linear.get(name)
        if gp is not None:
            e.update({"group": gp.group, "layer": gp.layer, "v": gp.v, "band": gp.band.value,
                      "v_after": gp.v_after, "fold": gp.fold, "fallback": gp.fallback})
        out[name] = e
    return out


def save_quantized(out_dir, model, tokenizer=None, plan=None, config=None, info: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Write a quantized model to ``out_dir`` atomically.

    Args:
        model: a model whose quantized linears are :class:`W4A8Linear`.
        tokenizer: saved alongside (optional, but needed for a self-contained directory).
        plan: :class:`fptq.models.plan.Plan` (its per-layer v/band/fold are recorded).
        config: :class:`fptq.models.quantize.QuantConfig` (recorded).
        info: extra JSON-able provenance (source model, calibration...).
        overwrite: replace an existing ``out_dir``.
    """
    from safetensors.torch import save_file

    layers = _layer_entries(model, plan)
    if not layers:
        raise CheckpointError("the model has no quantized (W4A8Linear) layers to save")
    gsizes = {e["group_size"] for e in layers.values() if e["group_size"] < e["in_features"]}
    fmts = {e["weight_format"] for e in layers.values()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tied = _tied_duplicates(model.state_dict())
    for k in tied:
        state.pop(k)
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
        "quant_config": json.dumps(config.to_json() if config is not None else None),
        "info": json.dumps(info or {}, sort_keys=True),
    }
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / TENSORS_FILE), metadata=meta)
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": info or {},
               "quant_config": config.to_json() if config is not None else None,
               "plan": plan.to_json() if plan is not None else None}
        (tmp / PLAN_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return Path(out_dir)


def read_metadata(ckpt_dir) -> dict:
    """The checked metadata of a checkpoint (``layers``, ``tied``, ... parsed from JSON)."""
    from safetensors import safe_open

    path = Path(ckpt_dir) / TENSORS_FILE
    if not Path(ckpt_dir).is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {TENSORS_FILE}; not an fptq checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
    except Exception as e:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: unreadable format_version {meta.get('format_version')!r}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is not supported "
                              f"(this fptq {FPTQ_VERSION} reads version {FORMAT_VERSION})")
    if meta.get("packing") != spec.PACKING.value:
        raise CheckpointError(f"{path}: unknown INT4 packing {meta.get('packing')!r} "
                              f"(expected {spec.PACKING.value!r})")
    if meta.get("act_format") != spec.INT8_ACT.name:
        raise CheckpointError(f"{path}: unknown activation format {meta.get('act_format')!r}")
    try:
        meta["layers"] = json.loads(meta["layers"])
        meta["tied"] = json.loads(meta.get("tied", "{}"))
        meta["info"] = json.loads(meta.get("info", "{}"))
        meta["quant_config"] = json.loads(meta.get("quant_config", "null"))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: metadata field unreadable ({e})") from e
    meta["_keys"] = keys
    meta["_path"] = path
    return meta


def _check_layer_entry(name: str, e: dict) -> None:
    try:
        WeightFormat(e["weight_format"])
        ActPolicy(e["policy"])
        k, n, g = int(e["in_features"]), int(e["out_features"]), int(e["group_size"])
        spec.validate.check_group_size(g, k)
        if k < 1 or n < 1:
            raise ValueError("empty layer")
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"layer {name}: unsupported or malformed entry {e} ({err})") from None


def _check_values(name: str, t, suffix: str, entry: dict) -> None:
    if t.dtype == torch.float32 and not torch.isfinite(t).all():
        raise CheckpointError(f"tensor {name} holds NaN/Inf")
    if suffix in ("wscale", "act_scale") and not (t > 0).all():
        raise CheckpointError(f"tensor {name}: scales must be > 0")
    if suffix == "wzero" and t.numel() and int(t.max()) > spec.UINT4_ASYM.qmax:
        raise CheckpointError(f"tensor {name}: zero points must be <= {spec.UINT4_ASYM.qmax}")
    if suffix == "qweight" and int(entry["in_features"]) % 2 and t.numel():
        if int((t[:, -1] >> 4).max()) != 0:
            raise CheckpointError(f"tensor {name}: the padding nibble of odd K must be 0")


def load_quantized(ckpt_dir, backend: str = "torch", mode: str = "integer"):
    """Load a checkpoint written by :func:`save_quantized`.

    Returns:
        ``(model, tokenizer_or_None, metadata)``; the model is float32, eval mode,
        its quantized linears are :class:`W4A8Linear` in ``mode`` on ``backend``.
    Raises:
        CheckpointError: anything missing, corrupt, of another version, or inconsistent.
    """
    import os

    from safetensors import safe_open

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    meta = read_metadata(ckpt_dir)
    d = Path(ckpt_dir)
    try:
        cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{d}: config.json missing or unreadable ({e})") from e
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    arch_of_model(model)
    for name, e in meta["layers"].items():
        _check_layer_entry(name, e)
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        lin = getattr(parent, attr, None)
        if not isinstance(lin, nn.Linear):
            raise CheckpointError(f"layer {name}: no nn.Linear of that name in a {cfg.model_type} model")
        if (lin.in_features, lin.out_features, lin.bias is not None) != (e["in_features"], e["out_features"],
                                                                          e["bias"]):
            raise CheckpointError(f"layer {name}: shape {e['out_features']}x{e['in_features']} (bias={e['bias']}) "
                                  f"does not match the config's {lin.out_features}x{lin.in_features}")
        setattr(parent, attr, W4A8Linear(e["in_features"], e["out_features"], e["bias"], e["group_size"],
                                         e["weight_format"], e["policy"], backend, mode))
    expected = model.state_dict()
    tied = meta["tied"]
    want = set(expected) - set(tied)
    missing, unexpected = sorted(want - meta["_keys"]), sorted(meta["_keys"] - want)
    if missing or unexpected:
        raise CheckpointError(f"{meta['_path']}: tensors do not match the model "
                              f"(missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                              f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''})")
    layer_of = {f"{n}.{s}": (n, s) for n in meta["layers"] for s in _LAYER_TENSORS}
    tensors = {}
    try:
        with safe_open(str(meta["_path"]), framework="pt") as f:
            for k in sorted(want):
                t = f.get_tensor(k)
                ref = expected[k]
                if t.dtype != ref.dtype or tuple(t.shape) != tuple(ref.shape):
                    raise CheckpointError(f"tensor {k}: {t.dtype} {tuple(t.shape)} where the model needs "
                                          f"{ref.dtype} {tuple(ref.shape)}")
                if k in layer_of:
                    _check_values(k, t, layer_of[k][1], meta["layers"][layer_of[k][0]])
                elif t.is_floating_point() and not torch.isfinite(t).all():
                    raise CheckpointError(f"tensor {k} holds NaN/Inf")
                tensors[k] = t
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{meta['_path']}: corrupt or truncated tensor data ({e})") from e
    result = model.load_state_dict(tensors, strict=False)
    if set(result.missing_keys) - set(tied) or result.unexpected_keys:
        raise CheckpointError(f"state dict mismatch: {result}")
    for dup, kept in tied.items():
        if dup not in expected or kept not in expected:
            raise CheckpointError(f"tied entry {dup} -> {kept} names an unknown tensor")
    model.tie_weights()
    sd = model.state_dict()
    for dup, kept in tied.items():
        if sd[dup].data_ptr() != sd[kept].data_ptr():
            raise CheckpointError(f"{dup} should be tied to {kept} but the config does not tie them")
    model.eval()
    tokenizer = None
    if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True)
    return model, tokenizer, meta
