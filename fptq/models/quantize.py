"""FPTQ end to end on a transformers model: calibrate, plan, fold LAE, quantize the linears.

Per decoder layer, inside the layer-by-layer calibration loop
(:func:`fptq.models.calibrate.calibrate`):

1. collect every linear input's channel maxima on the layer's calibration inputs;
2. plan the layer's four groups (:func:`fptq.models.plan.plan_layer`);
3. fold each equalized group's ``1/s`` into its producer and ``s`` into its
   linears (:func:`fptq.models.fold.fold_group`);
4. replace each linear by a :class:`~fptq.models.qlinear.W4A8Linear` (INT4
   groupwise weights, round to nearest by default or an activation-aware
   clipping search, :mod:`fptq.models.wquant`; the group's policy and static scale).

By default the next layer is calibrated on the *float* outputs of this layer
(one forward per layer; the statistics equal a plain float calibration). With
``sequential=True`` it sees the outputs of the *quantized* layer instead
(GPTQ's sequential mode; one extra forward per layer). ``docs/pipeline.md``
reports what each choice measures.

lm_head and the embeddings stay float; so do the norms (which carry folded LAE scales).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import spec
from ..spec import ActPolicy, WeightFormat
from .arch import LINEAR_GROUPS, Arch, arch_of_model, get_submodule
from .calibrate import calibrate
from .fold import fold_group
from .plan import Plan, plan_layer
from .qlinear import MODES, W4A8Linear
from .wquant import WEIGHT_QUANTIZERS, quantize_weight

__all__ = ["QuantConfig", "QuantResult", "quantize_model", "apply_plan_layer", "w4a8_factory", "quantize_linear_weight",
           "set_quantized_mode", "quantized_linears"]


@dataclass
class QuantConfig:
    """FPTQ settings (all written into the checkpoint).

    group_size: INT4 group size G along K (-1 = per-channel).
    weight_format: ``int4_sym`` (default) or ``uint4_asym``.
    weight_quantizer: ``rtn`` (round to nearest, the paper's) or ``mse`` (activation-aware
        clipping search, :mod:`fptq.models.wquant`).
    v0, v1: policy thresholds. n_samples, seq_len, calib: calibration set.
    sequential: calibrate layer i on the quantized layers' outputs.
    policy_select: ``error`` (default): v >= v1 per-token dynamic; below v1, static or LAE +
        static, whichever gives the smaller output error (INT4 weights included) on
        ``keep_rows`` calibration rows; v0 unused. ``bands``: the paper's fixed bands (v < v0
        static, v0 <= v < v1 LAE + static, v >= v1 dynamic). ``error`` is the default because
        it measured better on both models tried (docs/results.md: SmolLM2-135M and
        Gemma-3-270M, PTB and Wikipedia perplexity); the bands were tuned on LLaMA-7B.
    force_policy: one policy for every group (baselines), None = FPTQ bands.
    groups: which linear groups to quantize (the rest stay float; ablations).
    """

    group_size: int = spec.DEFAULT_GROUP_SIZE
    weight_format: str = WeightFormat.SYMMETRIC.value
    weight_quantizer: str = "rtn"
    v0: float = spec.DEFAULT_V0
    v1: float = spec.DEFAULT_V1
    n_samples: int = 128
    seq_len: int = 512
    calib: str = "wiki"
    seed: int = 0
    sequential: bool = False
    policy_select: str = "error"
    keep_rows: int = 2048
    force_policy: str | None = None
    groups: tuple[str, ...] = field(default_factory=lambda: LINEAR_GROUPS)

    def __post_init__(self):
        WeightFormat(self.weight_format)
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ValueError(f"unknown weight quantizer {self.weight_quantizer!r}; choose from {WEIGHT_QUANTIZERS}")
        spec.select_policy(0.0, self.v0, self.v1)  # validates 0 <= v0 < v1
        if self.group_size != -1 and not 1 <= int(self.group_size) <= spec.MAX_GROUP_SIZE:
            raise ValueError(f"group size must be in [1, {spec.MAX_GROUP_SIZE}] or -1, got {self.group_size}")
        bad = set(self.groups) - set(LINEAR_GROUPS)
        if bad:
            raise ValueError(f"unknown linear groups {sorted(bad)}; choose from {LINEAR_GROUPS}")
        if self.policy_select not in ("bands", "error"):
            raise ValueError(f"policy_select must be 'bands' or 'error', got {self.policy_select!r}")
        if self.force_policy is not None:
            ActPolicy(self.force_policy)

    def to_json(self) -> dict:
        d = asdict(self)
        d["groups"] = list(self.groups)
        return d


@dataclass
class QuantResult:
    """The quantized model and how it was made."""

    model: object
    plan: Plan
    stats: dict
    config: QuantConfig
    arch: Arch


def quantize_linear_weight(linear, gp, config: QuantConfig):
    """INT4 weight of one linear by ``config.weight_quantizer`` (:class:`fptq.spec.QuantizedWeight`).

    ``mse`` weighs each input channel's error by the square of its calibration maximum
    (after LAE: ``(m_j / s_j)^2``)."""
    w = linear.weight.detach().cpu().numpy().astype(np.float32)
    c = None
    if config.weight_quantizer == "mse" and gp is not None and gp.m is not None:
        c = np.square(gp.input_channel_max().astype(np.float32))
    return quantize_weight(w, config.group_size, config.weight_format, config.weight_quantizer, c)


def dequantized_weight_fn(config: QuantConfig):
    """``f(w, channel_weight) -> float32 [N, K]``: the INT4 weight ``config`` would store, dequantized
    (used to measure candidate policies' errors with the weights they would really get)."""
    from .. import spec

    def fn(w, channel_weight):
        c = channel_weight if config.weight_quantizer == "mse" else None
        qw = quantize_weight(w, config.group_size, config.weight_format, config.weight_quantizer, c)
        return spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)
    return fn


