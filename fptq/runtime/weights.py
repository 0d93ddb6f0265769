"""A loaded W4A8 model's tensors in the runtime's layout (:class:`RuntimeWeights`).

Read from the model :func:`fptq.models.checkpoint.load_quantized` returns (so every check of the
checkpoint has already run): per decoder layer its seven W4A8 linears re-laid out once into the
numba backend's VNNI blocks (:mod:`fptq.runtime.linears`; with ``hand_over`` released from the model as
taken) and stacked on a leading layer axis, the norm gains (``1 + w`` for Gemma, computed by torch
as its norms do), the run-time rotations (the shared ``Q`` of :class:`fptq.models.rotate.RotateOutput`
and ``Q_f`` of the down projections' inputs, as Hadamard factors when stored so), the embedding and
lm_head (float32, INT8 rows, or bfloat16 bits: read in place from a model that keeps them bfloat16),
and what the attention needs (scaling, windows, softcaps, RoPE tables from the model's own rotary module).

:class:`RuntimeUnsupported` says why a model cannot run here (a family outside
:data:`fptq.runtime.family.FAMILIES`, a linear left float, a group size the blocked kernel does not
take, ...); the caller then uses the transformers path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..backends.numba_kernels import blocked
from ..models._torch import torch
from ..models.arch import UnsupportedArchitecture, arch_of_model, find_decoder_layers, get_submodule
from ..models.int8rows import Int8Embedding, Int8LMHead
from ..models.rotate import INPUT_ROTATION, POST_NORMS, RotateOutput, factors_of, input_rotation_of
from . import decode, ops
from .family import family_of
from .head import HEAD_BF16, HEAD_F32, HEAD_INT8, HEAD_INT8_FLOAT
from .linears import (LINEAR_SLOTS, RuntimeUnsupported, check_slots, give_back_freed, linear_paths, stack_linears,
                      stack_slots)

__all__ = ["RuntimeUnsupported", "RuntimeWeights", "LINEAR_SLOTS", "read_weights", "stack_linears"]

@dataclass
class RuntimeWeights:
    """Everything :func:`fptq.runtime.forward.forward` reads, as NumPy arrays (see the module docstring)."""

    family: str
    dims: np.ndarray            # int64 [nh, nkv, hd, act, has_qkn, has_post, threads, par_min, split_min]
    eps: np.float32
    normw: np.ndarray           # float32 [L, 4, H]: attn, mlp, post-attn, post-mlp gains
    qkn: np.ndarray             # float32 [L, 2, hd]
    rotk: np.ndarray            # int64 [L, 5]: rotation kind after those 4 norms and of down's input
    rot_q: tuple
    rot_f: tuple
    window: np.ndarray          # int64 [L] (0: none)
    ropek: np.ndarray           # int64 [L] (-1: no RoPE)
    scaling: np.ndarray         # float32 [L]
    softcap: np.float32
    lins: tuple
    emb: tuple
    embed_scale: np.float32
    use_scale: bool
    final_w: np.ndarray
    head: tuple
    final_cap: np.float32
    rope_fn: object             # positions -> (cos, sin) float32 [R, T, hd]
    n_layers: int
    n_kv: int
    head_dim: int
    vocab: int

    def weight_bytes(self) -> int:
        """Bytes the forward reads per decoded token from weights (linears, head, one embedding row)."""
        lin = sum(a.nbytes for t in self.lins for a in t[:4])
        kind = self.head[0]
        head = self.head[1 + (0 if kind == HEAD_F32 else 1 if kind == HEAD_BF16 else 2)].nbytes
        return int(lin + head + self.head[4].nbytes + self.normw.nbytes)


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


def _gain(norm, plus_one: bool) -> np.ndarray:
    w = norm.weight.detach().float()
    return np.ascontiguousarray(_np(1.0 + w) if plus_one else _np(w), np.float32)


def _unwrap(mod):
    """(the norm, its rotation kind: 0 none, 1 Hadamard factors, 2 dense)."""
    if isinstance(mod, RotateOutput):
        return mod.norm, (1 if factors_of(mod, "rotation") is not None else 2)
    return mod, 0


def _layer_norms(layer, arch, fam, hidden, hd):
    """(gains float32 [4, H], q/k gains [2, hd], rotation kinds [4], eps) of one layer."""
    normw = np.zeros((4, hidden), np.float32)
    qkn = np.ones((2, hd), np.float32)
    kinds = [0, 0, 0, 0]
    posts = [n for n in POST_NORMS if n != arch.mlp_norm] if fam.post_norms else []
    paths = [arch.attn_norm, arch.mlp_norm] + posts
    eps = None
    for i, path in enumerate(paths):
        norm, kinds[i] = _unwrap(get_submodule(layer, path))
        normw[i] = _gain(norm, fam.gain_plus_one)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if fam.qk_norm:
        attn = layer.self_attn
        qkn[0], qkn[1] = _gain(attn.q_norm, fam.gain_plus_one), _gain(attn.k_norm, fam.gain_plus_one)
    return normw, qkn, kinds, eps


def _rotation(model_mod, name: str, width: int) -> tuple:
    """(signs, rs, p2, dense) of a module's rotation buffer ``name`` (placeholders when None)."""
    if model_mod is None:
        kind, signs, rs, p2, dense = ops.rotation_parts(np.eye(width, dtype=np.float32), None)
        return (signs, rs, np.int64(p2), np.zeros((1, 1), np.float32))
    q = _np(getattr(model_mod, name))
    f = factors_of(model_mod, name)
    kind, signs, rs, p2, dense = ops.rotation_parts(q, None if f is None else (_np(f[0]), _np(f[1])))
    return (signs, rs, np.int64(p2), dense)


