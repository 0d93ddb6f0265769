"""FPTQ end to end on a transformers model: calibrate, plan, fold LAE, quantize the linears.

Per decoder layer, inside the layer-by-layer calibration loop
(:func:`fptq.models.calibrate.calibrate`):

1. collect every linear input's channel maxima on the layer's calibration inputs;
2. plan the layer's four groups (:func:`fptq.models.plan.plan_groups`);
3. fold each scaled group's ``1/s`` into its producer and ``s`` into its
   linears (:func:`fptq.models.fold.fold_group`): LAE's scales, and those of a
   weight quantizer with a scale search (AWQ-style), where they fold exactly;
4. replace each linear by a :class:`~fptq.models.qlinear.W4A8Linear` (INT4
   groupwise weights by ``config.weight_quantizer``, given what its entry in
   :mod:`fptq.reference.quantizer_registry` needs; the group's policy and static scale).

With ``config.tune_layers_steps`` > 0 each layer's group scales are trained right after step 4 toward the float
layer's outputs (:mod:`fptq.models.layer_tuning`, inside the calibration loop). With ``config.tune_scales_steps`` > 0
the whole quantized model's group scales are then trained toward a float copy's next-token distribution
(:mod:`fptq.models.scale_tuning`).

By default the next layer is calibrated on the *float* outputs of this layer
(one forward per layer; the statistics equal a plain float calibration). With
``sequential=True`` it sees the outputs of the *quantized* layer instead
(GPTQ's sequential mode; one extra forward per layer). ``docs/pipeline.md``
reports what each choice measures.

lm_head and the embeddings stay float; so do the norms (which carry folded scales).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np

from .. import reference as ref
from ..defaults import CALIB_BATCH_SIZE
from .arch import Arch, arch_of_model, get_submodule
from .calibrate import calibrate
from .layer_pass import release_freed_memory
from .config import QuantConfig
from .device import device_hessian
from .fold import fold_group
from .layer_tuning import LayerTuningReport, layer_tuner
from .plan import LayerRef, Plan, PlanOptions, plan_groups
from .qlinear import MODES, W4A8Linear, set_quantized_mode
from .rotate import RotationReport, carry_input_rotation, plan_rotation, rotate_globals, rotate_layer
from .scale_tuning import ScaleTuningReport, tune_scales
from .trace import mark

__all__ = ["QuantResult", "quantize_model", "LayerIO", "apply_plan_layer", "plan_options", "rows_to_keep", "w4a8_factory",
           "quantize_linear_weight", "dequantized_weight_fn"]


@dataclass
class QuantResult:
    """The quantized model and how it was made."""

    model: object
    plan: Plan
    stats: dict
    config: QuantConfig
    arch: Arch
    #: what ``config.rotate`` did (its ``online_norms``: the norms now rotating their outputs at run
    #: time, which the checkpoint stores); None when not rotated
    rotation: RotationReport | None = None
    #: what ``config.tune_scales_steps`` did (:mod:`fptq.models.scale_tuning`); None when off
    scale_tuning: ScaleTuningReport | None = None
    #: what ``config.tune_layers_steps`` did, per decoder layer run in this process (:mod:`fptq.models.layer_tuning`;
    #: a resumed run's: the layers after its start); None when off
    layer_tuning: list[LayerTuningReport] | None = None


def plan_options(config: QuantConfig, **overrides) -> PlanOptions:
    """The :class:`~fptq.models.plan.PlanOptions` of ``config`` (``overrides``: PlanOptions fields); a weight
    quantizer with a ``scale_search`` (:mod:`fptq.reference.quantizer_registry`) gets it with its group size
    and format bound."""
    search = ref.weight_quantizer(config.weight_quantizer).scale_search
    if search is not None:
        search = functools.partial(search, group_size=config.group_size, fmt=config.weight_format)
    base = dict(v0=config.v0, v1=config.v1, force=config.force_policy, select=config.policy_select,
                groups=tuple(config.groups), weight_scales=search)
    base.update(overrides)
    return PlanOptions(**base)


def rows_to_keep(config: QuantConfig) -> int:
    """Calibration rows per linear input the run keeps: the error selection's ``keep_rows`` and what
    the weight quantizer's ``rows_option`` asks for."""
    option = ref.weight_quantizer(config.weight_quantizer).rows_option
    return max(config.keep_rows if _by_error(config) else 0, getattr(config, option) if option else 0)


