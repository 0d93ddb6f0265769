"""Rotate a float transformers model's linear inputs and value heads (the math: :mod:`fptq.reference.rotation`).

:func:`rotate_model` changes the model in place so that it computes the same
logits (up to float32 rounding) while the quantized linears read rotated
inputs. Two modes (``mode``):

``"online"`` (fptq's default since 2026-11-30; any norm kind, OPT's LayerNorm too):
    the residual stream keeps its basis; each pre-norm's output (after its own
    gain and bias) is rotated at run time by one float32 ``Q`` =
    :func:`fptq.reference.rotation.random_orthogonal` (:class:`RotateOutput`,
    one ``[d, d]`` float matmul per token and norm) and the linears that read
    it (q/k/v, gate/up) get ``W Q``; likewise the down projection's input
    (QuaRot's R4) by one ``Q_f`` ``[f, f]`` of the MLP width
    (:func:`attach_input_rotation`: a buffer and a forward pre-hook on the
    linear, carried over to the W4A8 module that replaces it) with
    ``W_down Q_f``. The norm gains stay out of the weights:
    folding Gemma-3's gains (0..122) into rotated weights ruined its INT4
    weights (docs/results.md), rotating after the gain does not.
``"residual"`` (QuaRot's; RMS-norm models only):
    1. tied embeddings are untied (the input embedding and ``lm_head`` get
       different weights from here on);
    2. every pre-norm's per-channel gain is folded into the linears that read it
       (``rms``: ``w``, then ``w = 1``; Gemma's ``rms_one_plus``: ``1 + w``, then
       ``w = 0``), the final norm's into ``lm_head``;
    3. the residual stream is rotated by ``Q`` (embeddings and the linears that
       write the stream: ``Q^T``-side; q/k/v, gate/up, lm_head: ``Q``-side).
       Gemma 2/3 apply *post*-norms to the attention and MLP outputs before
       adding them to the stream; a per-channel gain does not commute with
       ``Q``, so there o_proj/down_proj keep their output basis and the
       post-norm's output is rotated at run time (:class:`RotateOutput`).
       LayerNorm models (OPT) subtract the mean, which a rotation of the stream
       does not preserve: they are refused.

In both modes, with ``heads=True``, every value head is rotated by one ``Q_h``
folded into v_proj's rows and o_proj's columns.

All :class:`RotateOutput` modules of a model share one float32 ``Q`` tensor. A
W4A8 checkpoint stores that ``Q`` once (float32, exact) and the wrapped
modules' paths (metadata ``online_rotations``, ``docs/checkpoint.md``); the
loader wraps the same modules again (:func:`wrap_online_rotations`).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field

import numpy as np

from ..reference import rotation as R
from ._torch import nn, torch
from .arch import UnsupportedArchitecture, arch_of_model, find_decoder_layers, get_submodule
from .config import ROTATIONS

__all__ = ["POST_NORMS", "INPUT_ROTATION", "RotateOutput", "RotationReport", "rotate_model", "LayerRotation",
           "plan_rotation", "rotate_globals", "rotate_layer", "online_rotation_targets",
           "online_rotation_modules", "wrap_online_rotations", "attach_input_rotation", "input_rotation_of",
           "input_rotation_modules", "carry_input_rotation", "factor_tensors", "factors_of"]

#: post-norms (applied to a sub-block's output before the residual add), by attribute name
POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
#: the (non-persistent) buffer of a linear whose input is rotated at run time (:func:`attach_input_rotation`)
INPUT_ROTATION = "fptq_input_rotation"


class RotateOutput(nn.Module):
    """``norm(x) @ Q``: a norm whose output is rotated at run time (a pre-norm in ``"online"`` mode, a
    Gemma post-norm into the rotated residual stream's basis in ``"residual"`` mode).

    ``q``: a float32 ``[d, d]`` tensor or array; a float32 C-contiguous one is shared, not copied
    (every norm of a model holds the same ``Q``). ``factors``: ``(signs, r)`` float32 tensors of ``Q``
    as a randomized Hadamard matrix (:func:`factor_tensors`): the product is then computed in
    a few small Hadamard blocks (:func:`fptq.reference.rotation.apply_hadamard_factors`) instead of as a dense matmul."""

    def __init__(self, norm: nn.Module, q, factors=None) -> None:
        super().__init__()
        self.norm = norm
        if not isinstance(q, torch.Tensor):
            q = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        self.register_buffer("rotation", q.to(torch.float32))
        _register_factors(self, "rotation", factors)

    def forward(self, x):
        return _times_rotation(self.norm(x), self, "rotation")


@dataclass
class RotationReport:
    """What :func:`rotate_model` did."""

    family: str
    hidden: int
    head_dim: int | None
    seed: int
    mode: str = "residual"
    untied: bool = False
    #: full module paths (``model.layers.0.input_layernorm``) of the norms wrapped in
    #: :class:`RotateOutput`
    online_norms: list[str] = field(default_factory=list)
    #: full module paths of the linears whose input is rotated at run time (:func:`attach_input_rotation`)
    input_rotations: list[str] = field(default_factory=list)


def _get(module, name: str) -> np.ndarray:
    """``module.<name>`` as a float32 NumPy array."""
    return getattr(module, name).detach().cpu().numpy().astype(np.float32)


def _set(param, value: np.ndarray) -> None:
    param.data = torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype)


def _norm_gain(norm, kind: str) -> np.ndarray:
    w = _get(norm, "weight")
    if kind == "rms":
        return w
    if kind == "rms_one_plus":
        return (w.astype(np.float64) + 1.0).astype(np.float32)
    raise UnsupportedArchitecture(f"rotation needs RMS norms; {kind} subtracts the mean, which a rotation does not keep")


def _reset_norm(norm, kind: str) -> None:
    norm.weight.data.fill_(1.0 if kind == "rms" else 0.0)


def _fold_norm(norm, kind: str, linears) -> None:
    gain = _norm_gain(norm, kind)
    for lin in linears:
        _set(lin.weight, R.fold_norm_weight(_get(lin, "weight"), gain))
    _reset_norm(norm, kind)


def _rotate_reader(lin, q) -> None:
    _set(lin.weight, R.rotate_input_side(_get(lin, "weight"), q))


def _rotate_reader_factored(lin, factors) -> None:
    """``W Q`` through ``Q``'s Hadamard factors (:func:`fptq.reference.rotation.rotate_input_side_factored`)."""
    _set(lin.weight, R.rotate_input_side_factored(_get(lin, "weight"), factors))


def _rotate_writer(lin, q) -> None:
    b = None if lin.bias is None else _get(lin, "bias")
    w2, b2 = R.rotate_output_side(_get(lin, "weight"), q, b)
    _set(lin.weight, w2)
    if b2 is not None:
        _set(lin.bias, b2)


def _final_norm(model):
    norm = getattr(model.base_model, "norm", None)
    if norm is None:
        raise UnsupportedArchitecture(f"{type(model).__name__}: no final norm at base_model.norm")
    return norm


def _head_dim(config) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def _post_norms(arch, layer) -> list[str]:
    return [n for n in POST_NORMS if n != arch.mlp_norm and get_submodule(layer, n) is not None]


def online_rotation_targets(model) -> list[str]:
    """Full module paths of the norms :func:`rotate_model` may wrap in :class:`RotateOutput` (every
    layer's pre-norms, and its post-norms where the family has them), whether or not they are
    wrapped now."""
    arch = arch_of_model(model)
    path, layers, _ = find_decoder_layers(model)
    prefix = f"{path}." if path else ""
    return [f"{prefix}{i}.{n}" for i, layer in enumerate(layers)
            for n in [arch.attn_norm, arch.mlp_norm] + _post_norms(arch, layer)]


def online_rotation_modules(model) -> dict[str, RotateOutput]:
    """path -> :class:`RotateOutput` module, for every one in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RotateOutput)}


def wrap_online_rotations(model, paths, q, factors=None) -> None:
    """Wrap each module of ``paths`` (norms, :func:`online_rotation_targets`) in
    ``RotateOutput(module, q)``, all sharing one float32 ``q``; raises ValueError naming a path that
    is not such a norm, or a ``q`` that is not ``[d, d]``."""
    targets = set(online_rotation_targets(model))
    q = torch.as_tensor(q).to(torch.float32).contiguous()
    for p in paths:
        if p not in targets:
            raise ValueError(f"{p!r} is not a norm of this {arch_of_model(model).family} model that can rotate "
                             f"its output (norms: {sorted(targets)[:4]}{'...' if len(targets) > 4 else ''})")
        parent_path, _, attr = p.rpartition(".")
        parent = model.get_submodule(parent_path)
        norm = getattr(parent, attr)
        if isinstance(norm, RotateOutput):
            raise ValueError(f"{p!r} is already wrapped in RotateOutput")
        d = norm.weight.shape[-1]
        if tuple(q.shape) != (d, d):
            raise ValueError(f"rotation of shape {list(q.shape)} for {p!r}, whose width is {d} (needs [{d}, {d}])")
        setattr(parent, attr, RotateOutput(norm, q, factors))


def factor_tensors(q) -> tuple | None:
    """``(signs, r)`` float32 tensors of the float32 rotation ``q`` (a tensor) if it is a randomized
    Hadamard matrix (:func:`fptq.reference.rotation.hadamard_factors_of`, read from ``q`` itself), else
    None. The model that rotate_model makes and the one a checkpoint loads both derive them from the same
    stored ``q``, so both compute the same fast product bit for bit; any other ``q`` is used densely."""
    f = R.hadamard_factors_of(q.detach().cpu().numpy())
    if f is None:
        return None
    return (torch.from_numpy(np.ascontiguousarray(f.signs, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(f.r, dtype=np.float32)))


def _register_factors(module, name: str, factors) -> None:
    if factors is not None:
        module.register_buffer(f"{name}_signs", factors[0], persistent=False)
        module.register_buffer(f"{name}_r", factors[1], persistent=False)


def factors_of(module, name: str):
    """``(signs, r)`` registered on ``module`` for its rotation buffer ``name``, or None."""
    signs = getattr(module, f"{name}_signs", None)
    return None if signs is None else (signs, getattr(module, f"{name}_r"))


@functools.lru_cache(maxsize=None)
def _blocks(p2: int, dtype, device) -> tuple:
    """:func:`fptq.reference.rotation.hadamard_blocks` of ``p2`` as torch tensors (made once per dtype and device)."""
    return tuple(torch.from_numpy(h).to(dtype=dtype, device=device) for h in R.hadamard_blocks(p2))


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _times_rotation(x, module, name: str):
    """``x @ Q`` for ``module``'s rotation buffer ``name``: fast when its factors are registered.

    A float32/float64 CPU tensor outside autograd is rotated by NumPy on views of it (no copies in or
    out): torch's batched matmuls start its thread pool even for a decoded token's tiny products, and
    its threads then compete with the numba kernels' for the cores (SmolLM2-135M decode, 2 threads:
    19 tok/s that way, 37 with NumPy, 44 without any rotation; ``/tmp`` experiment of 2026-11-30,
    end to end in docs/benchmarks.md). Other devices and dtypes use torch."""
    f = factors_of(module, name)
    if f is None:
        return x @ getattr(module, name).to(x.dtype)
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES and not x.requires_grad:
        y = R.apply_hadamard_factors(x.numpy(), f[0].numpy(), f[1].numpy())
        return torch.from_numpy(np.ascontiguousarray(y))
    signs, r = f[0].to(x.dtype), f[1].to(x.dtype)
    return R.apply_hadamard_factors(x, signs, r, _blocks(signs.shape[0] // r.shape[0], x.dtype, x.device))


def _rotate_input(module, args):
    """Forward pre-hook: the linear's input times its :data:`INPUT_ROTATION` buffer."""
    return (_times_rotation(args[0], module, INPUT_ROTATION),) + tuple(args[1:])