def _attention_params(layer, cfg, layer_index: int, rope_kinds: list):
    attn = layer.self_attn
    window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(cfg, "sliding_window", None)
    softcap = getattr(attn, "attn_logit_softcapping", None) or 0.0
    rope = -1
    if getattr(attn, "use_rope", True):
        lt = getattr(attn, "layer_type", None) if len(rope_kinds) > 1 else None
        rope = rope_kinds.index(lt) if lt in rope_kinds else 0
    return int(window or 0), rope, np.float32(attn.scaling), float(softcap)


def _rope_fn(model, cfg, hd: int):
    """(positions -> (cos, sin) float32 [R, T, hd]), kinds: the model's own rotary module, one table per
    layer type where it takes one (Gemma-3's local and global bases)."""
    rot = model.base_model.rotary_emb
    takes_type = "layer_type" in inspect.signature(rot.forward).parameters
    kinds = sorted(set(cfg.layer_types)) if takes_type else [None]

    def tables(n: int):
        pos = torch.arange(n).reshape(1, n)
        x = torch.zeros(1, n, hd)
        cs = [rot(x, pos, k) if takes_type else rot(x, pos) for k in kinds]
        cos = np.stack([_np(c[0].reshape(n, -1)).astype(np.float32) for c in cs])
        sin = np.stack([_np(c[1].reshape(n, -1)).astype(np.float32) for c in cs])
        return np.ascontiguousarray(cos), np.ascontiguousarray(sin)

    return tables, kinds


def _bf16_view(t) -> np.ndarray:
    """The bit patterns (uint16, same memory: no copy) of a CPU torch.bfloat16 tensor."""
    return t.detach().contiguous().view(torch.int16).numpy().view(np.uint16)


def _embedding(model, fam, hidden: int):
    """(kind, float32 [V, H], int8 [V, H], scale [V], bf16 bits [V, H]) (:func:`fptq.runtime.forward.embed`):
    a view of the model's rows (float32, INT8 or, as ``load_quantized(keep_bf16=True)`` keeps them, bf16)."""
    emb = model.get_input_embeddings()
    empty_f, empty_q, empty_s = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int8), np.zeros(1, np.float32)
    empty_b = np.zeros((1, 1), np.uint16)
    if isinstance(emb, Int8Embedding):
        t = (np.int64(1), empty_f, _np(emb.qweight), _np(emb.scale), empty_b)
    elif isinstance(emb, torch.nn.Embedding) and emb.weight.dtype == torch.bfloat16:
        t = (np.int64(2), empty_f, empty_q, empty_s, _bf16_view(emb.weight))
    elif isinstance(emb, torch.nn.Embedding):
        t = (np.int64(0), np.ascontiguousarray(_np(emb.weight), np.float32), empty_q, empty_s, empty_b)
    else:
        raise RuntimeUnsupported(f"input embedding {type(emb).__name__} is not an nn.Embedding or INT8 rows")
    return t, np.float32(hidden ** 0.5), fam.scaled_embedding


def _bf16_bits(w: np.ndarray, rows: int = 4096):
    """The bfloat16 bit patterns (uint16 [V, H]) of a float32 matrix whose every value is a bfloat16 value,
    else None; made a block of ``rows`` rows at a time (no full-size temporary beside the result)."""
    bits = w.view(np.uint32)
    out = np.empty(w.shape, np.uint16)
    for r0 in range(0, w.shape[0], rows):
        block = bits[r0:r0 + rows]
        if np.any(block & np.uint32(0xFFFF)):
            return None
        np.right_shift(block, 16, out=out[r0:r0 + rows], casting="unsafe")
    return out


#: ``read_weights``'s ``int8_head`` values (see :func:`_head`)
INT8_HEAD_CHOICES = (None, True, False, "weights")


