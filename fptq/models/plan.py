"""The per-layer FPTQ plan of a transformers model: what the planner needs, read from the model.

For every decoder layer and every group of :data:`fptq.models.arch.LINEAR_GROUPS`
(linears sharing one input X), :func:`plan_groups` reads what the model holds
(calibration maxima and rows by module name, weights, norms, attention
geometry, whether ``1/s`` folds into the input's producer: :func:`fold_check`)
into a :class:`fptq.reference.plan.GroupInputs` and runs the one planner,
:func:`fptq.reference.plan_group` (its strategies: the paper's bands, or the
candidate with the smallest measured output error; LAE, SmoothQuant or a weight
quantizer's searched scales; the fallback to per-token dynamic when ``1/s``
does not fold). This module does no math of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import reference as ref
from .. import spec
from ..reference.plan import SELECTIONS, GroupInputs, GroupPlan
from ..spec import ActPolicy
from .arch import LINEAR_GROUPS, Arch, get_submodule
from .rotate import input_rotation_of

__all__ = ["GroupPlan", "Plan", "LayerRef", "PlanOptions", "SELECTIONS", "plan_groups", "attention_geometry",
           "fold_check"]


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
            (v0 then unused), ``"error_static"``: the same between the static two only, or
            ``"all_static"``: static or LAE + static for every group, never per-token dynamic
            (:data:`fptq.reference.plan.SELECTION_TABLE` declares them).
        groups: which groups are equalized and quantized (the others stay float).
        weight_scales: the weight quantizer's scale search ``f(x, weights, kv_heads) -> (s, s_fold)``
            (a registry entry's ``scale_search`` with its group size and format bound), or None.
    """

    v0: float = spec.DEFAULT_V0
    v1: float = spec.DEFAULT_V1
    force: str | None = None
    equalize: object = "lae"
    select: str = "bands"
    groups: tuple = LINEAR_GROUPS
    weight_scales: object = None

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


def _fold_target(arch: Arch, group: str, prefix: str) -> str:
    rel = {"qkv": arch.attn_norm, "gate_up": arch.mlp_norm, "o": arch.v, "down": arch.down_fold}[group]
    return f"{prefix}.{rel}"


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)


def _judging_rows(samples, names: tuple, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, m_fit)``: the rows candidates are judged on and the channel maxima their scales come
    from: the held-out rows and the other samples' maxima when ``samples`` holds samples out
    (:class:`fptq.models.layer_pass.LayerSamples`), else the kept rows and ``m`` (all samples)."""
    if not samples or names[0] not in samples:
        raise ValueError("select='error' needs calibration samples of every linear input")
    heldout, fit_max = getattr(samples, "heldout", None), getattr(samples, "fit_max", None)
    if heldout and names[0] in heldout:
        return _as_numpy(heldout[names[0]]), ref.group_channel_max([fit_max[n] for n in names])
    return _as_numpy(samples[names[0]]), m


def _group_inputs(lr: LayerRef, group: str, stats: dict, samples) -> GroupInputs:
    """What :func:`fptq.reference.plan_group` reads of one group, as NumPy arrays (read lazily)."""
    names = tuple(f"{lr.prefix}.{p}" for p in lr.arch.group_linears(group))
    m = ref.group_channel_max([stats[n] for n in names])
    reason = fold_check(lr.arch, group, lr.layer, lr.config)
    kv = attention_geometry(lr.config, lr.layer, lr.arch) if group == "o" and reason is None else None
    rows = None
    if samples and names[0] in samples:
        rows = lambda: _as_numpy(samples[names[0]])  # noqa: E731
    return GroupInputs(lr.index, lr.prefix, group, names, m, weights=lambda: _weights(lr, group),
                       fold_reason=reason, fold_target=_fold_target(lr.arch, group, lr.prefix), kv_heads=kv,
                       judging_rows=lambda: _judging_rows(samples, names, m), scale_rows=rows)


def plan_groups(lr: LayerRef, stats: dict, options: PlanOptions = PlanOptions(), *,
               samples: dict | None = None, weight_fn=None) -> list[GroupPlan]:
    """Plan the groups of one decoder layer from its calibration statistics.

    Args:
        lr: the layer (:class:`LayerRef`).
        stats: full linear name -> float32 [K] channel maxima.
        options: :class:`PlanOptions`.
        samples: full linear name -> float32 rows [n, K] of its input (ndarray or CPU tensor);
            needed by ``select="error"``/``"error_static"``. A
            :class:`fptq.models.layer_pass.LayerSamples` with held-out rows has the candidates
            judged on those rows with scales from the other samples' maxima.
        weight_fn: ``f(w, channel_weight) -> float32 [N, K]``, the weight the model will store
            (e.g. INT4 quantize-dequantize), used by ``select="error"``; None = float weights.
    Returns:
        one :class:`GroupPlan` per group of ``options.groups``, in :data:`LINEAR_GROUPS` order.
    """
    out = []
    for group in LINEAR_GROUPS:
        if group in options.groups:
            out.append(ref.plan_group(_group_inputs(lr, group, stats, samples), options.v0, options.v1,
                                      force=options.force, select=options.select, equalize=options.equalize,
                                      weight_fn=weight_fn, weight_scales=options.weight_scales))
    return out
