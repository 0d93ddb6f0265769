"""The per-layer FPTQ plan of a transformers model: each input-sharing group's range, policy, fold.

For every decoder layer and every group of :data:`fptq.models.arch.LINEAR_GROUPS`
(linears sharing one input X), this module reads what the model holds
(calibration maxima by module name, weights, norms, attention geometry) and
asks :mod:`fptq.reference` for the math:

* ``m`` = the group's channel maxima (:func:`fptq.reference.group_channel_max`),
  ``v = max_j m_j``, the band ``fptq.spec.select_policy(v, v0, v1)``;
* ``select="error"``: below v1, ``static``, ``lae_static`` or per-token
  ``dynamic``, whichever has the smallest measured output error on held-out
  calibration rows, the candidates' scales taken from the other samples
  (:mod:`fptq.reference.select`); ``select="error_static"``: the same between
  the two static candidates only (the rule until 2026-11-30);
* ``lae_static``: if the group's ``1/s`` folds exactly into its producer
  (:func:`fold_check`; see :mod:`fptq.models.arch`), the scales
  (:func:`fptq.reference.equalization_scales`, GQA-shared for o_proj) and the
  static scale of the equalized range; if it does not fold (OPT with a
  non-ReLU activation for fc2, a norm without an affine weight...), the group
  **falls back to per-token dynamic** and the plan records why;
* ``static``: ``act_scale`` from v; ``dynamic``: no static scale.

The same machinery takes SmoothQuant's scales for the comparison baseline
(``equalize=("smoothquant", alpha)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import reference as ref
from .. import spec
from ..spec import ActPolicy
from .arch import LINEAR_GROUPS, Arch, get_submodule

__all__ = ["GroupPlan", "Plan", "LayerRef", "PlanOptions", "SELECTIONS", "plan_groups", "attention_geometry",
           "fold_check"]

#: how a group's policy is chosen below v1 (:class:`PlanOptions`)
SELECTIONS = ("error", "error_static", "bands")


@dataclass
class GroupPlan:
    """The plan of one input-sharing group of one decoder layer.

    Attributes:
        layer: decoder layer index. prefix: its module path (``model.layers.3``).
        group: ``qkv`` | ``o`` | ``gate_up`` | ``down``.
        linears: full module names of the group's linears.
        v: float32 input range (max |x| over calibration).
        band: the policy the thresholds give. policy: the one applied (differs
            from ``band`` only on fallback or when forced).
        fold: full name of the module ``1/s`` was folded into (None if no equalization).
        fallback: why an LAE-band group could not be folded (None otherwise).
        v_after: input range after equalization (``max_j m_j / s_j``), or None.
        act_scale: float32 static activation scale, or None for dynamic.
        s: float32 [K] equalization scales over the input channels, or None.
        s_fold: float32 divisors of the fold target's output rows / norm channels
            (equal to ``s`` except for o_proj under GQA: one per kv channel).
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

    def input_channel_max(self) -> np.ndarray:
        """float32 [K]: channel maxima of the input the quantized linear sees (``m / s`` after LAE)."""
        return ref.equalized_channel_max(self.m, self.s)

    def to_json(self) -> dict:
        """JSON-able summary (no arrays)."""
        return {"layer": self.layer, "group": self.group, "linears": list(self.linears),
                "v": float(self.v), "band": self.band.value, "policy": self.policy.value,
                "fold": self.fold, "fallback": self.fallback,
                "v_after": None if self.v_after is None else float(self.v_after),
                "act_scale": None if self.act_scale is None else float(self.act_scale),
                "err_static": self.err_static, "err_lae": self.err_lae, "err_dynamic": self.err_dynamic}


@dataclass
class Plan:
    """All groups of all layers, plus the thresholds that produced them."""

    v0: float
    v1: float
    groups: list[GroupPlan] = field(default_factory=list)

    def by_linear(self) -> dict[str, GroupPlan]:
        """full linear name -> its group's plan."""
        return {name: g for g in self.groups for name in g.linears}

    def to_json(self) -> dict:
        return {"v0": self.v0, "v1": self.v1, "groups": [g.to_json() for g in self.groups]}

    def counts(self) -> dict[str, int]:
        """How many groups ended in each policy (and how many fell back)."""
        out = {p.value: 0 for p in ActPolicy}
        for g in self.groups:
            out[g.policy.value] += 1
        out["fallback"] = sum(g.fallback is not None for g in self.groups)
        return out