def _by_error(config: QuantConfig) -> bool:
    return config.policy_select != "bands" and config.force_policy is None


def layer_hessian(samples, gp):
    """``H = X'^T X' / n`` (float64 [K, K]) of a group's input as its quantized linears see it:
    ``X' = X / s`` after LAE (``X``: the kept calibration rows of the group's first linear); on the
    calibration's device when it had one (``samples.device``: :func:`fptq.models.device.device_hessian`).

    Computed once per group: a :class:`~fptq.models.layer_pass.LayerSamples` keeps it in its
    ``hessians`` cache for the group's other linears (q/k/v, gate/up share one input); the last of them
    gets it as a :class:`fptq.reference.HessianHandoff` (GPTQ works in it, no copy) and the cache forgets it."""
    name = gp.linears[0]
    cache = getattr(samples, "hessians", {})
    key = (name, None if gp.s is None else np.asarray(gp.s, np.float64).tobytes())
    if key not in cache:
        if not samples or name not in samples:
            raise ValueError(f"GPTQ needs calibration rows of {name}'s input (none were kept)")
        device = getattr(samples, "device", None)
        cache[key] = [ref.equalized_hessian(samples[name].numpy(), gp.s) if device is None
                      else device_hessian(samples[name], gp.s, device), len(gp.linears)]
        if not getattr(samples, "keep_rows_after_hessian", True):   # the rows have served: H holds what GPTQ needs
            for n in gp.linears:
                samples.pop(n, None)
                samples.heldout.pop(n, None)
    entry = cache[key]
    entry[1] -= 1
    if entry[1] > 0:
        return entry[0]
    del cache[key]
    return ref.HessianHandoff(entry.pop(0))


def layer_cross_term(samples, gp):
    """GPTAQ's ``D = (X' - X~')^T X~' / n`` (float64 [K, K], :func:`fptq.reference.gptaq.cross_term`) of a group's
    input: ``X`` the float model's kept rows (``samples.float_rows``), ``X~`` the quantized model's, ``'`` divided
    by the group's LAE ``s``. Once per group, cached in ``samples.hessians`` for its other linears; the float rows
    are dropped once it is built when :func:`layer_hessian` drops the others."""
    name = gp.linears[0]
    key = ("cross", name, None if gp.s is None else np.asarray(gp.s, np.float64).tobytes())
    cache = samples.hessians
    if key not in cache:
        if name not in samples.float_rows or name not in samples:
            raise ValueError(f"GPTAQ needs the float and quantized calibration rows of {name}'s input")
        cache[key] = [ref.cross_term(samples.float_rows[name].numpy(), samples[name].numpy(), gp.s), len(gp.linears)]
        if not samples.keep_rows_after_hessian:
            for n in gp.linears:
                samples.float_rows.pop(n, None)
    entry = cache[key]
    entry[1] -= 1
    return entry[0] if entry[1] > 0 else cache.pop(key)[0]


def refresh_group_rows(samples, gp) -> None:
    """GPTAQ within a layer: a group's quantized-stream rows ``X~`` taken again from the layer as quantized so far
    (``samples.rows_again``, :func:`fptq.models.calibrate._rows_again`), so that the o projection is fitted on the
    inputs that the quantized q/k/v give it, gate/up on those the quantized o projection gives, down on those of the
    quantized gate/up (GPTAQ's reference calibrates the four groups in turn). Without it each group's correction
    ``W D H~^{-1}`` would undo a drift that the earlier groups' corrections already removed: measured on SmolLM2,
    the hidden states' drift from the float model's after layer 9 was 0.186 with the correction counted twice
    against 0.100 for plain sequential GPTQ (docs/results.md). The rows are read after the group's equalization is
    folded (its inputs divided by ``s``) and multiplied back by ``s``: the same unfolded rows as the first pass
    keeps. Only the group's first linear is hooked: its rows serve the whole group (:func:`layer_hessian`,
    :func:`layer_cross_term`); the group's Hessians are not cached yet (:func:`apply_plan_layer` clears them
    after each group)."""
    import torch

    first = gp.linears[0]
    rows = samples.rows_again((first,))[first]
    if gp.s is not None:
        rows.mul_(torch.from_numpy(np.asarray(gp.s, np.float32)))
    for name in gp.linears:
        samples[name] = rows


