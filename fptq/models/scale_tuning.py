"""Scale tuning: the INT4 group scales of a quantized model trained end to end (EfficientQAT's E2E-QP).

After :func:`fptq.models.quantize.quantize_model` every :class:`~fptq.models.qlinear.W4A8Linear` holds fixed
INT4 codes ``q`` (``qweight``), zero points ``z`` (``wzero``, ``uint4_asym`` only) and float32 group scales
``s`` (``wscale`` [N, ng]). This step keeps ``q`` and ``z`` and trains only ``s`` (Chen et al. 2024,
EfficientQAT: "end-to-end training of quantization parameters") so that the quantized model's next-token
distribution matches the float model's on the calibration samples::

    L = 1/T sum_t KL(p_t || p~_t),   KL(p || p~) = sum_v p_v (log p_v - log p~_v)
    p_t = softmax(float model's logits_t),  p~_t = softmax(quantized model's logits_t)   (float32)

over the T tokens of a batch (the teacher's logits computed per batch under ``no_grad``, never stored for
the whole set). While tuning, each W4A8Linear computes::

    W^[n, k] = s[n, g(k)] * (q[n, k] - z[n, g(k)])     (int4_sym: s[n, g(k)] * q[n, k]),  g(k) = k // G
    y = fq(x) W^T + b

``(q - z)`` is :func:`fptq.spec.dequantize_weight` with unit scales (an exact float32 integer) and ``W^`` one
float32 multiply by the expanded scale, the spec's order: at step 0 ``W^`` equals
:meth:`W4A8Linear.dequantize_weight` bit for bit. ``fq`` is the layer's run-time activation rounding
(:func:`fptq.models.qlinear.fake_quant_act`: per-token dynamic INT8, or the static policy's per-tensor scale)
with a straight-through estimator (``d fq(x) / dx = I``) so that gradients reach the earlier layers' scales.

Parametrisation: ``s = s0 * exp(d)`` with ``d`` [N, ng] the trained tensor, started at 0 (``exp(0) = 1``
exactly, so ``s = s0`` bit for bit) and clamped to ``[-ln 4, ln 4]`` after every step: every scale stays
positive and finite and moves by at most 4x. Adam's steps are about ``lr`` in size whatever the gradient's
magnitude, so on ``d`` the learning rate is a *relative* change of each scale per step, the same for every
layer and model although the scales themselves span orders of magnitude (an absolute learning rate on ``s``,
EfficientQAT's, has to be re-tuned per model). Default ``lr = 1e-3``: at most about 0.1% per step, 10% over
100 consistent steps. Everything else is frozen (``requires_grad`` False on every parameter while tuning,
restored afterwards); the modules' forwards are replaced for the time of :func:`tunable_scales` only and
restored exactly, the new scales written into ``wscale`` and each layer's prepared kernel released.
CPU torch only; memory: the integer parts ``(q - z)`` as float32 (the linears' float32 size), one ``W^`` per
linear and the activations autograd keeps for one batch, and the teacher (a float model).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import spec
from ._torch import nn, torch
from .config import QuantConfig
from .qlinear import W4A8Linear, fake_quant_act, quantized_linears

__all__ = ["TuningReport", "ScaleTuningReport", "tune_scales", "tunable_scales", "TunedLinear", "write_scales", "mean_kl",
           "DEFAULT_LR", "MAX_LOG_STEP", "log_step_optimizer", "optimizer_step", "sample_order"]

#: Adam's learning rate on the log-scales (a relative change of about lr per step): QuantConfig's default
DEFAULT_LR = QuantConfig.default("tune_scales_lr")
#: how far a scale may move: ``|ln(s / s0)| <= MAX_LOG_STEP`` (4x)
MAX_LOG_STEP = math.log(4.0)


@dataclass
class TuningReport:
    """What a tuning of group scales did (both tunings' reports): ``steps`` Adam steps at learning rate ``lr`` on
    ``scales`` scales of ``linears`` linears, the loss before and after (each tuning says on what), ``losses``
    each step's batch loss (before that step), ``seconds`` the wall time of it all."""

    steps: int
    lr: float
    linears: int = 0
    scales: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    losses: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass(kw_only=True)
class ScaleTuningReport(TuningReport):
    """What :func:`tune_scales` did: ``loss_before`` / ``loss_after`` are :func:`mean_kl` on the first
    ``measured`` calibration samples (training data, not held out; None when ``measured`` is 0), ``losses``
    the KL of each optimizer step's batch of ``batch`` samples."""

    batch: int = 1
    measured: int = 0

    def summary(self) -> str:
        kl = ("" if self.loss_before is None else
              f"; KL on {self.measured} calibration samples {self.loss_before:.5f} -> {self.loss_after:.5f}")
        return (f"scale tuning: {self.steps} steps (lr {self.lr:g}, batch {self.batch}) on {self.scales} scales of "
                f"{self.linears} linears in {self.seconds:.1f} s{kl}")


class _STE(torch.autograd.Function):
    """``fq(x)`` forward (the layer's run-time INT8 rounding, bit for bit), identity backward."""

    @staticmethod
    def forward(ctx, x, policy, act_scale):
        return fake_quant_act(x.detach(), policy, act_scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class TunedLinear:
    """One W4A8Linear while its scales are tuned: the frozen integer part ``(q - z)`` (float32 [N, K]), the
    start scales ``s0`` and the trained log-step ``d`` (an ``nn.Parameter`` held here, never registered
    on the module)."""

    def __init__(self, module: W4A8Linear):
        self.module = module
        self.s0 = module.wscale.detach().clone()
        signed = module.weight_format is spec.WeightFormat.SYMMETRIC
        q = spec.unpack_int4(module._np(module.qweight), module.in_features, signed=signed)
        zero = module._np(module.wzero)
        unit = np.ones(self.s0.shape, np.float32)   # the spec's (q - z) in float32, exact
        self.integer = torch.from_numpy(spec.dequantize_weight(q, unit, zero, module.group_size,
                                                               module.weight_format))
        self.log_step = nn.Parameter(torch.zeros_like(self.s0))

    def scales(self):
        """``s = s0 * exp(d)`` (float32 [N, ng])."""
        return self.s0 * torch.exp(self.log_step)

    def weight(self):
        """``W^ = s[:, g(k)] * (q - z)`` (float32 [N, K]), the spec's dequantization order."""
        m = self.module
        return self.integer * torch.repeat_interleave(self.scales(), m.group_size, dim=1)[:, :m.in_features]

    def forward(self, x):
        """``fq(x) W^T + b`` for x [..., K] (float32)."""
        m = self.module
        x2 = x.reshape(-1, m.in_features).to(torch.float32)
        y = torch.nn.functional.linear(_STE.apply(x2, m.policy, m.act_scale), self.weight(), m.bias)
        return y.reshape(*x.shape[:-1], m.out_features)


@contextmanager
def tunable_scales(model):
    """``with tunable_scales(model) as tuned:`` name -> :class:`TunedLinear` of every W4A8Linear; inside,
    each computes with its trainable scales (its ``forward`` shadowed by an instance attribute, so its
    forward pre-hooks, e.g. an input rotation, still run) and every parameter of ``model`` is frozen.
    On exit the forwards and ``requires_grad`` flags are restored and each layer's caches released; the
    scales are *not* written (:func:`write_scales`)."""
    linears = quantized_linears(model)
    if not linears:
        raise ValueError("scale tuning needs a quantized model (no W4A8Linear found)")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    tuned = {}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for name, m in linears.items():
            tuned[name] = TunedLinear(m)
            m.forward = tuned[name].forward
        yield tuned
    finally:
        for t in tuned.values():
            del t.module.forward
            t.module.release_cache()
        for p, flag in flags:
            p.requires_grad_(flag)


def write_scales(tuned: dict) -> None:
    """Each :class:`TunedLinear`'s ``s0 * exp(d)`` into its module's ``wscale`` (checked positive and finite)."""
    with torch.no_grad():
        for name, t in tuned.items():
            s = t.scales()
            if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
                raise ArithmeticError(f"scale tuning: {name}'s tuned scales are not all positive and finite")
            t.module.wscale.copy_(s)
            t.module.release_cache()


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits.to(torch.float32)


def _kl(student_logits, teacher_logits):
    """Mean over tokens of ``KL(softmax(teacher) || softmax(student))`` (float32)."""
    s = torch.log_softmax(student_logits.reshape(-1, student_logits.shape[-1]), dim=-1)
    t = torch.log_softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1]), dim=-1)
    return torch.nn.functional.kl_div(s, t, reduction="sum", log_target=True) / s.shape[0]


