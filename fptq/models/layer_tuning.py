"""Layer-wise scale tuning: each decoder layer's INT4 group scales trained right after it is quantized.

The layer-by-layer variant of :mod:`fptq.models.scale_tuning` (EfficientQAT's Block-AP restricted to the
scales, as OmniQuant trains its parameters block by block). Inside the calibration loop
(:func:`fptq.models.calibrate.calibrate`, its ``tune_layer`` hook), once ``on_layer`` has replaced decoder layer
``i``'s linears by :class:`~fptq.models.qlinear.W4A8Linear` modules (fake-quant mode) and before the layer's
outputs for the next layer are computed or handed on (``after_layer``: a streamed run writes the layer there, a
resumable run's journal records it), the layer's group scales ``s = s0 * exp(d)`` are trained to minimise::

    L_b = mean over the elements of (y_b - t_b)^2     (float32)

``y_b``: the quantized layer's output on batch ``b`` of the current stream's inputs (``cap.hidden[b]``: the float
model's by default, the quantized stream's with ``sequential`` or GPTAQ) with the captured arguments of that
batch; ``t_b``: the float layer's output: by default the observe pass's (the float layer on the same float
inputs, which are also the next layer's inputs), with GPTAQ the float stream's (the float layer on the float
model's inputs), with plain ``sequential`` the observe pass's (the float layer on the quantized inputs).

Everything of the end-to-end tuning that is not about its loss is shared, one definition each:
:class:`~fptq.models.scale_tuning.TunedLinear` (``W^ = s[:, g(k)] * (q - z)``, the STE on the INT8 activation
rounding), :func:`~fptq.models.scale_tuning.tunable_scales` and :func:`~fptq.models.scale_tuning.write_scales`,
Adam on ``d`` with the clamp ``|d| <= ln 4`` after every step (:func:`~fptq.models.scale_tuning.optimizer_step`)
and the seeded order (:func:`~fptq.models.scale_tuning.sample_order`), here over the calibration batches,
cycling. One Adam step per batch, ``steps`` per layer, a fresh optimizer for every layer; codes, zero points and
every other tensor unchanged. Memory: the layer's inputs are kept until its tuning ends (the default pass would
drop each batch once used), its integer parts ``(q - z)`` as float32 and the activations autograd keeps for one
batch through one layer: the memory model's ``layer: tune`` step (:func:`fptq.models.memory_shape.tune_components`:
``tune_inputs``, ``tune_integer``, ``tune_scales``, ``tune_autograd``, ``tune_backward``). CPU only (no ``device``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ._torch import torch
from .config import QuantConfig
from .layer_pass import _layer_output
from .qlinear import quantized_linears
from .scale_tuning import (TuningReport, log_step_optimizer, optimizer_step, sample_order, tunable_scales,
                           write_scales)

__all__ = ["LayerTuningReport", "LayerTuner", "layer_tuner", "tune_layer", "layer_mse", "summarize"]


@dataclass(kw_only=True)
class LayerTuningReport(TuningReport):
    """What :func:`tune_layer` did to decoder layer ``layer`` (module path ``prefix``): ``loss_before`` /
    ``loss_after``: :func:`layer_mse` of the first calibration batch before and after (the layer's own modules in
    fake-quant mode), ``losses`` the MSE of each step's batch (before that step), ``seconds`` its wall time."""

    layer: int
    prefix: str

    def summary(self) -> str:
        return (f"layer tuning {self.prefix}: {self.steps} steps (lr {self.lr:g}) on {self.scales} scales of "
                f"{self.linears} linears in {self.seconds:.1f} s; MSE on the first batch {self.loss_before:.4g} -> "
                f"{self.loss_after:.4g}")


def summarize(reports: list) -> str:
    """One line for a run's :class:`LayerTuningReport` s (those of the layers run in this process)."""
    if not reports:
        return "layer tuning: no layer tuned in this run"
    better = sum(r.loss_after < r.loss_before for r in reports)
    ratio = sum(r.loss_after / r.loss_before for r in reports if r.loss_before) / len(reports)
    return (f"layer tuning: {len(reports)} layers, {reports[0].steps} steps each (lr {reports[0].lr:g}) in "
            f"{sum(r.seconds for r in reports):.1f} s; first-batch MSE lower on {better} of {len(reports)} layers, "
            f"after/before {ratio:.3f} on average")