def quantize_linear_weight(linear, gp, config: QuantConfig, samples=None):
    """INT4 weight of one linear by ``config.weight_quantizer`` (:class:`fptq.spec.QuantizedWeight`),
    handed what its registry entry asks for (:mod:`fptq.reference.quantizer_registry`): channel
    weights from the group's calibration maxima (after its scales: ``(m_j / s_j)^2``), the Hessian
    of ``samples`` (:func:`layer_hessian`), its ``QuantConfig`` options."""
    entry = ref.weight_quantizer(config.weight_quantizer)
    w = linear.weight.detach().cpu().numpy().astype(np.float32)
    needs = {kw: getattr(config, name) for kw, name in entry.options}
    if entry.float_inputs:   # before layer_hessian, which may drop the rows
        needs["cross"] = layer_cross_term(samples, gp)
    if entry.hessian:
        h = layer_hessian(samples, gp)
        mark(f"Hessian {gp.linears[0]}")
        needs["hessian"] = h if entry.hessian_handoff or not isinstance(h, ref.HessianHandoff) else h.take()
    if entry.channel_weight and gp is not None and gp.m is not None:
        needs["channel_weight"] = ref.activation_channel_weight(gp.input_channel_max())
    return entry.quantize(w, config.group_size, config.weight_format, **needs)


def dequantized_weight_fn(config: QuantConfig):
    """``f(w, channel_weight) -> float32 [N, K]``: the INT4 weight ``config`` would store, dequantized
    (used to measure candidate policies' errors with the weights they would really get). A quantizer
    that needs calibration rows is judged by its entry's ``judge_with`` (GPTQ: round to nearest; GPTQ
    per candidate would double its cost, and every candidate is judged alike)."""
    entry = ref.weight_quantizer(config.weight_quantizer)
    judge = ref.weight_quantizer(entry.judge_with or entry.name)

    def fn(w, channel_weight):
        return ref.fake_quant_weight(w, config.group_size, config.weight_format, judge.name, channel_weight)
    return fn


