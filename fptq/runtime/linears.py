"""The decoder layers' W4A8 linears in the runtime's layout: one stacked tuple per slot (q, k, v, o, gate,
up, down), each layer's linear re-laid out once into the numba backend's VNNI blocks
(:func:`fptq.backends.numba_kernels.blocked.repack`, the prepared-linear layout).

Every linear is checked first (:func:`check_slots`: W4A8, a group size the blocked kernel takes, the
same shape in every layer), so nothing is re-laid out or handed over for a model the runtime refuses.
Each slot's arrays are allocated once with a leading layer axis and filled a layer at a time (one layer's
blocks as a temporary, never a slot's). With ``hand_over`` the model's packed weights and scales of each
linear are released as soon as they are re-laid out (:func:`release_linear`: its buffers put on the
``meta`` device, shapes kept) and the freed pages returned to the system (:func:`give_back_freed`), so
the runtime's layout never exists beside a whole second copy.
"""

from __future__ import annotations

import numpy as np

from ..backends.numba_kernels import blocked
from ..heap import trim
from ..models._torch import torch
from ..models.arch import get_submodule
from ..models.qlinear import W4A8Linear
from ..spec import ActPolicy, WeightFormat

__all__ = ["LINEAR_SLOTS", "RuntimeUnsupported", "linear_paths", "check_slots", "stack_slots", "stack_linears",
           "prepare_linear", "release_linear", "give_back_freed"]

#: the seven linears of a layer, in :func:`fptq.runtime.forward.layer`'s order (Arch attribute names)
LINEAR_SLOTS = ("q", "k", "v", "o", "gate", "up", "down")

#: the W4A8Linear tensors the runtime re-lays out (released by :func:`release_linear`)
_TAKEN = ("qweight", "wscale", "wzero", "bias", "act_scale")


class RuntimeUnsupported(ValueError):
    """The model cannot run on the runtime (the message says why); use the transformers path."""


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


def linear_paths(arch) -> dict:
    """slot -> the linear's path inside a decoder layer."""
    gate_up = arch.gate_up
    if len(gate_up) != 2:
        raise RuntimeUnsupported(f"{arch.family}: the runtime runs gated MLPs (gate, up) only")
    return dict(zip(LINEAR_SLOTS, (arch.q, arch.k, arch.v, arch.o, gate_up[0], gate_up[1], arch.down)))


def _check_linear(m, name: str) -> tuple:
    if not isinstance(m, W4A8Linear):
        raise RuntimeUnsupported(f"{name} is not a W4A8 linear ({type(m).__name__}): only fully quantized "
                                 "decoder layers run on the runtime")
    if m.qweight.is_meta:
        raise RuntimeUnsupported(f"{name}: its tensors were handed over to a runtime already")
    if not blocked.supported(m.group_size):
        raise RuntimeUnsupported(f"{name}: group size {m.group_size} is not a multiple of {blocked.STEP_K}")
    return (m.in_features, m.out_features, m.group_size, m.weight_format, m.bias is not None)


def check_slots(layers, paths: dict) -> None:
    """Every slot's linear of every layer can run here, with one shape and layout per slot."""
    for s in LINEAR_SLOTS:
        first = None
        for i, layer in enumerate(layers):
            key = _check_linear(get_submodule(layer, paths[s]), f"layer {i} {paths[s]}")
            if first is not None and key != first:
                raise RuntimeUnsupported(f"{paths[s]}: the layers' linears differ in shape or layout")
            first = key


def prepare_linear(m) -> dict:
    """One W4A8Linear in the blocked layout (the numba backend's prepared-linear arrays)."""
    k, g, n = m.in_features, m.group_size, m.out_features
    signed = m.weight_format is WeightFormat.SYMMETRIC
    ng = m.wscale.shape[1]
    zero = np.zeros((n, ng), np.uint8) if m.wzero is None else _np(m.wzero)
    wb, zc = blocked.repack(_np(m.qweight), zero, k, g, signed)
    nblk = wb.shape[0]
    bb = np.zeros(nblk * blocked.LANES, np.float32)
    if m.bias is not None:
        bb[:n] = _np(m.bias)
    dyn = m.policy is ActPolicy.DYNAMIC
    act = np.float32(1.0) if dyn else np.float32(_np(m.act_scale).reshape(-1)[0])
    steps_last = (k - (ng - 1) * g + blocked.STEP_K - 1) // blocked.STEP_K
    return dict(wb=wb, zc=zc, wsb=blocked.block_rows(np.ascontiguousarray(_np(m.wscale)), nblk), bb=bb,
                act=act, dyn=dyn, hasb=m.bias is not None, g=g, steps_last=steps_last, n=n)


def release_linear(m) -> None:
    """Put the tensors of W4A8Linear ``m`` that the runtime re-laid out on ``meta`` (shapes and dtypes
    kept, no memory); its forward can no longer run."""
    m.release_cache()
    for name in _TAKEN:
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and not t.is_meta:
            setattr(m, name, torch.empty_like(t, device="meta"))


def give_back_freed() -> None:
    """Return the C heap's free pages to the system (:func:`fptq.heap.trim`). A released linear's tensors are
    small enough to sit inside the heap, whose freed pages stay resident otherwise: measured on the 1.5B model,
    0.7 GB of released linears kept in RSS."""
    trim()


def _stack(mods, threads: int, hand_over: bool) -> tuple:
    """The forward's tuple ``(wb, zc, wsb, bb, act, dyn, has_bias, g, steps_last, n, panel)`` of one
    slot's linears ``mods`` (one per layer), arrays on a leading layer axis."""
    st, act, dyn, first = {}, [], [], None
    for i, m in enumerate(mods):
        p = prepare_linear(m)
        if hand_over:
            release_linear(m)
            give_back_freed()
        if first is None:
            first = p
            st = {key: np.empty((len(mods),) + p[key].shape, p[key].dtype) for key in ("wb", "zc", "wsb", "bb")}
        for key in st:
            st[key][i] = p[key]
        act.append(p["act"])
        dyn.append(p["dyn"])
    panel = blocked.panel_size(first["wb"].shape[0]) if threads > 1 else 1
    return (st["wb"], st["zc"], st["wsb"], st["bb"], np.array(act, np.float32), np.array(dyn, np.bool_),
            bool(first["hasb"]), np.int64(first["g"]), np.int64(first["steps_last"]), np.int64(first["n"]),
            np.int64(panel))


def stack_slots(layers, paths: dict, threads: int, hand_over: bool = False) -> tuple:
    """The seven slots' stacked tuples (:data:`LINEAR_SLOTS` order) of checked layers (:func:`check_slots`);
    ``hand_over``: each model linear released once re-laid out (:func:`release_linear`)."""
    return tuple(_stack([get_submodule(layer, paths[s]) for layer in layers], threads, hand_over)
                 for s in LINEAR_SLOTS)


def stack_linears(mods, name: str, threads: int) -> tuple:
    """One slot's stacked tuple from its W4A8 linears ``mods`` (checked here; nothing released)."""
    keys = {_check_linear(m, f"{name} [{i}]") for i, m in enumerate(mods)}
    if len(keys) > 1:
        raise RuntimeUnsupported(f"{name}: the layers' linears differ in shape or layout")
    return _stack(list(mods), threads, False)