def attention_geometry(config, layer, arch: Arch) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` of a layer's attention, checked against the weights."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    o = get_submodule(layer, arch.o)
    v = get_submodule(layer, arch.v)
    head_dim = int(getattr(get_submodule(layer, arch.o.rsplit(".", 1)[0]), "head_dim", 0)
                   or o.in_features // n_heads)
    if o.in_features != n_heads * head_dim or v.out_features != n_kv * head_dim or n_heads % n_kv:
        raise ValueError(f"attention geometry n_heads={n_heads}, n_kv={n_kv}, head_dim={head_dim} does not "
                         f"match o_proj in={o.in_features} / v_proj out={v.out_features}")
    return n_heads, n_kv, head_dim


def fold_check(arch: Arch, group: str, layer, config) -> str | None:
    """None if ``1/s`` of this group folds exactly into its producer, else the reason it does not."""
    if group in ("qkv", "gate_up"):
        norm = get_submodule(layer, arch.attn_norm if group == "qkv" else arch.mlp_norm)
        if getattr(norm, "weight", None) is None:
            return f"{type(norm).__name__} has no affine weight to fold 1/s into"
        return None
    if group == "o":
        try:
            attention_geometry(config, layer, arch)
        except ValueError as e:
            return str(e)
        return None
    if arch.down_fold is None:
        return "no linear produces the down projection's input"
    from .rotate import input_rotation_of  # torch is there when a layer is planned

    if input_rotation_of(get_submodule(layer, arch.down)) is not None:
        return (f"{arch.down}'s input is rotated at run time (--rotate online): 1/s on {arch.down_fold}'s rows "
                "would scale the channels before the rotation mixes them")
    if arch.down_fold_acts is not None:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        act = getattr(cfg, arch.act_attr, None)
        if act not in arch.down_fold_acts:
            return (f"activation {act!r} is not positively homogeneous: act(a/s) != act(a)/s, "
                    f"so 1/s cannot be folded into {arch.down_fold}'s rows")
    return None


@dataclass(frozen=True)
class LayerRef:
    """One decoder layer of a model: ``index``, module path ``prefix`` (``model.layers.3``),
    the ``layer`` module itself, the model's :class:`~fptq.models.arch.Arch` and transformers ``config``."""

    index: int
    prefix: str
    layer: object
    arch: Arch
    config: object


@dataclass(frozen=True)
class PlanOptions:
    """How groups are planned (everything but the statistics).

    Attributes:
        v0, v1: the policy thresholds.
        force: one policy for every group regardless of its band (the naive baselines: all
            ``dynamic`` or all ``static``; ``lae_static`` = LAE on every foldable input); None = FPTQ.
        equalize: ``"lae"`` or ``("smoothquant", alpha)``: the scales equalizing groups get.
        select: ``"bands"`` (the paper: v0 and v1 decide), ``"error"``: below v1, ``static``,
            ``lae_static`` or ``dynamic`` by the output error measured on held-out calibration rows
            (v0 then unused), or ``"error_static"``: the same between the static two only.
        groups: which groups are equalized and quantized (the others stay float).
    """

    v0: float = spec.DEFAULT_V0
    v1: float = spec.DEFAULT_V1
    force: str | None = None
    equalize: object = "lae"
    select: str = "bands"
    groups: tuple = LINEAR_GROUPS

    def __post_init__(self):
        spec.select_policy(0.0, self.v0, self.v1)  # validates 0 <= v0 < v1
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.force is not None:
            ActPolicy(self.force)
        bad = set(self.groups) - set(LINEAR_GROUPS)
        if bad:
            raise ValueError(f"unknown linear groups {sorted(bad)}; choose from {LINEAR_GROUPS}")


def _weights(lr: LayerRef, group: str) -> list[np.ndarray]:
    return [get_submodule(lr.layer, p).weight.detach().cpu().float().numpy() for p in lr.arch.group_linears(group)]


def _equalize(gp: GroupPlan, lr: LayerRef, equalize) -> None:
    """Set ``gp.s``, ``gp.s_fold`` and ``gp.v_after`` (:func:`fptq.reference.equalization_scales`)."""
    w_colmax = None
    if equalize != "lae":
        w_colmax = ref.weight_column_max(_weights(lr, gp.group))
    kv = attention_geometry(lr.config, lr.layer, lr.arch) if gp.group == "o" else None
    gp.s, gp.s_fold = ref.equalization_scales(gp.m, equalize, w_colmax, kv)
    gp.v_after = float(ref.equalized_amax(gp.m, gp.s))


def _fold_target(arch: Arch, group: str, prefix: str) -> str:
    rel = {"qkv": arch.attn_norm, "gate_up": arch.mlp_norm, "o": arch.v, "down": arch.down_fold}[group]
    return f"{prefix}.{rel}"


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)


def _judging_rows(samples, names: tuple, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, m_fit)``: the rows candidates are judged on and the channel maxima their scales come
    from: the held-out rows and the other samples' maxima when ``samples`` holds samples out
    (:class:`fptq.models.calibrate.LayerSamples`), else the kept rows and ``m`` (all samples)."""
    if not samples or names[0] not in samples:
        raise ValueError("select='error' needs calibration samples of every linear input")
    heldout, fit_max = getattr(samples, "heldout", None), getattr(samples, "fit_max", None)
    if heldout and names[0] in heldout:
        return _as_numpy(heldout[names[0]]), ref.group_channel_max([fit_max[n] for n in names])
    return _as_numpy(samples[names[0]]), m


def _select_by_error(gp: GroupPlan, x: np.ndarray, m_fit: np.ndarray, lr: LayerRef, equalize, weight_fn,
                     dynamic: bool) -> None:
    """Keep the candidate with the smallest error on rows ``x``, each candidate's scales taken from
    the channel maxima ``m_fit``: ``static``, ``lae_static`` (if it folds) and, if ``dynamic``,
    per-token ``dynamic``."""
    weights = _weights(lr, gp.group)
    v_fit = float(np.max(m_fit)) if m_fit.size else 0.0
    if dynamic:
        gp.err_static, gp.err_dynamic = ref.static_and_dynamic_errors(x, weights, ref.static_act_scale(v_fit),
                                                                      weight_fn)
    else:
        gp.err_static = ref.static_candidate_error(x, weights, ref.static_act_scale(v_fit), None, weight_fn)
    if fold_check(lr.arch, gp.group, lr.layer, lr.config) is None:
        trial = GroupPlan(gp.layer, gp.prefix, gp.group, gp.linears, v_fit, gp.band, ActPolicy.LAE_STATIC,
                          m=m_fit)
        _equalize(trial, lr, equalize)
        gp.err_lae = ref.static_candidate_error(x, weights, ref.static_act_scale(trial.v_after), trial.s, weight_fn)
    elif not dynamic:
        return  # no LAE candidate: the band decides (an LAE-band group falls back to dynamic)
    gp.policy = ref.select_by_error(gp.err_static, gp.err_lae, gp.err_dynamic)


def plan_groups(lr: LayerRef, stats: dict, options: PlanOptions = PlanOptions(), *,
               samples: dict | None = None, weight_fn=None) -> list[GroupPlan]:
    """Plan the groups of one decoder layer from its calibration statistics.

    Args:
        lr: the layer (:class:`LayerRef`).
        stats: full linear name -> float32 [K] channel maxima.
        options: :class:`PlanOptions`.
        samples: full linear name -> float32 rows [n, K] of its input (ndarray or CPU tensor);
            needed by ``select="error"``/``"error_static"``. A
            :class:`fptq.models.calibrate.LayerSamples` with held-out rows has the candidates
            judged on those rows with scales from the other samples' maxima.
        weight_fn: ``f(w, channel_weight) -> float32 [N, K]``, the weight the model will store
            (e.g. INT4 quantize-dequantize), used by ``select="error"``; None = float weights.
    Returns:
        one :class:`GroupPlan` per group of ``options.groups``, in :data:`LINEAR_GROUPS` order.
    """
    out = []
    for group in LINEAR_GROUPS:
        if group not in options.groups:
            continue
        names = tuple(f"{lr.prefix}.{p}" for p in lr.arch.group_linears(group))
        m = ref.group_channel_max([stats[n] for n in names])
        v = float(np.max(m)) if m.size else 0.0
        band = spec.select_policy(v, options.v0, options.v1)
        policy = band if options.force is None else ActPolicy(options.force)
        gp = GroupPlan(lr.index, lr.prefix, group, names, v, band, policy, m=m)
        if options.select != "bands" and options.force is None and band is not ActPolicy.DYNAMIC:
            x, m_fit = _judging_rows(samples, names, m)
            _select_by_error(gp, x, m_fit, lr, options.equalize, weight_fn, dynamic=options.select == "error")
        if gp.policy is ActPolicy.LAE_STATIC:
            reason = fold_check(lr.arch, group, lr.layer, lr.config)
            if reason is None:
                gp.fold = _fold_target(lr.arch, group, lr.prefix)
                _equalize(gp, lr, options.equalize)
            else:
                gp.policy, gp.fallback = ActPolicy.DYNAMIC, reason
        if gp.policy is ActPolicy.STATIC:
            gp.act_scale = ref.static_act_scale(v)
        elif gp.policy is ActPolicy.LAE_STATIC:
            gp.act_scale = ref.static_act_scale(gp.v_after)
        out.append(gp)
    return out