def mean_kl(student, teacher, ids) -> float:
    """Mean over the tokens of ``ids`` [n, T] (one sample at a time) of KL(teacher || student), no gradient."""
    with torch.no_grad():
        return float(np.mean([float(_kl(_logits(student, ids[i:i + 1]), _logits(teacher, ids[i:i + 1])))
                              for i in range(len(ids))]))


def sample_order(n: int, count: int, seed: int) -> list:
    """``count`` sample indices: seeded permutations of ``range(n)``, one after another (both tunings' order:
    samples here, calibration batches in :mod:`fptq.models.layer_tuning`)."""
    g = torch.Generator().manual_seed(int(seed))
    order = []
    while len(order) < count:
        order.extend(torch.randperm(n, generator=g).tolist())
    return order[:count]


def log_step_optimizer(tuned: dict, lr: float):
    """``(params, optimizer)``: the log-steps ``d`` of the :class:`TunedLinear` s in ``tuned`` and a fresh Adam on
    them at learning rate ``lr``."""
    params = [t.log_step for t in tuned.values()]
    return params, torch.optim.Adam(params, lr=lr)


def optimizer_step(loss_fn, optimizer, params) -> float:
    """One optimizer step on the loss ``loss_fn()`` (a float32 scalar computed with gradients), then every
    log-step clamped to ``[-MAX_LOG_STEP, MAX_LOG_STEP]``; returns the loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for p in params:
            p.clamp_(-MAX_LOG_STEP, MAX_LOG_STEP)
    return float(loss.detach())


def _step(student, teacher, ids, optimizer, params) -> float:
    """One optimizer step on the batch ``ids``; returns its KL before the step."""
    with torch.no_grad():
        target = _logits(teacher, ids)
    return optimizer_step(lambda: _kl(_logits(student, ids), target), optimizer, params)


def _check(steps, lr, batch, n):
    if type(steps) is not int or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if type(batch) is not int or not 1 <= batch <= max(n, 1):
        raise ValueError(f"batch must be an integer in [1, {n}] (the calibration samples), got {batch!r}")


def tune_scales(student, teacher, calib_ids, steps: int, lr: float = DEFAULT_LR, batch: int = 1, seed: int = 0,
                measure: int = 4, progress: bool = False) -> ScaleTuningReport:
    """Train ``student``'s W4A8 group scales toward ``teacher``'s next-token distribution (module docstring).

    ``calib_ids``: LongTensor [n, T]; ``steps`` Adam steps on batches of ``batch`` samples, taken in seeded
    order (``seed``) cycling over the set; ``measure``: :func:`mean_kl` on the first ``measure`` samples before
    and after (0: not measured). ``steps = 0`` changes nothing. The scales are written into each ``wscale``;
    codes, zero points and every other tensor are unchanged."""
    _check(steps, lr, batch, len(calib_ids))
    report = ScaleTuningReport(steps, float(lr), batch=batch)
    if steps == 0:
        return report
    t0, modes = time.time(), (student.training, teacher.training)
    student.eval(), teacher.eval()
    order, probe = sample_order(len(calib_ids), steps * batch, seed), calib_ids[:max(0, int(measure))]
    try:
        with torch.enable_grad(), tunable_scales(student) as tuned:
            params, optimizer = log_step_optimizer(tuned, lr)
            report.linears, report.scales, report.measured = len(params), sum(p.numel() for p in params), len(probe)
            if len(probe):
                report.loss_before = mean_kl(student, teacher, probe)
            for i in range(steps):
                ids = calib_ids[order[i * batch:(i + 1) * batch]]
                report.losses.append(_step(student, teacher, ids, optimizer, params))
                if progress and (i + 1) % max(1, steps // 20) == 0:
                    print(f"scale tuning: step {i + 1}/{steps} KL {report.losses[-1]:.5f} "
                          f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            if len(probe):
                report.loss_after = mean_kl(student, teacher, probe)
            write_scales(tuned)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    report.seconds = time.time() - t0
    if progress:
        print(report.summary(), file=sys.stderr, flush=True)
    return report