def w4a8_factory(config: QuantConfig, backend: str = "torch", mode: str = "integer"):
    """``f(linear, group_plan) -> W4A8Linear`` with INT4 weights from ``config.weight_quantizer``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def make(linear, gp):
        qw = quantize_linear_weight(linear, gp, config)
        return W4A8Linear.from_quantized(qw, linear.bias, gp.policy, gp.act_scale, backend=backend, mode=mode)
    return make


def apply_plan_layer(index: int, prefix: str, layer, arch: Arch, config, stats: dict, make_linear,
                     v0: float, v1: float, force=None, equalize="lae", groups=LINEAR_GROUPS,
                     select: str = "bands", samples=None, weight_fn=None):
    """Plan one decoder layer, fold its equalization, replace its linears (in place).

    Only groups in ``groups`` are equalized and replaced; the others stay float.
    ``select``/``samples``/``weight_fn``: see :func:`fptq.models.plan.plan_layer`.
    Returns the layer's list of :class:`~fptq.models.plan.GroupPlan`.
    """
    gps = [gp for gp in plan_layer(index, prefix, layer, arch, config, stats, v0, v1, force, equalize,
                                   select, samples, weight_fn)
           if gp.group in groups]
    for gp in gps:
        fold_group(layer, arch, gp)
    for gp in gps:
        for name in gp.linears:
            rel = name[len(prefix) + 1:]
            parent_path, _, attr = rel.rpartition(".")
            parent = get_submodule(layer, parent_path) if parent_path else layer
            setattr(parent, attr, make_linear(getattr(parent, attr), gp))
    return gps


def quantize_model(model, calib_ids, config: QuantConfig | None = None, backend: str = "torch",
                   mode: str = "integer", batch_size: int = 8, progress: bool = True,
                   inplace: bool = False) -> QuantResult:
    """Quantize a float transformers causal LM with FPTQ.

    Args:
        model: float32 causal LM of a supported architecture (:mod:`fptq.models.arch`).
        calib_ids: LongTensor [n_samples, seq_len] calibration tokens.
        config: :class:`QuantConfig`.
        backend: backend name for the integer matmuls (``get_backend``).
        mode: ``"integer"`` or ``"fake_quant"``.
        inplace: modify ``model`` itself (saves memory); otherwise a deep copy is quantized.
    Returns:
        :class:`QuantResult` (the quantized model, its plan, the calibration statistics).
    """
    config = config or QuantConfig()
    arch = arch_of_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    plan = Plan(config.v0, config.v1)
    # during calibration the replaced layers compute in fake-quant mode (fast, same rounding);
    # the requested mode is set afterwards
    make = w4a8_factory(config, backend, "fake_quant")

    weight_fn = dequantized_weight_fn(config)

    def on_layer(i, prefix, layer, layer_stats, samples):
        plan.groups.extend(apply_plan_layer(i, prefix, layer, arch, model.config, layer_stats, make,
                                            config.v0, config.v1, config.force_policy, "lae", config.groups,
                                            config.policy_select, samples, weight_fn))

    keep = config.keep_rows if config.policy_select == "error" else 0
    stats = calibrate(model, calib_ids, batch_size=batch_size, progress=progress, on_layer=on_layer,
                      sequential=config.sequential, keep_rows=keep)
    set_quantized_mode(model, mode, backend)
    return QuantResult(model, plan, stats, config, arch)


def quantized_linears(model) -> dict:
    """full name -> :class:`W4A8Linear` for every quantized linear in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, W4A8Linear)}


def set_quantized_mode(model, mode: str, backend: str | None = None):
    """Switch every W4A8Linear of ``model`` to ``mode`` (and optionally another backend)."""
    for m in quantized_linears(model).values():
        m.set_mode(mode, backend)
    return model

