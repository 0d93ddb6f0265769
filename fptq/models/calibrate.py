"""Layer-by-layer calibration: per-channel amax of every linear input.

Memory is bounded by one decoder layer plus the calibration activations:

1. **capture**: every decoder layer's ``forward`` is swapped, for one pass of
   the base model per batch, for a recorder that stores the positional and
   keyword arguments it receives (attention mask, ``position_embeddings``,
   position ids... which differ per layer type in Gemma2/3 and Qwen's sliding
   layers) and passes ``hidden_states`` through unchanged; the last layer
   stops the pass. Layer 0's ``hidden_states`` are the embeddings.
2. **per layer**, in order: forward hooks (``functools.partial(name=...)``,
   removed in ``finally``) on each ``nn.Linear`` of the layer hand its input to
   :class:`fptq.reference.CalibrationStats`, which keeps
   ``m_j = max |x[..., j]|`` over every calibration token; the layer's outputs
   become the next layer's inputs. An optional ``on_layer`` callback sees the
   layer and its statistics before the next layer runs (it may quantize the
   layer in place); with ``sequential=True`` the next layer is fed the
   outputs of the layer *after* the callback (GPTQ's sequential mode).

Held-out samples (``holdout``): the last ``holdout`` calibration samples are
also kept apart, so that a choice made from the statistics can be judged on
rows that did not make them: ``LayerSamples.fit_max`` are the channel maxima
of the other samples, ``LayerSamples.heldout`` rows of the held-out ones
(the returned statistics still cover every sample).

Each pass over a layer is :func:`fptq.models.layer_pass.run_layer` (the hooks, the rows, the held-out
samples); this module orders the passes.

Non-finite values are reported with the module's name: a NaN/Inf weight
before the layer runs, a NaN/Inf activation at a linear's input as it runs.
"""

from __future__ import annotations

import functools

import numpy as np

from ..defaults import CALIB_BATCH_SIZE
from ..reference import CalibrationStats, NonFiniteError
from .arch import find_decoder_layers
from .layer_pass import BatchPosition, CapturedInputs, LayerSamples, RowStride, release_freed_memory, run_layer
from .trace import mark

__all__ = ["NonFiniteError", "CapturedInputs", "LayerSamples", "capture_layer_inputs", "calibrate", "iter_batches"]


class _StopForward(Exception):
    pass


def iter_batches(input_ids, batch_size: int):
    """Split [n, L] token ids into batches of at most ``batch_size`` rows."""
    for i in range(0, input_ids.shape[0], batch_size):
        yield input_ids[i:i + batch_size]


def _recorder(hidden_states, *args, index, n_layers, store, **kwargs):
    store["args"][index] = args
    store["kwargs"][index] = kwargs
    if index == 0:
        store["hidden"] = hidden_states
    if index == n_layers - 1:
        raise _StopForward
    return hidden_states


def capture_layer_inputs(model, input_ids, batch_size: int = CALIB_BATCH_SIZE) -> CapturedInputs:
    """Run the embeddings (not the layers) and record every decoder layer's arguments.

    Args:
        model: a transformers causal LM in eval mode. input_ids: LongTensor [n, L].
    Returns:
        :class:`CapturedInputs` with ``len(hidden) == ceil(n / batch_size)``.
    """
    import torch

    path, layers, _ = find_decoder_layers(model)
    base = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    n = len(layers)
    cap = CapturedInputs()
    try:
        for ids in iter_batches(input_ids, batch_size):
            store = {"args": [None] * n, "kwargs": [None] * n, "hidden": None}
            for i, layer in enumerate(layers):
                layer.forward = functools.partial(_recorder, index=i, n_layers=n, store=store)
            with torch.no_grad():
                try:
                    base(input_ids=ids, use_cache=False)
                except _StopForward:
                    pass
            if store["hidden"] is None or any(a is None for a in store["args"]):
                raise RuntimeError(f"{type(base).__name__} did not call all {n} decoder layers")
            cap.hidden.append(store["hidden"].detach())
            cap.args.append(store["args"])
            cap.kwargs.append(store["kwargs"])
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    mark("capture")
    return cap