def attach_input_rotation(module, q, factors=None) -> None:
    """Make ``module`` (a linear of K inputs, float or W4A8) compute on ``x @ q`` instead of ``x``:
    ``q`` (float32 ``[K, K]`` tensor, shared, not copied) becomes its non-persistent buffer
    :data:`INPUT_ROTATION` and a forward pre-hook multiplies every input by it, so calibration hooks and
    the quantized forward both see the rotated input. Its weight must already be ``W q``. ``factors``:
    see :class:`RotateOutput`."""
    if input_rotation_of(module) is not None:
        raise ValueError(f"{type(module).__name__} already has an input rotation")
    k = module.in_features
    if tuple(q.shape) != (k, k):
        raise ValueError(f"input rotation of shape {list(q.shape)} for a linear of {k} inputs (needs [{k}, {k}])")
    module.register_buffer(INPUT_ROTATION, q, persistent=False)
    _register_factors(module, INPUT_ROTATION, factors)
    module.register_forward_pre_hook(_rotate_input)


def input_rotation_of(module):
    """The input rotation :func:`attach_input_rotation` gave ``module``, or None."""
    return getattr(module, INPUT_ROTATION, None)


def carry_input_rotation(old, new):
    """``new`` (the module replacing ``old``) gets ``old``'s input rotation, if any; returns ``new``."""
    q = input_rotation_of(old)
    if q is not None:
        attach_input_rotation(new, q, factors_of(old, INPUT_ROTATION))
    return new


