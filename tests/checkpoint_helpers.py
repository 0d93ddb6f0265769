"""Helpers for the checkpoint tests: a tiny quantized checkpoint, and rewriting one as a
corrupter (digests left stale) or as a hostile writer (digests recomputed) would."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch

from fptq.io.tensorfile import TensorFile, dtype_name, raw_bytes, write_tensor_file
from fptq.models.checkpoint import TENSORS_FILE, save_quantized
from fptq.models.checkpoint_meta import header_digest
from fptq.models.qlinear import W4A8Linear
from fptq.models.quantize import QuantConfig, quantize_model
from fptq.reference import fake_quant_weight_int8_per_channel
from fptq.testing import tiny_model, tiny_tokenizer

IDS = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))


def quantized(family="llama", fmt="int4_sym", group_size=24):
    """A quantized tiny model (group 24 over K = 64 and 96: ragged last groups) and its config; unrotated,
    so that every format version can hold it (the online rotation's storage: tests/test_models_gptq_rotate.py)."""
    cfg = QuantConfig(group_size=group_size, weight_format=fmt, rotate="none")
    return quantize_model(tiny_model(family), IDS, cfg, backend="numpy", progress=False), cfg


def as_stored(model, float_dtype="bfloat16", int8_embeddings=False):
    """A copy of a quantized ``model`` as its checkpoint holds it, made in memory: the input
    embedding and lm_head replaced by their dequantized INT8 rows
    (``fptq.reference.fake_quant_weight_int8_per_channel``) when ``int8_embeddings``, every other
    float32 matrix (2 or more dimensions) of the state dict outside the W4A8 layers rounded to
    ``float_dtype`` and back; norms and biases (1-D) unchanged."""
    m = copy.deepcopy(model)
    exact = {f"{n}.{b}" for n, mod in m.named_modules() if isinstance(mod, W4A8Linear)
             for b, _ in mod.named_buffers()}
    rows = {id(mod.weight): mod.weight for mod in (m.get_input_embeddings(), m.get_output_embeddings())}
    with torch.no_grad():
        if int8_embeddings:
            for w in rows.values():  # a tied weight once
                w.copy_(torch.from_numpy(fake_quant_weight_int8_per_channel(w.numpy())))
        dt = getattr(torch, float_dtype)
        for name, t in m.state_dict(keep_vars=True).items():  # persistent tensors only (not rotary inv_freq)
            if name in exact or t.dtype != torch.float32 or t.dim() < 2 or (int8_embeddings and id(t) in rows):
                continue
            t.copy_(t.to(dt).to(torch.float32))
    return m


def stored_logits(model, float_dtype="bfloat16", int8_embeddings=False, ids=IDS):
    """Logits of :func:`as_stored` on ``ids``: what the checkpoint of ``model`` must load to."""
    with torch.no_grad():
        return as_stored(model, float_dtype, int8_embeddings)(ids).logits


def save_tiny(d, family="llama", fmt="int4_sym", info=None):
    """Quantize and save a tiny model to ``d`` (default storage: bfloat16 float parts); returns
    (dir, reference logits = :func:`stored_logits`, QuantResult)."""
    res, cfg = quantized(family, fmt)
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, info if info is not None else {"model_name": "tiny"})
    return Path(d), stored_logits(res.model), res


def rewrite(src, dst, edit_meta=None, edit_tensors=None, edit_files=None, redigest=True):
    """Copy checkpoint ``src`` to ``dst`` with edited metadata (dict of str), tensors (dict of torch
    tensors) or files (``edit_files(dst)``). ``redigest``: recompute every digest afterwards (a
    hostile but careful writer); ``"header"``: only the header digest; False: the digests stay as
    they were (corruption)."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    with TensorFile(src / TENSORS_FILE) as f:
        meta = dict(f.metadata)
        tensors = {k: f.tensor(k) for k in f.names}
    if edit_files:
        edit_files(dst)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    if redigest == "header" and "header_sha256" in meta:
        meta["header_sha256"] = header_digest(meta, {k: (dtype_name(t), tuple(t.shape)) for k, t in tensors.items()})
    elif redigest and "header_sha256" in meta:
        meta["tensor_sha256"] = json.dumps({k: hashlib.sha256(raw_bytes(t)).hexdigest() for k, t in tensors.items()},
                                           sort_keys=True)
        files = json.loads(meta["file_sha256"])
        meta["file_sha256"] = json.dumps({n: hashlib.sha256((dst / n).read_bytes()).hexdigest() for n in files
                                          if (dst / n).exists()}, sort_keys=True)
        meta["header_sha256"] = header_digest(meta, {k: (dtype_name(t), tuple(t.shape)) for k, t in tensors.items()})
    write_tensor_file(dst / TENSORS_FILE, tensors, meta)
    return dst


def edit_layers(fn):
    """An ``edit_meta`` that applies ``fn(layers_dict)`` to the parsed ``layers`` field."""
    def edit(m):
        layers = json.loads(m["layers"])
        fn(layers)
        m["layers"] = json.dumps(layers, sort_keys=True)
    return edit