def w4a8_factory(config: QuantConfig, backend: str | None = None, mode: str = "integer"):
    """``f(linear, group_plan) -> W4A8Linear`` with INT4 weights from ``config.weight_quantizer``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def make(linear, gp, samples=None):
        qw = quantize_linear_weight(linear, gp, config, samples)
        return W4A8Linear.from_quantized(qw, linear.bias, gp.policy, gp.act_scale, backend=backend, mode=mode)
    return make


def apply_plan_layer(lr: LayerRef, stats: dict, make_linear, options: PlanOptions, *,
                     samples: dict | None = None, weight_fn=None):
    """Plan one decoder layer, fold its equalization, replace its linears (in place).

    Only groups in ``options.groups`` are equalized and replaced; the others stay float.
    ``make_linear(linear, group_plan) -> module``; ``samples``/``weight_fn``: see
    :func:`fptq.models.plan.plan_groups`. Returns the layer's list of
    :class:`~fptq.models.plan.GroupPlan`.
    """
    gps = plan_groups(lr, stats, options, samples=samples, weight_fn=weight_fn)
    mark(f"{lr.prefix}: plan")
    for gp in gps:
        fold_group(lr.layer, lr.arch, gp)
    for n, gp in enumerate(gps):
        if n and getattr(samples, "rows_again", None) is not None:
            refresh_group_rows(samples, gp)
        for name in gp.linears:
            rel = name[len(lr.prefix) + 1:]
            parent_path, _, attr = rel.rpartition(".")
            parent = get_submodule(lr.layer, parent_path) if parent_path else lr.layer
            setattr(parent, attr, make_linear(getattr(parent, attr), gp))
            mark(f"quantize {name}")
        getattr(samples, "hessians", {}).clear()  # a group's Hessian serves its linears only (K^2 float64 each)
    return gps


def quantize_model(model, calib_ids, config: QuantConfig | None = None, backend: str | None = None,
                   mode: str = "integer", batch_size: int = CALIB_BATCH_SIZE, progress: bool = True,
                   inplace: bool = False, make_linear=None, layer_io=None, device=None) -> QuantResult:
    """Quantize a float transformers causal LM with FPTQ.

    Args:
        model: float32 causal LM of a supported architecture (:mod:`fptq.models.arch`).
        calib_ids: LongTensor [n_samples, seq_len] calibration tokens.
        config: :class:`~fptq.models.config.QuantConfig` (tuning: :mod:`~.layer_tuning`, :mod:`~.scale_tuning`).
        backend: backend the returned model's W4A8 layers compute with (``get_backend``; None:
            :func:`fptq.defaults.default_backend`); the quantization itself is :mod:`fptq.reference`'s
            and does not depend on it.
        mode: ``"integer"`` or ``"fake_quant"``.
        inplace: modify ``model`` itself (saves memory); otherwise a deep copy is quantized.
        make_linear: ``f(linear, group_plan, samples) -> module`` replacing each planned linear
            instead of a :class:`~fptq.models.qlinear.W4A8Linear` (``fptq compare``'s attribution
            rows: the same calibration, plan and folds, other weights or activations).
        layer_io: a streamed run's layer traffic (:class:`LayerIO`): ``load(i, prefix, layer)`` before
            the layer is rotated and calibrated (its weights read), ``done(i, prefix, layer, plan)`` once
            its outputs for the next layer are computed (its tensors written, its memory released). None:
            ``model`` holds every weight. Either way every layer is rotated (when ``config.rotate`` says
            so), calibrated, planned and quantized by the same code, one layer at a time.
        device: a ``torch.device`` for the calibration forwards and GPTQ Hessians (:mod:`fptq.models.device`).
    Returns:
        :class:`QuantResult` (the quantized model, its plan, the calibration statistics).
    """
    config, arch = config or QuantConfig(), arch_of_model(model)
    teacher, tuner = _tuning(model, config, inplace, layer_io, make_linear, device, progress)
    model = (model if inplace else copy.deepcopy(model)).eval()
    rot = _start_rotation(model, config)
    plan, resume = _resume(layer_io, config)
    # during calibration the replaced layers compute in fake-quant mode (fast, same rounding); the mode is set last
    w4a8 = w4a8_factory(config, backend, "fake_quant")
    options, weight_fn = plan_options(config), dequantized_weight_fn(config)
    swap = _Replacements(make_linear)

    def make_w4a8(linear, gp, samples=None):
        module = carry_input_rotation(linear, w4a8(linear, gp, samples))
        release_freed_memory()  # GPTQ's float64 temporaries (see release_freed_memory)
        return swap.hold(module, linear, gp, samples)

    def on_layer(i, prefix, layer, layer_stats, samples):
        lr = LayerRef(i, prefix, layer, arch, model.config)
        if samples is not None and make_linear is None:   # attribution rows read the rows again
            samples.keep_rows_after_hessian = False
        plan.groups.extend(apply_plan_layer(lr, layer_stats, functools.partial(make_w4a8, samples=samples), options,
                                            samples=samples, weight_fn=weight_fn))

    steps = _AroundLayer(rot, layer_io or LayerIO(), swap if make_linear is not None else None, plan)
    keep = rows_to_keep(config)
    stats = calibrate(model, calib_ids, batch_size=batch_size, progress=progress, on_layer=on_layer,
                      sequential=config.sequential_calibration, keep_rows=keep, before_layer=steps.before,
                      float_rows=config.float_stream, after_layer=steps.after, balanced_rows=config.balanced_rows,
                      holdout=config.holdout_samples(len(calib_ids)) if _by_error(config) and keep else 0,
                      holdout_rows=config.keep_rows, device=device, resume=resume, tune_layer=tuner)
    tuned = _tune_scales(model, teacher, calib_ids, config, progress)
    if layer_io is None:
        set_quantized_mode(model, mode, backend)
    return QuantResult(model, plan, stats, config, arch, None if rot is None else rot.report, tuned,
                       None if tuner is None else tuner.reports)


def _tuning(model, config: QuantConfig, inplace: bool, layer_io, make_linear, device, progress: bool):
    """``(teacher, tuner)``: :func:`_float_teacher` (``config.tune_scales_steps``) and the calibration's
    ``tune_layer`` hook (:func:`fptq.models.layer_tuning.layer_tuner`, ``config.tune_layers_steps``), None when off."""
    return (_float_teacher(model, config, inplace, layer_io, make_linear),
            layer_tuner(config, device, make_linear, progress))


def _float_teacher(model, config: QuantConfig, inplace: bool, layer_io, make_linear):
    """The float model that ``config.tune_scales_steps`` tunes the scales toward (None when 0): ``model`` itself
    when a copy of it is quantized, else a deep copy taken before it is quantized in place (memory: one more
    float32 model, 4 bytes per parameter: 0.54 GB for SmolLM2-135M, 6.2 GB for a 1.5B model)."""
    if not config.tune_scales_steps:
        return None
    if layer_io is not None:
        raise ValueError("tune_scales_steps needs the whole model in memory; a streamed run releases each layer")
    if make_linear is not None:
        raise ValueError("tune_scales_steps tunes the W4A8Linear scales; it cannot be used with make_linear")
    return copy.deepcopy(model) if inplace else model


def _tune_scales(model, teacher, calib_ids, config: QuantConfig, progress: bool):
    """:func:`fptq.models.scale_tuning.tune_scales` of ``model`` toward ``teacher`` (None: off)."""
    if teacher is None:
        return None
    return tune_scales(model, teacher, calib_ids, config.tune_scales_steps, config.tune_scales_lr, seed=config.seed,
                       progress=progress)


def _resume(layer_io, config: QuantConfig):
    """``(plan, resume point)``: the run's :class:`Plan` and ``layer_io``'s resume point (None: none, the run starts
    at layer 0), whose plan's groups are put in the plan."""
    plan = Plan(config.v0, config.v1)
    resume = layer_io.resume_point() if layer_io is not None else None
    if resume is not None:
        plan.groups.extend(resume.plan_groups)
    return plan, resume