def input_rotation_modules(model) -> dict:
    """path -> module, for every module of ``model`` with an input rotation."""
    return {n: m for n, m in model.named_modules() if input_rotation_of(m) is not None}


def _rotate_heads(layer, arch, qh) -> None:
    sub = lambda path: get_submodule(layer, path)  # noqa: E731
    v, o = sub(arch.v), sub(arch.o)
    w2, b2 = R.rotate_head_rows(_get(v, "weight"), qh, None if v.bias is None else _get(v, "bias"))
    _set(v.weight, w2)
    if b2 is not None:
        _set(v.bias, b2)
    _set(o.weight, R.rotate_head_columns(_get(o, "weight"), qh))


def _check_mode(mode: str) -> None:
    if mode not in ROTATIONS[:2]:
        raise ValueError(f"rotation mode must be one of {ROTATIONS[:2]}, got {mode!r}")


def rotate_model(model, mode: str = "online", seed: int = 0, heads: bool = True,
                 allow_online: bool = True) -> RotationReport:
    """Rotate ``model`` in place (``mode``: ``"online"`` or ``"residual"``, see the module docstring);
    returns a :class:`RotationReport`.

    ``allow_online=False`` refuses (before changing anything) a rotation that would need
    :class:`RotateOutput` modules (run-time float matmuls): ``"online"`` always, ``"residual"`` on
    families with post-norms. The same as :func:`plan_rotation`, :func:`rotate_globals` and
    :func:`rotate_layer` on every decoder layer (what a streamed run does one layer at a time)."""
    rot = plan_rotation(model, mode, seed, heads, allow_online)
    rotate_globals(model, rot)
    _, layers, _ = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        rotate_layer(rot, i, layer)
    return rot.report


