"""One decoder layer run over the calibration batches, with hooks on its linears (what each calibration pass of
:mod:`fptq.models.calibrate` is made of).

:func:`run_layer` runs layer ``i`` on every captured batch (:class:`CapturedInputs`), its forward hooks handing
each hooked linear's input to :class:`fptq.reference.CalibrationStats` (the channel maxima) and strided rows of
it to a :class:`LayerSamples` (rows of an input that several linears read, q/k/v or gate/up, copied once per
batch); held-out samples (:class:`BatchPosition`) are kept apart as ``calibrate`` asks. ``stop_early`` ends each
batch's forward once every hooked linear has run (GPTAQ's reruns). :func:`release_freed_memory` returns freed
heap memory to the OS after each batch.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

from ..heap import trim
from ..reference import CalibrationStats

__all__ = ["CapturedInputs", "LayerSamples", "BatchPosition", "RowStride", "run_layer", "release_freed_memory"]

@dataclass
class CapturedInputs:
    """What each decoder layer receives, per calibration batch.

    ``hidden[b]``: float32 [B, L, H], the current layer's input for batch b
    (starts as layer 0's input). ``args[b][i]`` / ``kwargs[b][i]``: the other
    arguments decoder layer i received for batch b (tensors shared across
    layers are stored once).
    """

    hidden: list = field(default_factory=list)
    args: list = field(default_factory=list)
    kwargs: list = field(default_factory=list)


class LayerSamples(dict):
    """Calibration rows of one decoder layer's linear inputs: full module name -> float32 tensor
    [~keep_rows, K] (evenly strided over every calibration token), plus, when samples are held out:

    * ``heldout``: name -> float32 tensor [~keep_rows, K], rows of the held-out samples only;
    * ``fit_max``: name -> float32 ndarray [K], the channel maxima of the other samples;
    * ``hessians``: a cache for whoever derives one matrix per group input from the rows
      (:func:`fptq.models.quantize.layer_hessian`), freed with the layer's samples.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heldout: dict = {}
        self.fit_max: dict = {}
        self.hessians: dict = {}
        self.batch_rows: dict = {}   # (id(input), kind) -> (input, its kept rows) within one batch
        #: whoever derives a Hessian from a group's rows may drop the rows afterwards (nothing reads them again)
        self.keep_rows_after_hessian = True
        #: the ``torch.device`` the calibration ran on (None: the host); :func:`fptq.models.quantize.layer_hessian`
        #: computes the group Hessians there (:func:`fptq.models.device.device_hessian`)
        self.device = None
        #: ``calibrate(float_rows=True)`` (GPTAQ): name -> float32 tensor, the float model's rows of the same
        #: tokens as this dict's (which are the quantized model's)
        self.float_rows: dict = {}
        #: GPTAQ: ``f(names) -> {name: rows}``, the quantized stream's rows of those linears again from the layer as
        #: quantized so far (:func:`_rows_again`); None otherwise
        self.rows_again = None


@dataclass
class BatchPosition:
    """Where the batch a hook sees lies in the calibration set (set by :func:`run_layer`)."""

    first: int = 0          # index of the batch's first sample
    batch: int = 0          # samples in the batch
    n_fit: int = 0          # samples [0, n_fit) are fit samples, the rest held out
    stride: int = 1         # row stride of the held-out rows kept
    fit_stats: object = None


@dataclass
class RowStride:
    """Which token rows of a batch's linear input are kept (about one in ``step``).

    ``balanced`` False: every ``step``-th row of the batch's flattened ``[B * L, K]`` input, rows 0, step, ...;
    when ``step`` divides the sample length ``L`` these are positions 0, step, 2 step, ... of every sample, so
    the first token of every sample (BOS) is kept, ``step`` times its share of the tokens. ``balanced`` True:
    the rows at positions ``(j mod step) + step * t`` (t = 0, 1, ...) of the batch's samples
    ``j = first, first + 1, ...`` (their index in the calibration set): every position is kept equally often
    over ``step`` consecutive samples, the BOS row of one sample in ``step`` (its share of the tokens), with
    the same count per sample as unbalanced when ``step`` divides ``L``. :func:`run_layer` sets ``first`` and
    ``batch`` before each batch's forward, so every pass over the batches keeps the same tokens."""

    step: int = 1
    balanced: bool = False
    first: int = 0   # index in the calibration set of the batch's first sample (run_layer)
    batch: int = 1   # samples in the batch (run_layer)

    def take(self, x2):
        """The kept rows of ``x2`` [batch * L, K] (a view or a new tensor on ``x2``'s device)."""
        import torch

        if not self.balanced or self.step == 1:
            return x2[::self.step]
        length = int(x2.shape[0]) // self.batch
        idx = [torch.arange(b * length + self.offset(self.first + b), (b + 1) * length, self.step, device=x2.device)
               for b in range(self.batch)]
        return x2.index_select(0, torch.cat(idx))

    def offset(self, j: int) -> int:
        """The first kept position of sample ``j`` (its index in the calibration set) when ``balanced``."""
        return j % self.step


def _mark_batch(first: int, batch: int, *where) -> None:
    """Tell each of ``where`` (a :class:`BatchPosition`, a :class:`RowStride` or None) where the batch about to run
    lies: the index of its first sample in the calibration set and its number of samples."""
    for w in where:
        if w is not None:
            w.first, w.batch = first, batch


def _observed(x, reduce):
    """What a hook hands :meth:`CalibrationStats.observe` for input ``x``: the host float32 array, or with a device
    (``reduce``: :func:`fptq.models.device.channel_max`) its per-channel maxima reduced where ``x`` lives."""
    import torch

    return reduce(x) if reduce is not None else x.to(torch.float32).cpu().numpy()


def _host_rows(x):
    """A float32 copy of rows ``x`` on the host (one copy, wherever ``x`` lives)."""
    import torch

    return x.to("cpu", torch.float32, copy=True)


def _amax_hook(module, inputs, output, *, name, stats: CalibrationStats, samples=None, stride: RowStride | None = None,
               pos=None, reduce=None):
    x = inputs[0].detach()
    x2 = x.reshape(-1, x.shape[-1])
    if stats is not None:   # None: rows only (GPTAQ's float pass)
        stats.observe(name, _observed(x, reduce))
    if samples is not None:
        kept = _shared_rows(samples, inputs[0], "kept", lambda: _host_rows(stride.take(x2)))
        samples.setdefault(name, []).append(kept)
    if pos is not None and pos.fit_stats is not None:
        if x.dim() == 2 and x.shape[0] % pos.batch == 0:
            x = x.reshape(pos.batch, -1, x.shape[-1])  # flattened batch-major (OPT's fc1/fc2: [B * L, K])
        if x.dim() < 3 or int(x.shape[0]) != pos.batch:
            raise ValueError(f"{name}: held-out calibration needs the input as [batch={pos.batch}, tokens, K], "
                             f"got shape {tuple(x.shape)}; pass holdout=0")
        b = pos.batch
        n_fit = min(max(pos.n_fit - pos.first, 0), b)
        if n_fit:
            pos.fit_stats.observe(name, _observed(x[:n_fit], reduce))
        if n_fit < b:
            rows = _shared_rows(samples, inputs[0], "heldout",
                                lambda: _host_rows(x[n_fit:].reshape(-1, x.shape[-1])[::pos.stride]))
            samples.heldout.setdefault(name, []).append(rows)


def _shared_rows(samples, x, kind: str, copy):
    """The rows ``copy()`` makes of input ``x``, made once per batch for every linear reading that same tensor
    (q/k/v, gate/up share their input: one copy instead of three or two). ``samples.batch_rows`` holds ``x``
    itself beside its rows so that its ``id`` cannot be reused within the batch; :func:`run_layer` clears it
    after each batch."""
    key = (id(x), kind)
    if key not in samples.batch_rows:
        samples.batch_rows[key] = (x, copy())
    return samples.batch_rows[key][1]


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (:func:`fptq.heap.trim`: glibc ``malloc_trim``; a no-op elsewhere).

    Each calibration batch and each quantized linear frees tens of MB of float
    temporaries in many sizes; without this, glibc keeps them in fragmented arenas and
    the resident set grows by roughly that much per layer (measured: ~1 GB over
    SmolLM2's 30 layers). Called after every batch of a layer's forward
    (:func:`run_layer`), after every layer, and after every quantized linear
    (:func:`fptq.models.quantize.quantize_model`): with the online rotation's
    per-batch products, trimming once per layer left SmolLM2-135M's default quantize
    at a peak of 3.2-3.7 GB, trimming per batch and per linear at 2.3 GB, for ~8%
    more wall time (benchmarks/bench_quantize.py, 2026-11-30)."""
    trim()


def _layer_output(out):
    return out[0] if isinstance(out, tuple) else out


class _HookedAllRan(Exception):
    """Every hooked linear has seen the batch: the rest of the forward is not needed (``stop_early``)."""


def _stop_hook(module, inputs, output, *, name, waiting: set):
    waiting.discard(name)
    if not waiting:
        raise _HookedAllRan


def run_layer(layer, cap: CapturedInputs, i: int, hooks_on=None, stats=None, samples=None, stride=1,
               pos: BatchPosition | None = None, consume: bool = False, device=None, only=None,
               keep_outputs: bool = True, stop_early: bool = False) -> list:
    """The layer's outputs for every captured batch (hooks on its linears when ``hooks_on``, on those whose
    full names are in ``only`` when given; an empty list with ``keep_outputs=False``); ``consume``:
    each batch's input is dropped once its output is computed (nothing runs the layer on them again).
    ``device``: the forward runs there (:mod:`fptq.models.device`; the outputs stay there); None: where the
    layer is. ``stop_early`` (with ``keep_outputs=False``): each batch's forward ends once every hooked
    linear has seen its input (GPTAQ's reruns for the o projection need the attention only)."""
    import torch
    import torch.nn as nn

    from .device import channel_max, layer_on, to_device

    if stop_early and (keep_outputs or hooks_on is None):
        raise ValueError("stop_early needs keep_outputs=False and hooks (the outputs are not computed)")
    stride = stride if isinstance(stride, RowStride) else RowStride(int(stride))
    handles, hooked = [], []
    reduce = channel_max if device is not None else None
    try:
        if hooks_on is not None:
            for rel, mod in layer.named_modules():
                is_linear = isinstance(mod, nn.Linear) or getattr(mod, "is_fptq_linear", False)
                if is_linear and (only is None or f"{hooks_on}.{rel}" in only):
                    hooked.append((f"{hooks_on}.{rel}", mod))
                    handles.append(mod.register_forward_hook(
                        functools.partial(_amax_hook, name=f"{hooks_on}.{rel}", stats=stats,
                                          samples=samples, stride=stride, pos=pos, reduce=reduce)))
        stops = hooked if stop_early else []   # their stop hooks run after the row hooks
        waiting = set()   # the stopping linears yet to run in this batch
        handles += [mod.register_forward_hook(functools.partial(_stop_hook, name=name, waiting=waiting))
                    for name, mod in stops]
        outs = []
        first = 0
        with torch.no_grad(), (layer_on(layer, device) if device is not None else contextlib.nullcontext()):
            for b in range(len(cap.hidden)):
                h = cap.hidden[b]
                if consume:
                    cap.hidden[b] = None
                _mark_batch(first, int(h.shape[0]), pos, stride)
                args, kwargs = cap.args[b][i], cap.kwargs[b][i]
                if device is not None:
                    h, args, kwargs = to_device((h, args, kwargs), device)
                waiting.update(name for name, _ in stops)
                try:
                    out = _layer_output(layer(h, *args, **kwargs)).detach()
                except _HookedAllRan:
                    out = None
                if keep_outputs:
                    outs.append(out)
                del out
                first += int(h.shape[0])
                del h, args, kwargs
                if samples is not None:
                    samples.batch_rows.clear()
                release_freed_memory()
        return outs
    finally:
        for h in handles:
            h.remove()