def _checked_head(model, int8_head):
    """The model's lm_head module if the runtime can run it as ``int8_head`` asks, else ValueError (an
    unknown choice) / :class:`RuntimeUnsupported` (a bias, a module that is neither nn.Linear nor INT8 rows)."""
    if int8_head not in INT8_HEAD_CHOICES:
        raise ValueError(f"int8_head: expected one of {INT8_HEAD_CHOICES}, got {int8_head!r}")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise RuntimeUnsupported("an lm_head with a bias is not supported")
    if not isinstance(head, (Int8LMHead, torch.nn.Linear)):
        raise RuntimeUnsupported(f"lm_head {type(head).__name__} is not an nn.Linear or INT8 rows")
    return head


def _head(model, int8_head: bool | str | None):
    """The lm_head tuple (kind, float32 [V, H], bf16 bits [V, H], int8 [V, H], scale [V]).

    ``int8_head``: None = INT8 rows by integer kernels if the checkpoint stores them, else the float
    matrix (bfloat16 bits when lossless); True = also a float head quantized to INT8 rows here
    (:func:`fptq.reference.quantize_weight_int8_per_channel`, the ``--int8-embeddings`` rule);
    False = INT8 rows computed in float32 (the reference's formula); ``"weights"`` = INT8 rows (the
    checkpoint's, or a float head quantized here as with True) computed in float32 (``HEAD_INT8_FLOAT``:
    one byte read per weight, the activation not quantized)."""
    head = _checked_head(model, int8_head)
    weights_only = int8_head is False or int8_head == "weights"
    ef, eb, eq = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.uint16), np.zeros((1, 1), np.int8)
    if isinstance(head, Int8LMHead):
        kind = HEAD_INT8_FLOAT if weights_only else HEAD_INT8
        return (np.int64(kind), ef, eb, _np(head.qweight), _np(head.scale))
    ones = np.ones(head.weight.shape[0], np.float32)
    if head.weight.dtype == torch.bfloat16 and not int8_head:   # load_quantized(keep_bf16=True): shared
        return (np.int64(HEAD_BF16), ef, _bf16_view(head.weight), eq, ones)
    if int8_head:
        q, s = _int8_rows(head.weight)
        return (np.int64(HEAD_INT8_FLOAT if weights_only else HEAD_INT8), ef, eb, q, s)
    w = np.ascontiguousarray(_np(head.weight.float()), np.float32)
    bits = _bf16_bits(w)
    if bits is not None:
        return (np.int64(HEAD_BF16), ef, bits, eq, ones)
    return (np.int64(HEAD_F32), w, eb, eq, ones)


def _int8_rows(weight, rows: int = 1024):
    """(int8 [V, H], float32 scale [V]) of a float lm_head (any float dtype, e.g. the stored bfloat16) by
    :func:`fptq.reference.quantize_weight_int8_per_channel`, ``rows`` rows at a time: the rule is per row,
    so the result is the whole matrix's, with a float32 copy of one block only beside it."""
    from ..reference import quantize_weight_int8_per_channel

    n, k = weight.shape
    q, s = np.empty((n, k), np.int8), np.empty(n, np.float32)
    for r0 in range(0, n, rows):
        q[r0:r0 + rows], s[r0:r0 + rows] = quantize_weight_int8_per_channel(_np(weight[r0:r0 + rows].float()))
    return q, s


def _check_rotations(model, arch, layers) -> None:
    """Only the down projections' inputs may carry an input rotation."""
    for i, layer in enumerate(layers):
        for path in arch.linears():
            if path != arch.down and input_rotation_of(get_submodule(layer, path)) is not None:
                raise RuntimeUnsupported(f"layer {i} {path}: an input rotation on a linear other than down")


def _model_parts(model):
    """(arch, family entry, config, activation index, decoder layers) of a model the runtime can run."""
    try:
        arch = arch_of_model(model)
    except UnsupportedArchitecture as e:
        raise RuntimeUnsupported(str(e)) from None
    fam = family_of(arch.family)
    if fam is None:
        raise RuntimeUnsupported(f"family {arch.family} is not in the runtime's table")
    cfg = model.config
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, arch.act_attr, None)
    if act not in ops.ACTIVATIONS:
        raise RuntimeUnsupported(f"MLP activation {act!r} is not one of {sorted(ops.ACTIVATIONS)}")
    _, layers, _ = find_decoder_layers(model)
    _check_rotations(model, arch, layers)
    return arch, fam, cfg, ops.ACTIVATIONS[act], layers


def _release_input_rotation(downs) -> None:
    """The down projections' dense ``Q_f`` put on ``meta`` where the runtime runs its Hadamard factors."""
    for d in downs:
        q = input_rotation_of(d)
        if q is not None and not q.is_meta and factors_of(d, INPUT_ROTATION) is not None:
            setattr(d, INPUT_ROTATION, torch.empty_like(q, device="meta"))


