"""The FPTQ planner: each input's activation policy, equalization scales, static scale.

One planner, its strategies (``select``) declared in one table, :data:`SELECTION_TABLE`,
run by :func:`plan_group` on one input-sharing group of linears (q/k/v; o; gate/up;
down), from its channel maxima ``m`` (float32 [K]) and what the pipeline reads from
the model (:class:`GroupInputs`)::

    v      = max_j m_j                                   the input range
    band   = select_policy(v, v0, v1)                    spec section 7
    policy = band                                        select="bands" (the paper)
           | the candidate with the smallest output      select="error" / "error_static"
             error on held-out rows (static, LAE +        (fptq's default; below v1 only)
             static, [per-token dynamic])
           | the same between static and LAE + static    select="all_static" (every group,
             (static where LAE does not fold)             never per-token dynamic)
    s      = equalization scales if LAE_STATIC and 1/s folds into the producer, else the
             group falls back to per-token dynamic (section 3; SmoothQuant's with
             equalize=("smoothquant", alpha); GQA-shared for o_proj)
    s     *= a weight quantizer's scale search, if it has one and 1/s folds (AWQ-style)
    amax'  = max_j float32(m_j / s_j) if s, else v        range of the equalized input X / s
    scale  = act_scale_from_amax(amax')  if the policy is static, else None (section 2)

``amax'`` is exact, not an estimate: float32 division by a positive s_j is
correctly rounded, hence monotone in |x| and symmetric in sign, so
``max_t |float32(x[t, j] / s_j)| = float32(max_t |x[t, j]| / s_j)``: re-measuring
the equalized activations on the calibration set gives the same bits
(``tests/test_reference.py`` checks it).

The pipeline (:func:`fptq.models.plan.plan_groups`) runs :func:`plan_group`
for every group of every decoder layer; :func:`plan_layer` / :func:`plan_layers`
are its bands strategy for single linears (a :class:`LayerPlan`, what
:func:`fptq.reference.quantize_linear` takes), :func:`with_policy` its forced
policy. Pure NumPy and framework-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..spec import (
    DEFAULT_V0, DEFAULT_V1, ActPolicy, act_scale_from_amax, lae_apply_weight, select_policy,
)
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_ndim
from .equalize import equalization_scales, equalized_channel_max, static_act_scale, weight_column_max
from .select import select_by_error, static_and_dynamic_errors, static_candidate_error

__all__ = ["SELECTIONS", "SELECTION_TABLE", "Selection", "selection", "GroupInputs", "GroupPlan", "plan_group",
           "LayerPlan", "equalized_amax", "plan_layer", "plan_layers", "with_policy"]


@dataclass(frozen=True)
class Selection:
    """One strategy of the planner: which policies a group may get and how (a row of :data:`SELECTION_TABLE`).

    Attributes:
        name: the ``select`` / ``--policy-select`` value.
        by_error: the candidates are judged by their output error on the judging rows (else the band decides).
        dynamic_candidate: per-token dynamic is one of the judged candidates.
        per_token: any group may end per-token dynamic: from v1 (unjudged), or when LAE does not fold.
            False: never (every group static or LAE + static, whatever its range; :func:`plan_group` raises
            if a dynamic group appears anyway).
        label: how tables name it (``{v0}``, ``{v1}``: the thresholds).
        rule: the rule in words (``{v0}``, ``{v1}``, ``{keep_rows}``, ``{holdout}``: the settings).
    """

    name: str
    by_error: bool
    dynamic_candidate: bool
    per_token: bool
    label: str
    rule: str


#: the planner's strategies, one row each: every choice of a group's policy is declared here
SELECTION_TABLE = {s.name: s for s in (
    Selection("error", True, True, True, "static/LAE/dynamic by held-out error below v1={v1:g}",
              "per-token dynamic from v1={v1:g}, below it static, LAE + static or per-token dynamic, whichever "
              "gives the smallest output error on {keep_rows} rows of held-out calibration samples ({holdout:g} "
              "of them; the candidates' scales from the others)"),
    Selection("error_static", True, False, True,
              "static/LAE by calibration error below v1={v1:g} (the default until 2026-11-30)",
              "per-token dynamic from v1={v1:g}, below it static or LAE + static, whichever gives the smaller "
              "output error on {keep_rows} calibration rows"),
    Selection("bands", False, False, True, "paper bands v0={v0:g}, v1={v1:g}",
              "the paper's bands (static below v0={v0:g}, LAE + static below v1={v1:g}, else per-token dynamic)"),
    Selection("all_static", True, False, False, "all static: static/LAE by held-out error, no per-token dynamic",
              "every group static or LAE + static whatever its range (no per-token dynamic), whichever gives the "
              "smaller output error on {keep_rows} rows of held-out calibration samples; static where LAE does "
              "not fold"),
)}

#: the planner's strategy names (:data:`SELECTION_TABLE`, :func:`plan_group`)
SELECTIONS = tuple(SELECTION_TABLE)


def selection(name: str) -> Selection:
    """The :data:`SELECTION_TABLE` row ``name``; a ValueError names the choices."""
    if name not in SELECTION_TABLE:
        raise ValueError(f"select must be one of {SELECTIONS}, got {name!r}")
    return SELECTION_TABLE[name]


@dataclass(frozen=True)
class LayerPlan:
    """How one linear layer's input is quantized.

    Attributes:
        name: layer name.
        v: float32 input range (max of the channel maxima) the policy was chosen from.
        policy: :class:`fptq.spec.ActPolicy`.
        lae_scales: float32 [K] LAE scales s (x' = x / s, W' = W * s) for
            ``LAE_STATIC``, else None.
        act_scale: float32 0-d per-tensor INT8 scale for the static policies
            (measured on the equalized input for ``LAE_STATIC``), else None.
        note: why the policy differs from the bands' choice, if it does ("" otherwise).
    """

    name: str
    v: np.float32
    policy: ActPolicy
    lae_scales: np.ndarray | None
    act_scale: np.ndarray | None
    note: str = ""


@dataclass
class GroupPlan:
    """The plan of one input-sharing group of one decoder layer.

    Attributes:
        layer: decoder layer index. prefix: its module path (``model.layers.3``).
        group: ``qkv`` | ``o`` | ``gate_up`` | ``down``.
        linears: full module names of the group's linears.
        v: float32 input range (max |x| over calibration).
        band: the policy the thresholds give. policy: the one applied (differs
            from ``band`` only on fallback, by error selection or when forced).
        fold: full name of the module ``1/s`` was folded into (None if no scales).
        fallback: why an LAE group could not be folded (None otherwise).
        v_after: input range after the scales (``max_j m_j / s_j``), or None.
        act_scale: float32 static activation scale, or None for dynamic.
        s: float32 [K] scales over the input channels (LAE's times the weight quantizer's), or None.
        s_fold: float32 divisors of the fold target's output rows / norm channels
            (equal to ``s`` except for o_proj under GQA: one per kv channel).
        s_weight: float32 [K] the weight quantizer's searched scales (included in ``s``), or None.
        scale_fallback: why the weight quantizer's scales were not applied (None otherwise).
        m: float32 [K] the input's channel maxima (before equalization).
        err_static, err_lae, err_dynamic: with ``select="error"``, the measured output error
            of each candidate on the held-out calibration rows (None where not measured).
    """

    layer: int
    prefix: str
    group: str
    linears: tuple[str, ...]
    v: float
    band: ActPolicy
    policy: ActPolicy
    fold: str | None = None
    fallback: str | None = None
    v_after: float | None = None
    act_scale: float | None = None
    s: np.ndarray | None = field(default=None, repr=False)
    s_fold: np.ndarray | None = field(default=None, repr=False)
    m: np.ndarray | None = field(default=None, repr=False)
    err_static: float | None = None
    err_lae: float | None = None
    err_dynamic: float | None = None
    s_weight: np.ndarray | None = field(default=None, repr=False)
    scale_fallback: str | None = None

    def input_channel_max(self) -> np.ndarray:
        """float32 [K]: channel maxima of the input the quantized linear sees (``m / s`` with scales)."""
        return equalized_channel_max(self.m, self.s)

    def to_json(self) -> dict:
        """JSON-able summary (no arrays)."""
        out = {"layer": self.layer, "group": self.group, "linears": list(self.linears),
               "v": float(self.v), "band": self.band.value, "policy": self.policy.value,
               "fold": self.fold, "fallback": self.fallback,
               "v_after": None if self.v_after is None else float(self.v_after),
               "act_scale": None if self.act_scale is None else float(self.act_scale),
               "err_static": self.err_static, "err_lae": self.err_lae, "err_dynamic": self.err_dynamic}
        if self.s_weight is not None or self.scale_fallback is not None:
            out.update(weight_scales=self.s_weight is not None, scale_fallback=self.scale_fallback)
        return out


@dataclass
class GroupInputs:
    """What the planner reads of one group; the pipeline fills it from the model (arrays, no tensors).

    Attributes:
        layer, prefix, group, linears: as :class:`GroupPlan`. m: float32 [K] the group's channel maxima.
        weights: ``f() -> [float32 [N_l, K]]``, the group's float weights (read when needed).
        fold_reason: None when ``1/s`` folds exactly into the input's producer, else why it does not.
        fold_target: full name of that producer. kv_heads: ``(n_heads, n_kv, head_dim)`` for o_proj's
            input (GQA-shared scales), else None.
        judging_rows: ``f() -> (x [n, K], m_fit [K])``, the rows the error strategy judges candidates on
            and the channel maxima their scales come from (None: no rows kept).
        scale_rows: ``f() -> x [n, K]``, calibration rows for a weight quantizer's scale search.
    """

    layer: int
    prefix: str
    group: str
    linears: tuple[str, ...]
    m: np.ndarray
    weights: Callable[[], list] = list
    fold_reason: str | None = None
    fold_target: str | None = None
    kv_heads: tuple | None = None
    judging_rows: Callable | None = None
    scale_rows: Callable | None = None


def _equalize(gp: GroupPlan, inp: GroupInputs, equalize) -> None:
    """Set ``gp.s``, ``gp.s_fold`` and ``gp.v_after`` (:func:`fptq.reference.equalization_scales`)."""
    w_colmax = None if equalize == "lae" else weight_column_max(inp.weights())
    gp.s, gp.s_fold = equalization_scales(gp.m, equalize, w_colmax, inp.kv_heads)
    gp.v_after = float(equalized_amax(gp.m, gp.s))


def _select_by_error(gp: GroupPlan, inp: GroupInputs, equalize, weight_fn, sel: Selection) -> None:
    """The error strategy: keep the candidate with the smallest error on the judging rows ``x``, each
    candidate's scales taken from the channel maxima ``m_fit``: ``static``, ``lae_static`` (if it
    folds) and, if ``sel.dynamic_candidate``, per-token ``dynamic``."""
    dynamic = sel.dynamic_candidate
    if inp.judging_rows is None:
        raise ValueError("select='error' needs calibration samples of every linear input")
    x, m_fit = inp.judging_rows()
    weights = inp.weights()
    v_fit = float(np.max(m_fit)) if m_fit.size else 0.0
    if dynamic:
        gp.err_static, gp.err_dynamic = static_and_dynamic_errors(x, weights, static_act_scale(v_fit), weight_fn)
    else:
        gp.err_static = static_candidate_error(x, weights, static_act_scale(v_fit), None, weight_fn)
    if inp.fold_reason is None:
        trial = GroupPlan(gp.layer, gp.prefix, gp.group, gp.linears, v_fit, gp.band, ActPolicy.LAE_STATIC,
                          m=m_fit)
        _equalize(trial, inp, equalize)
        gp.err_lae = static_candidate_error(x, weights, static_act_scale(trial.v_after), trial.s, weight_fn)
    elif not dynamic and sel.per_token:
        return  # no LAE candidate: the band decides (an LAE-band group falls back to dynamic)
    gp.policy = select_by_error(gp.err_static, gp.err_lae, gp.err_dynamic)


def _weight_scales(gp: GroupPlan, inp: GroupInputs, search) -> None:
    """Compose a weight quantizer's searched scales with the group's (``search(x, weights, kv_heads)
    -> (s, s_fold)`` on the input and weights as the quantized linears see them), or record why not."""
    if inp.fold_reason is not None:
        gp.scale_fallback = inp.fold_reason
        return
    if inp.scale_rows is None:
        raise ValueError(f"{gp.prefix}.{gp.group}: the weight quantizer's scale search needs calibration rows")
    x = as_float32(inp.scale_rows(), "x")
    weights = inp.weights()
    if gp.s is not None:
        x = (x / gp.s).astype(FLOAT)
        weights = [lae_apply_weight(w, gp.s) for w in weights]
    sw, sw_fold = search(x, weights, inp.kv_heads)
    gp.s_weight = sw
    gp.s, gp.s_fold = (sw, sw_fold) if gp.s is None else ((gp.s * sw).astype(FLOAT), (gp.s_fold * sw_fold).astype(FLOAT))
    gp.fold = inp.fold_target
    gp.v_after = float(equalized_amax(gp.m, gp.s))


def plan_group(inp: GroupInputs, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1, *, force=None,
               select: str = "bands", equalize="lae", weight_fn=None, weight_scales=None) -> GroupPlan:
    """The plan of one group (see the module docstring).

    Args:
        inp: :class:`GroupInputs`. v0, v1: the policy thresholds.
        force: one policy regardless of the band (baselines), or None.
        select: the strategy, one of :data:`SELECTIONS`.
        equalize: ``"lae"`` or ``("smoothquant", alpha)``: the scales an LAE group gets.
        weight_fn: ``f(w, channel_weight) -> float32 [N, K]``, the weight the model will store, for the
            error strategy (None: float weights).
        weight_scales: a weight quantizer's scale search ``f(x, weights, kv_heads) -> (s, s_fold)``, or None.
    """
    sel = selection(select)
    m = inp.m
    v = float(np.max(m)) if m.size else 0.0
    band = select_policy(v, v0, v1)
    policy = band if force is None else ActPolicy(force)
    gp = GroupPlan(inp.layer, inp.prefix, inp.group, inp.linears, v, band, policy, m=m)
    if sel.by_error and force is None and (band is not ActPolicy.DYNAMIC or not sel.per_token):
        _select_by_error(gp, inp, equalize, weight_fn, sel)
    if gp.policy is ActPolicy.LAE_STATIC:
        if inp.fold_reason is None:
            gp.fold = inp.fold_target
            _equalize(gp, inp, equalize)
        else:
            gp.policy, gp.fallback = ActPolicy.DYNAMIC, inp.fold_reason
    if weight_scales is not None:
        _weight_scales(gp, inp, weight_scales)
    if gp.policy is not ActPolicy.DYNAMIC:
        gp.act_scale = static_act_scale(v if gp.s is None else gp.v_after)
    elif force is None and not sel.per_token:  # the promise of the selection, checked where it is kept
        raise RuntimeError(f"{inp.prefix}.{inp.group}: select={select!r} never plans per-token dynamic, but the "
                           "plan came out dynamic (a planner bug)")
    return gp


def _channel_max(channel_max, name: str) -> np.ndarray:
    m = as_float32(channel_max, f"channel maxima of layer {name!r}")
    check_ndim(m, 1, f"channel maxima of layer {name!r}")
    if m.size and (m < 0).any():
        raise ValueError(f"channel maxima of layer {name!r} must be >= 0")
    return m


def equalized_amax(channel_max, s) -> np.float32:
    """``max_j float32(m_j / s_j)``: the exact range of X / s given X's channel maxima m.

    Args: channel_max float32 [K] >= 0; s float32 [K] > 0. Returns float32 (0 for K = 0).
    """
    m = _channel_max(channel_max, "?")
    s = as_float32(s, "s")
    if s.shape != m.shape:
        raise ValueError(f"s: expected shape {m.shape}, got {s.shape}")
    return FLOAT((m / s).astype(FLOAT).max(initial=FLOAT(0)))


def _layer_plan(name: str, gp: GroupPlan, note: str) -> LayerPlan:
    scale = None if gp.policy is ActPolicy.DYNAMIC else act_scale_from_amax(
        FLOAT(gp.v if gp.s is None else gp.v_after))
    return LayerPlan(name, FLOAT(gp.v), gp.policy, gp.s, scale, note)


def with_policy(plan_or_name, channel_max, policy: ActPolicy | str, note: str = "") -> LayerPlan:
    """A plan with the given policy regardless of v (baselines, or LAE that cannot be folded):
    :func:`plan_group` with ``force=policy``.

    Args:
        plan_or_name: a :class:`LayerPlan` (its name is reused) or a layer name.
        channel_max: float32 [K] calibration channel maxima.
        policy: the policy to use. note: recorded in the plan.
    """
    name = plan_or_name.name if isinstance(plan_or_name, LayerPlan) else str(plan_or_name)
    m = _channel_max(channel_max, name)
    gp = plan_group(GroupInputs(0, "", "layer", (name,), m), force=ActPolicy(policy))
    return _layer_plan(name, gp, note)


def plan_layer(name: str, channel_max, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> LayerPlan:
    """The FPTQ plan of one layer from its calibration channel maxima: :func:`plan_group`'s bands strategy.

    Args:
        name: layer name. channel_max: float32 [K], >= 0, finite.
        v0, v1: the policy thresholds (0 <= v0 < v1; defaults 15 and 150).
    Returns:
        :class:`LayerPlan`; ``v < v0`` static, ``v0 <= v < v1`` LAE + static,
        ``v >= v1`` per-token dynamic.
    """
    m = _channel_max(channel_max, name)
    return _layer_plan(name, plan_group(GroupInputs(0, "", "layer", (name,), m), v0, v1), "")


def plan_layers(channel_maxima: dict, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> dict[str, LayerPlan]:
    """``{name: plan_layer(name, m, v0, v1)}`` for a dict of channel maxima
    (e.g. :meth:`fptq.reference.CalibrationStats.channel_maxima`)."""
    return {name: plan_layer(name, m, v0, v1) for name, m in channel_maxima.items()}