@dataclass
class LayerRotation:
    """The rotations of one model, made once by :func:`plan_rotation` from its shapes alone (no weight is
    read, so a model whose parameters are still on the meta device can be planned) and applied by
    :func:`rotate_globals` and, one decoder layer at a time, :func:`rotate_layer`."""

    mode: str
    arch: object
    prefix: str                 # the decoder layers' path + "." ("model.layers.")
    q: np.ndarray               # float64 [d, d]
    qh: np.ndarray | None       # float64 [hd, hd] (value heads) or None
    online: tuple               # (float32 tensor Q shared by every RotateOutput, its Hadamard factors)
    f_online: tuple | None      # (float32 tensor Q_f, its factors) or None
    report: RotationReport
    #: ``"online"``: the Hadamard factors of ``q`` and of ``Q_f`` (:class:`fptq.reference.rotation.HadamardFactors`):
    #: each layer's readers get ``W Q`` through them, never a dense float64 ``[f, f]`` (an 8B model's is 1.6 GB)
    factors: tuple | None = None


def plan_rotation(model, mode: str = "online", seed: int = 0, heads: bool = True,
                  allow_online: bool = True) -> LayerRotation:
    """The checks and matrices of :func:`rotate_model` (see there), without changing ``model``."""
    _check_mode(mode)
    arch = arch_of_model(model)
    layers_path, layers, _ = find_decoder_layers(model)
    if mode == "residual" and arch.norm_kind not in ("rms", "rms_one_plus"):
        raise UnsupportedArchitecture(
            f"{arch.family}: a residual rotation needs RMS norms; {arch.norm_kind} subtracts the mean, which "
            "a rotation of the stream does not keep (the 'online' rotation works)")
    if not allow_online and (mode == "online" or _post_norms(arch, layers[0])):
        raise UnsupportedArchitecture(
            f"{arch.family}: the {mode} rotation needs run-time rotations of norm outputs (RotateOutput), "
            "which allow_online=False refuses")
    d = model.get_input_embeddings().weight.shape[1]
    hd = _head_dim(model.config) if heads else None
    f_q = R.hadamard_factors(d, seed)
    q = f_q.dense()   # = R.random_orthogonal(d, seed)
    q_online = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))  # one tensor for every RotateOutput
    f_online = factors = None
    if mode == "online":   # the down projection's input rotation Q_f (seed + 2), made once from its factors
        f_down = R.hadamard_factors(get_submodule(layers[0], arch.down).weight.shape[1], seed + 2)
        q_f_online = torch.from_numpy(np.ascontiguousarray(f_down.dense(), dtype=np.float32))
        f_online, factors = (q_f_online, factor_tensors(q_f_online)), (f_q, f_down)
    return LayerRotation(mode, arch, f"{layers_path}." if layers_path else "", q,
                         R.random_orthogonal(hd, seed + 1) if heads else None, (q_online, factor_tensors(q_online)),
                         f_online, RotationReport(arch.family, d, hd, seed, mode), factors)