def _start_rotation(model, config: QuantConfig):
    """``config.rotate``'s :class:`~fptq.models.rotate.LayerRotation` of ``model`` (None: no rotation), its part
    outside the decoder layers done; :func:`rotate_layer` does each layer's when its turn comes."""
    if config.rotate == "none":
        return None
    rot = plan_rotation(model, config.rotate, seed=config.rotation_seed_used)
    rotate_globals(model, rot)
    mark("rotation plan")
    return rot


@dataclass
class _AroundLayer:
    """:func:`quantize_model`'s steps around each layer's calibration: before it, the layer read
    (``io.load``) and rotated; after it, the attribution rows' replacements and ``io.done``."""

    rot: object
    io: "LayerIO"
    swap: "_Replacements | None"
    plan: Plan

    def before(self, i, prefix, layer):
        self.io.load(i, prefix, layer)
        if self.rot is not None:
            rotate_layer(self.rot, i, layer)
            mark(f"{prefix}: rotate")

    def after(self, i, prefix, layer, outputs, float_outputs=None):
        if self.swap is not None:
            self.swap.after_layer(i, prefix, layer)
        self.io.outputs(i, outputs, float_outputs)
        self.io.done(i, prefix, layer, self.plan)


class LayerIO:
    """What a streamed run does around each decoder layer (:func:`quantize_model`'s ``layer_io``); this base
    class does nothing (every weight is in memory already)."""

    def resume_point(self):
        """None, or where a resumed run starts (:class:`fptq.models.journal.ResumePoint`: its layer, that layer's
        inputs (GPTAQ: the float stream's too), the statistics and plan of the layers before it, which are not run
        again)."""
        return None

    def load(self, i: int, prefix: str, layer) -> None:
        """Before layer ``i`` (module path ``prefix``) is rotated and calibrated."""

    def outputs(self, i: int, outputs: list, float_outputs: list | None = None) -> None:
        """Layer ``i``'s outputs for the next layer (per-batch float32 tensors; read, never changed);
        ``float_outputs``: GPTAQ's float stream's (the float model's layer ``i`` outputs), else None."""

    def done(self, i: int, prefix: str, layer, plan: Plan) -> None:
        """Once layer ``i`` is quantized and its outputs for the next layer are computed."""


class _Replacements:
    """``make_linear`` (the attribution rows of ``fptq compare``): the layer holds its W4A8 modules until its
    outputs for the next layer are computed, so a sequential calibration sees exactly the W4A8 row's inputs
    (and plan); then :meth:`after_layer` replaces each by ``make_linear(float linear, plan, samples)``."""

    def __init__(self, make_linear):
        self.make_linear = make_linear
        self.pending = {}  # id(W4A8 module) -> (float linear, group plan, samples)

    def hold(self, module, linear, gp, samples):
        if self.make_linear is not None:
            self.pending[id(module)] = (linear, gp, samples)
        return module

    def after_layer(self, i, prefix, layer):
        for parent in list(layer.modules()):
            for attr, child in list(parent.named_children()):
                if id(child) in self.pending:
                    linear, gp, samples = self.pending.pop(id(child))
                    new = self.make_linear(linear, gp, samples=samples)
                    setattr(parent, attr, carry_input_rotation(linear, new))
        if self.pending:
            raise RuntimeError(f"layer {prefix}: {len(self.pending)} planned linears were not found to replace")