def _output(layer, cap, i: int, b: int):
    """Decoder layer ``i``'s output (float32) on captured batch ``b`` (as :func:`fptq.models.layer_pass.run_layer`
    calls it), with gradients where enabled."""
    return _layer_output(layer(cap.hidden[b], *cap.args[b][i], **cap.kwargs[b][i])).to(torch.float32)


def _mse(y, target):
    return torch.mean((y - target.to(torch.float32)) ** 2)


def layer_mse(layer, cap, i: int, target, b: int = 0) -> float:
    """The mean squared error of layer ``i``'s output on batch ``b`` to ``target`` (its modules as they are now),
    no gradient; the layers' fake-quant weight copies made for it are released."""
    with torch.no_grad():
        loss = float(_mse(_output(layer, cap, i, b), target))
    for m in quantized_linears(layer).values():
        m.release_cache()
    return loss


def tune_layer(layer, cap, i: int, targets: list, steps: int, lr: float, seed: int) -> LayerTuningReport | None:
    """Train decoder layer ``i``'s W4A8 group scales toward ``targets`` (per batch, as ``cap.hidden``) by
    ``steps`` Adam steps, one per batch in seeded order (module docstring); the scales written into each
    ``wscale``. None (nothing done) for a layer without W4A8 linears."""
    if not quantized_linears(layer):
        return None
    t0, report = time.time(), LayerTuningReport(steps, float(lr), layer=i, prefix="")
    report.loss_before = layer_mse(layer, cap, i, targets[0])
    order = sample_order(len(cap.hidden), steps, seed)
    with torch.enable_grad(), tunable_scales(layer) as tuned:
        params, optimizer = log_step_optimizer(tuned, lr)
        report.linears, report.scales = len(params), sum(p.numel() for p in params)
        for b in order:
            report.losses.append(optimizer_step(lambda: _mse(_output(layer, cap, i, b), targets[b]), optimizer,
                                                params))
        write_scales(tuned)
    report.loss_after = layer_mse(layer, cap, i, targets[0])
    report.seconds = time.time() - t0
    return report


class LayerTuner:
    """The ``tune_layer`` hook of :func:`fptq.models.calibrate.calibrate`: :func:`tune_layer` of each layer it is
    handed, its reports kept in ``reports`` (and printed as they come with ``progress``)."""

    def __init__(self, steps: int, lr: float, seed: int, progress: bool = False):
        self.steps, self.lr, self.seed, self.progress = steps, lr, seed, progress
        self.reports: list[LayerTuningReport] = []

    def __call__(self, i: int, prefix: str, layer, cap, targets: list) -> None:
        report = tune_layer(layer, cap, i, targets, self.steps, self.lr, self.seed)
        if report is None:
            return
        report.prefix = prefix
        self.reports.append(report)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(report.summary(), file=sys.stderr)


def layer_tuner(config: QuantConfig, device=None, make_linear=None, progress: bool = False) -> LayerTuner | None:
    """The :class:`LayerTuner` of ``config.tune_layers_steps`` (None when 0); refused (ValueError) with a
    calibration ``device`` (the tuning runs on the host) or a ``make_linear`` (it tunes W4A8Linear scales, which
    ``fptq compare``'s attribution rows replace afterwards)."""
    if not config.tune_layers_steps:
        return None
    if device is not None:
        raise ValueError("tune_layers_steps (--tune-layers) trains the scales on the host: it cannot be used with a "
                         "calibration device (--device cuda); use --device cpu")
    if make_linear is not None:
        raise ValueError("tune_layers_steps tunes the W4A8Linear scales; it cannot be used with make_linear")
    return LayerTuner(config.tune_layers_steps, config.tune_layers_lr, config.seed, progress)