def rotate_globals(model, rot: LayerRotation) -> None:
    """The part of the rotation outside the decoder layers: in ``"residual"`` mode the embeddings, the final
    norm and ``lm_head`` (steps 1-3 of the module docstring); nothing in ``"online"`` mode."""
    if rot.mode == "residual":
        with torch.no_grad():
            _rotate_stream_globals(model, rot.arch, rot.q, rot.report)


def rotate_layer(rot: LayerRotation, i: int, layer) -> None:
    """Rotate decoder layer ``i`` (its weights real, not meta) in place as :func:`rotate_model` does."""
    arch, prefix, report = rot.arch, rot.prefix, rot.report
    with torch.no_grad():
        if rot.mode == "residual":
            _rotate_stream_layer(arch, layer, f"{prefix}{i}", rot.q, rot.online, report)
        else:
            f_q, f_down = rot.factors
            for lin in [get_submodule(layer, p) for p in arch.group_linears("qkv") + arch.group_linears("gate_up")]:
                _rotate_reader_factored(lin, f_q)
            down = get_submodule(layer, arch.down)
            _rotate_reader_factored(down, f_down)
            attach_input_rotation(down, *rot.f_online)
            report.input_rotations.append(f"{prefix}{i}.{arch.down}")
            for n in (arch.attn_norm, arch.mlp_norm):
                parent_path, _, attr = n.rpartition(".")
                parent = get_submodule(layer, parent_path) if parent_path else layer
                setattr(parent, attr, RotateOutput(getattr(parent, attr), *rot.online))
                report.online_norms.append(f"{prefix}{i}.{n}")
        if rot.qh is not None:
            _rotate_heads(layer, arch, rot.qh)


def _rotate_stream_globals(model, arch, q, report) -> None:
    """The ``"residual"`` mode's steps 1-3 outside the decoder layers (module docstring)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        report.untied = True
    _fold_norm(_final_norm(model), arch.norm_kind, [head])
    _rotate_reader(head, q)
    _set(emb.weight, R.rotate_input_side(_get(emb, "weight"), q))   # E' = E Q (rows are tokens)


def _rotate_stream_layer(arch, layer, path: str, q, online, report) -> None:
    """The ``"residual"`` mode's step 2-3 in one decoder layer (``path``: its module path), before its value heads."""
    sub = lambda p: get_submodule(layer, p)  # noqa: E731
    readers = [sub(p) for p in arch.group_linears("qkv") + arch.group_linears("gate_up")]
    _fold_norm(sub(arch.attn_norm), arch.norm_kind, [sub(p) for p in arch.group_linears("qkv")])
    _fold_norm(sub(arch.mlp_norm), arch.norm_kind, [sub(p) for p in arch.group_linears("gate_up")])
    for lin in readers:
        _rotate_reader(lin, q)
    posts = _post_norms(arch, layer)
    if posts:
        for n in posts:
            setattr(layer, n, RotateOutput(get_submodule(layer, n), *online))
            report.online_norms.append(f"{path}.{n}")
    else:
        _rotate_writer(sub(arch.o), q)
        _rotate_writer(sub(arch.down), q)