def _release_float_head(model, kind: int) -> None:
    """``hand_over``: an untied float lm_head the runtime made INT8 rows of is put on ``meta`` (the model
    keeps no second copy: the 1.5B's bfloat16 head is 467 MB); a head tied to the embedding stays."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if kind not in (HEAD_INT8, HEAD_INT8_FLOAT) or not isinstance(head, torch.nn.Linear) or head.weight.is_meta:
        return
    if getattr(emb, "weight", None) is head.weight:
        return
    head.weight = torch.nn.Parameter(torch.empty_like(head.weight, device="meta"), requires_grad=False)
    give_back_freed()          # its pages and the INT8 rows' temporaries: measured 0.16 GB kept otherwise


def _split_min(split_decode: bool | None) -> int:
    """dims[8]: the multiply-adds from which a decoded token's group of linears runs on two threads."""
    return decode.SPLIT_MIN_MACS if split_decode is None else 0 if split_decode else decode.NEVER


def read_weights(model, threads: int = 1, int8_head: bool | str | None = None, par_min: int | None = None,
                 split_decode: bool | None = None, hand_over: bool = False):
    """:class:`RuntimeWeights` of a loaded W4A8 model (``load_quantized``'s); raises
    :class:`RuntimeUnsupported` naming what the runtime cannot run (before anything is re-laid out).
    ``split_decode``: a decoded token's linears on two threads, one region per group sharing an input
    (:mod:`fptq.runtime.decode`): None from :data:`fptq.runtime.decode.SPLIT_MIN_MACS` multiply-adds per
    group, True always, False never. ``hand_over``: the model gives the runtime what it re-lays out (each W4A8 linear's
    tensors, and a dense ``Q_f`` the runtime runs as Hadamard factors, put on ``meta`` as taken:
    :func:`fptq.runtime.linears.release_linear`); the model's forward then no longer runs."""
    arch, fam, cfg, act, layers = _model_parts(model)
    emb_mod = model.get_input_embeddings()
    hidden = emb_mod.weight.shape[1] if hasattr(emb_mod, "weight") else emb_mod.embedding_dim
    hd = int(layers[0].self_attn.head_dim)
    paths = linear_paths(arch)
    check_slots(layers, paths)
    with torch.inference_mode():
        rope_fn, kinds = _rope_fn(model, cfg, hd)
        norms = [_layer_norms(layer, arch, fam, hidden, hd) for layer in layers]
        attn = [_attention_params(layer, cfg, i, kinds) for i, layer in enumerate(layers)]
        emb, escale, use_scale = _embedding(model, fam, hidden)
        _checked_head(model, int8_head)
        final_norm, fkind = _unwrap(model.base_model.norm)
    if fkind:
        raise RuntimeUnsupported("a rotation on the final norm is not supported")
    softcaps = {a[3] for a in attn}
    if len(softcaps) > 1:
        raise RuntimeUnsupported("layers with different attention softcaps")
    downs = [get_submodule(layer, paths["down"]) for layer in layers]
    rot_src = next((m for m in model.modules() if isinstance(m, RotateOutput)), None)
    rotk = np.array([n[2] + [0 if input_rotation_of(d) is None else
                             (1 if factors_of(d, INPUT_ROTATION) is not None else 2)]
                     for n, d in zip(norms, downs)], np.int64)
    rot_f = _rotation(downs[0] if rotk[0, 4] else None, INPUT_ROTATION, int(downs[0].in_features))
    lins = stack_slots(layers, paths, threads, hand_over)   # every check has passed: releases as it goes
    if hand_over:
        _release_input_rotation(downs)
    with torch.inference_mode():   # after the linears: INT8 rows made with the model's linears already released
        head = _head(model, int8_head)
    if hand_over:
        _release_float_head(model, int(head[0]))
    dims = np.array([cfg.num_attention_heads, cfg.num_key_value_heads, hd, act, int(fam.qk_norm),
                     int(fam.post_norms), threads, blocked.PARALLEL_MIN_MACS if par_min is None else par_min,
                     _split_min(split_decode)], np.int64)
    return RuntimeWeights(
        arch.family, dims, np.float32(norms[0][3]), np.ascontiguousarray(np.stack([n[0] for n in norms])),
        np.ascontiguousarray(np.stack([n[1] for n in norms])), rotk, _rotation(rot_src, "rotation", hidden),
        rot_f, np.array([a[0] for a in attn], np.int64), np.array([a[1] for a in attn], np.int64),
        np.array([a[2] for a in attn], np.float32), np.float32(softcaps.pop()), lins, emb, escale, use_scale,
        _gain(final_norm, fam.gain_plus_one), head, np.float32(getattr(cfg, "final_logit_softcapping", None) or 0.0),
        rope_fn, len(layers), cfg.num_key_value_heads, hd, int(head[4].shape[0]))