def _check_weights(layer, prefix: str) -> None:
    from .finite import all_finite

    for name, p in layer.named_parameters():
        if not all_finite(p):
            raise NonFiniteError(f"weight {prefix}.{name} contains NaN or Inf")


def _check_holdout(holdout: int, n_samples: int, keep_rows: int, sequential_on_device: bool = False) -> int:
    if sequential_on_device:
        raise ValueError("sequential calibration runs the quantized layer, which computes on the host: "
                         "use --device cpu with --sequential")
    if holdout and not 0 < holdout < n_samples:
        raise ValueError(f"holdout must be between 1 and n_samples - 1 = {n_samples - 1}, got {holdout}")
    if holdout and not keep_rows:
        raise ValueError("holdout needs keep_rows > 0 (the held-out rows are kept like the others)")
    return holdout


def _holdout_position(holdout: int, n_samples: int, seq_len: int, rows: int) -> BatchPosition | None:
    """A fresh :class:`BatchPosition` of one layer's pass keeping about ``rows`` held-out rows (None: no holdout)."""
    if not holdout:
        return None
    return BatchPosition(n_fit=n_samples - holdout, fit_stats=CalibrationStats(non_first=False),
                          stride=max(1, -(-holdout * seq_len // int(rows))))


def _kept_samples(samples, pos: BatchPosition | None):
    """One layer's kept rows as a :class:`LayerSamples` of concatenated tensors (None: none kept)."""
    if samples is None:
        return None
    import torch

    kept = LayerSamples(_concatenated(samples))
    kept.heldout = _concatenated(samples.heldout)
    kept.fit_max = pos.fit_stats.channel_maxima() if pos is not None else {}
    return kept


def _concatenated(lists: dict) -> dict:
    """name -> ``torch.cat`` of its list of row blocks; names whose lists hold the same blocks (a shared input)
    share one concatenation."""
    import torch

    done, out = {}, {}
    for name, blocks in lists.items():
        key = tuple(id(b) for b in blocks)
        if key not in done:
            done[key] = torch.cat(blocks)
        out[name] = done[key]
    return out


def _release_caches(layer) -> None:
    for mod in layer.modules():  # e.g. fake-quant weight copies, rebuilt on demand
        if hasattr(mod, "release_cache"):
            mod.release_cache()


def _float_stream(cap: CapturedInputs, float_rows: bool, sequential: bool, keep_rows: int):
    """GPTAQ's float stream (``float_rows``, which needs ``sequential`` and ``keep_rows``): the captured arguments
    with hidden states of their own, layer 0's (the embeddings; a resumed run's: :func:`_resumed`); else None."""
    if not float_rows:
        return None
    if not (sequential and keep_rows):
        raise ValueError("float_rows (asymmetric calibration) needs sequential=True and keep_rows > 0")
    return CapturedInputs(list(cap.hidden), cap.args, cap.kwargs)


def _float_pass(layer, cap: CapturedInputs, i: int, prefix: str, stride: RowStride, device=None):
    """The float layer on the float model's inputs ``cap.hidden`` (consumed; before ``on_layer`` quantizes it):
    ``(outputs, kept rows by module name)``, the rows of the same tokens as the quantized stream's."""
    rows = LayerSamples()
    outs = run_layer(layer, cap, i, hooks_on=prefix, samples=rows, stride=stride, consume=True, device=device)
    mark(f"{prefix}: float pass")
    return outs, _concatenated(rows)


def _rows_again(layer, cap: CapturedInputs, i: int, prefix: str, stride: RowStride, names) -> dict:
    """GPTAQ's quantized-stream rows of the linears ``names`` (full names) once more: the layer as it is now (its
    earlier groups already replaced by their W4A8 modules and its equalization folded) run on the quantized
    stream's inputs ``cap.hidden`` (kept: a sequential pass consumes them only after ``on_layer``), the same
    strided tokens as the first pass and as the float rows; each batch's forward stops once they have all run
    (the o projection's rows need the attention only, gate/up's not the down projection). name -> float32 tensor;
    a name whose input is shared (gate/up) shares one tensor."""
    rows = LayerSamples()
    run_layer(layer, cap, i, hooks_on=prefix, samples=rows, stride=stride, only=set(names), keep_outputs=False,
               stop_early=True)
    mark(f"{prefix}: rows again")
    return _concatenated(rows)


def _resumed(cap: CapturedInputs, resume, stats: dict, float_cap: CapturedInputs | None) -> tuple[int, dict]:
    """``(first layer, statistics dict)``: ``(0, stats)``, or for ``resume`` (a run continued:
    :class:`fptq.models.journal.ResumePoint`) its ``start``, its ``stats`` to fill on, and its inputs of that
    layer instead of the captured ones, with ``float_cap`` (GPTAQ) the float stream's too (``float_hidden``):
    each present and of the calibration batches' shapes, else a ValueError."""
    if resume is None:
        return 0, stats
    if resume.hidden is not None:
        want = [tuple(h.shape) for h in cap.hidden]
        streams = [resume.hidden] if float_cap is None else [resume.hidden, resume.float_hidden]
        if any(s is None or [tuple(h.shape) for h in s] != want for s in streams):
            raise ValueError(f"the inputs of layer {resume.start} to resume from (with GPTAQ: both streams') are "
                             f"missing or not of the calibration batches' shapes {want}")
        cap.hidden, resume.hidden = list(resume.hidden), None   # handed over: each batch is dropped once used
        if float_cap is not None:
            float_cap.hidden, resume.float_hidden = list(resume.float_hidden), None
    return resume.start, resume.stats


def _observe_layer(layer, cap: CapturedInputs, i: int, prefix: str, keep_rows: int, stride: RowStride,
                   pos: BatchPosition | None, consume: bool, device=None, float_cap: CapturedInputs | None = None):
    """One layer's calibration pass: ``(outputs, channel maxima by module name, kept rows or None)``; with
    ``float_cap`` (:func:`_float_stream`) the float layer's pass on it too, its rows in ``kept.float_rows``."""
    _check_weights(layer, prefix)
    layer_stats = CalibrationStats(non_first=False)  # the pipeline plans from channel_max
    samples = LayerSamples() if keep_rows else None
    outs = run_layer(layer, cap, i, hooks_on=prefix, stats=layer_stats, samples=samples, stride=stride, pos=pos,
                      consume=consume, device=device)
    mark(f"{prefix}: forward")
    kept = _kept_samples(samples, pos)
    if kept is not None:
        kept.device = device   # where whoever derives a Hessian from the rows may compute it
    mark(f"{prefix}: rows")
    if float_cap is not None:   # before on_layer quantizes the layer
        float_cap.hidden, kept.float_rows = _float_pass(layer, float_cap, i, prefix, stride, device)
        kept.rows_again = functools.partial(_rows_again, layer, cap, i, prefix, stride)
    return outs, layer_stats.channel_maxima(), kept


def _next_inputs(layer, cap: CapturedInputs, i: int, prefix: str, outs: list, float_cap, sequential: bool,
                 tune_layer) -> list:
    """After ``on_layer`` quantized layer ``i``: ``tune_layer`` (when given) trains it on its inputs ``cap.hidden``
    toward the float layer's outputs (GPTAQ: the float stream's ``float_cap.hidden``; else the observe pass's
    ``outs``: on the same float inputs by default, on the quantized inputs with ``sequential``), then the inputs
    are released; the next layer's inputs: ``outs``, or with ``sequential`` the quantized layer's outputs."""
    if tune_layer is not None:
        tune_layer(i, prefix, layer, cap, outs if float_cap is None else float_cap.hidden)
        if not sequential:
            cap.hidden = [None] * len(cap.hidden)   # nothing runs on them again
    if sequential:
        outs = run_layer(layer, cap, i, consume=True)
        _release_caches(layer)
    return outs


def calibrate(model, input_ids, batch_size: int = CALIB_BATCH_SIZE, progress: bool = True,
              on_layer=None, sequential: bool = False, keep_rows: int = 0, balanced_rows: bool = False,
              holdout: int = 0, holdout_rows: int | None = None, after_layer=None, before_layer=None,
              device=None, resume=None, float_rows: bool = False, tune_layer=None) -> dict[str, np.ndarray]:
    """Per-channel input amax of every linear in the decoder layers, layer by layer.

    Args:
        model: transformers causal LM (float32, eval mode).
        input_ids: LongTensor [n_samples, seq_len].
        batch_size: samples per forward.
        on_layer: optional ``f(index, prefix, layer, layer_stats, layer_samples)`` called after a layer's statistics
            are collected (``layer_stats``: full module name -> float32 ndarray [K]; ``layer_samples``: a
            :class:`LayerSamples`, name -> float32 tensor [~keep_rows, K] of input rows, or None); may change the layer.
        keep_rows: also keep about this many input rows (tokens, evenly strided) of every linear for ``on_layer``;
            which ones: ``balanced_rows`` (:class:`~fptq.models.layer_pass.RowStride`).
        holdout: hold the last ``holdout`` samples out (see the module docstring; needs ``keep_rows``; 0 = none):
            ``layer_samples.heldout`` keeps about ``holdout_rows`` (default ``keep_rows``) of their rows per linear,
            ``layer_samples.fit_max`` the other samples' maxima.
        after_layer: optional ``f(index, prefix, layer, outputs, float_outputs)`` called once the layer's outputs
            for the next layer are computed (after the sequential forward; ``outputs``: their per-batch list, not to
            be changed; ``float_outputs``: the float stream's, or None); it may modify (or release) the layer again.
        before_layer: optional ``f(index, prefix, layer)`` called before the layer first runs (after every
            layer's inputs are captured): it may load the layer's weights or rotate it.
        sequential: feed the next layer the outputs of the layer as left by ``on_layer`` (one more forward).
        device: a ``torch.device`` for the layers' forwards (:mod:`fptq.models.device`); None: the CPU path.
        resume: a :class:`fptq.models.journal.ResumePoint`: start at its layer, on its inputs, filling its ``stats``.
        float_rows: GPTAQ: the float model's stream beside the sequential one (:func:`_float_stream`).
        tune_layer: optional ``f(index, prefix, layer, cap, targets)``, right after ``on_layer`` (:func:`_next_inputs`).
    Returns:
        dict: full module name (``model.layers.3.mlp.down_proj``) -> float32 [K],
        ``m_j = max |x[..., j]|`` over all calibration tokens.
    Raises:
        NonFiniteError naming the weight or activation that holds NaN/Inf.
    """
    from tqdm.auto import tqdm

    n_samples, seq_len = (int(d) for d in input_ids.shape)
    holdout = _check_holdout(int(holdout), n_samples, keep_rows, sequential and device is not None)
    (path, layers, _), stats = find_decoder_layers(model), {}
    cap = capture_layer_inputs(model, input_ids, batch_size)
    float_cap = _float_stream(cap, float_rows, sequential, keep_rows)
    start, stats = _resumed(cap, resume, stats, float_cap)
    stride = RowStride(max(1, -(-int(input_ids.numel()) // keep_rows)) if keep_rows else 1, bool(balanced_rows))
    for i in tqdm(range(start, len(layers)), desc="calibrating layers", disable=not progress, unit="layer"):
        layer, prefix = layers[i], f"{path}.{i}"
        if before_layer is not None:
            before_layer(i, prefix, layer)
        pos = _holdout_position(holdout, n_samples, seq_len, holdout_rows or keep_rows)
        outs, layer_np, samples = _observe_layer(layer, cap, i, prefix, keep_rows, stride, pos,
                                                  not sequential and tune_layer is None, device, float_cap)
        stats.update(layer_np)
        if on_layer is not None:
            on_layer(i, prefix, layer, layer_np, samples)
            outs = _next_inputs(layer, cap, i, prefix, outs, float_cap, sequential, tune_layer)
        if after_layer is not None:
            after_layer(i, prefix, layer, outs, None if float_cap is None else float_cap.hidden)
        cap.hidden = outs
        del outs, samples
        release_freed_memory()
    return stats
