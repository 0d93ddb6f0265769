"""The per-layer FPTQ plan: each input-sharing group's range, band, policy and LAE scales.

For every decoder layer and every group of :data:`fptq.models.arch.LINEAR_GROUPS`
(linears sharing one input X with channel maxima ``m``):

* ``v = max_j m_j`` (float32) and the band ``select_policy(v, v0, v1)``;
* band ``static``: per-tensor static INT8, ``act_scale = act_scale_from_amax(v)``;
* band ``lae_static``: if the group's ``1/s`` folds exactly into its producer
  (see :mod:`fptq.models.arch`), ``s = lae_scales(m)`` and the static scale is
  re-measured *exactly* from the maxima: ``v' = max_j float32(m_j / s_j)``
  (float32 division is monotone, so this is the amax of ``X / s`` over the
  calibration set), ``act_scale = act_scale_from_amax(v')``. If it does not
  fold (OPT with a non-ReLU activation for fc2, a norm without an affine
  weight...), the group **falls back to per-token dynamic** and the plan
  records why;
* band ``dynamic``: per-token dynamic INT8, no static scale.

**o_proj under grouped-query attention.** o_proj's input channel
``(h, d)`` (q head h, head dim d) is ``sum_t p[h, t] * v[t, kv(h), d]``
with ``kv(h) = h // (n_heads / n_kv)``: dividing v_proj's output row
``(kv, d)`` by ``u`` divides o_proj's input channels ``(h, d)`` of *every* q
head sharing that kv head by the same ``u``. So the scale must be equal over
those heads. fptq uses ``u_(kv, d) = lae_scales(max_{h: kv(h)=kv} m_(h, d))``,
which equals the max over those heads of their own LAE scales (``m / log2(2+m)``
is increasing in m for m >= 0, and float32 rounding is monotone). Every channel
then ends at most at its own LAE target ``log2(2 + m)``, the loudest exactly at it.

The same machinery takes SmoothQuant's scales (``s_j = m_j^a / w_j^(1-a)``,
``w_j`` = max |W[:, j]| over the group) for the comparison baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import spec
from ..spec import ActPolicy
from .arch import LINEAR_GROUPS, Arch, get_submodule

__all__ = ["GroupPlan", "Plan", "plan_layer", "attention_geometry", "fold_check", "smoothquant_scales"]


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
        err_static, err_lae: with ``select="error"``, the measured output error of
            the two static candidates on calibration rows (None otherwise).
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

    def input_channel_max(self) -> np.ndarray:
        """float32 [K]: channel maxima of the input the quantized linear sees (``m / s`` after LAE)."""
        return self.m if self.s is None else (self.m / self.s).astype(np.float32)

    def to_json(self) -> dict:
        """JSON-able summary (no arrays)."""
        return {"layer": self.layer, "group": self.group, "linears": list(self.linears),
                "v": float(self.v), "band": self.band.value, "policy": self.policy.value,
                "fold": self.fold, "fallback": self.fallback,
                "v_after": None if self.v_after is None else float(self.v_after),
                "act_scale": None if self.act_scale is None else float(self.act_scale),
                "err_static": self.err_static, "err_lae": self.err_lae}


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
    if arch.down_fold_acts is not None:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        act = getattr(cfg, arch.act_attr, None)
        if act not in arch.down_fold_acts:
            return (f"activation {act!r} is not positively homogeneous: act(a/s) != act(a)/s, "
                    f"so 1/s cannot be folded into {arch.down_fold}'s rows")
    return None


def smoothquant_scales(m: np.ndarray, w_colmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's ``s_j = m_j^alpha / w_j^(1 - alpha)`` (float32; channels with m_j or w_j
    below 2**-126 get s_j = 1, like LAE's dead channels)."""
    m = m.astype(np.float64)
    w = w_colmax.astype(np.float64)
    ok = (m >= float(spec.MIN_SCALE)) & (w >= float(spec.MIN_SCALE))
    s = np.where(ok, np.power(np.maximum(m, 1e-30), alpha) / np.power(np.maximum(w, 1e-30), 1 - alpha), 1.0)
    return np.maximum(s, float(spec.MIN_SCALE)).astype(np.float32)


def _group_input_max(stats: dict, names) -> np.ndarray:
    ms = [stats[n] for n in names]
    m = ms[0]
    for x in ms[1:]:
        m = np.maximum(m, x)
    return m.astype(np.float32)


def _scales(equalize, m: np.ndarray, layer, arch: Arch, group: str) -> np.ndarray:
    if equalize == "lae":
        return spec.lae_scales(m)
    kind, alpha = equalize
    assert kind == "smoothquant"
    w = np.max([get_submodule(layer, p).weight.detach().abs().amax(dim=0).cpu().numpy()
                for p in arch.group_linears(group)], axis=0)
    return smoothquant_scales(m, w, alpha)


def _equalize_group(gp: GroupPlan, m, layer, arch, config, equalize) -> None:
    if gp.group == "o":
        n_heads, n_kv, hd = attention_geometry(config, layer, arch)
        rep = n_heads // n_kv
        m_kv = m.reshape(n_kv, rep, hd).max(axis=1).reshape(-1)
        if equalize == "lae":
            s_kv = spec.lae_scales(m_kv)
        else:
            s_full = _scales(equalize, m, layer, arch, gp.group)
            s_kv = s_full.reshape(n_kv, rep, hd).max(axis=1).reshape(-1)
        s = np.repeat(s_kv.reshape(n_kv, 1, hd), rep, axis=1).reshape(-1)
        gp.s, gp.s_fold = s.astype(np.float32), s_kv.astype(np.float32)
    else:
        gp.s = _scales(equalize, m, layer, arch, gp.group)
        gp.s_fold = gp.s
    gp.v_after = float(np.max((m / gp.s).astype(np.float32))) if m.size else 0.0


def _fold_target(arch: Arch, group: str, prefix: str) -> str:
    rel = {"qkv": arch.attn_norm, "gate_up": arch.mlp_norm, "o": arch.v, "down": arch.down_fold}[group]
    return f"{prefix}.{rel}"


def _group_error(x, layer, arch: Arch, group: str, s, act_scale: float, weight_fn) -> float:
    """``sum_l || fq(x / s) (Q(W_l * s))^T - x W_l^T ||^2`` over the group's linears l
    (``s = None``: no equalization; ``fq``: static INT8 fake quantization with ``act_scale``;
    ``Q``: ``weight_fn(w, channel_weight)`` or identity)."""
    import torch

    from .qlinear import fake_quant_act

    scale = torch.tensor([act_scale], dtype=torch.float32)
    xs = x if s is None else x / torch.from_numpy(s)
    xq = fake_quant_act(xs, ActPolicy.STATIC, scale)
    cmax = xs.abs().amax(dim=0).numpy()
    err = 0.0
    for path in arch.group_linears(group):
        w = get_submodule(layer, path).weight.detach().to(torch.float32)
        ref = x @ w.T
        wn = w.numpy() if s is None else spec.lae_apply_weight(w.numpy(), s)
        if weight_fn is not None:
            wn = weight_fn(wn, np.square(cmax))
        err += float(((xq @ torch.from_numpy(np.ascontiguousarray(wn)).T - ref) ** 2).sum())
    return err


def _select_by_error(gp: GroupPlan, x, layer, arch: Arch, config, equalize, weight_fn) -> None:
    """Between ``static`` and ``lae_static``, keep the one with the smaller measured error."""
    scale_static = float(spec.act_scale_from_amax(np.float32(gp.v)))
    gp.err_static = _group_error(x, layer, arch, gp.group, None, scale_static, weight_fn)
    if fold_check(arch, gp.group, layer, config) is not None:
        return  # no LAE candidate: the band decides (an LAE-band group falls back to dynamic)
    trial = GroupPlan(gp.layer, gp.prefix, gp.group, gp.linears, gp.v, gp.band, ActPolicy.LAE_STATIC, m=gp.m)
    _equalize_group(trial, gp.m, layer, arch, config, equalize)
    scale_lae = float(spec.act_scale_from_amax(np.float32(trial.v_after)))
    gp.err_lae = _group_error(x, layer, arch, gp.group, trial.s, scale_lae, weight_fn)
    gp.policy = ActPolicy.LAE_STATIC if gp.err_lae < gp.err_static else ActPolicy.STATIC


def plan_layer(index: int, prefix: str, layer, arch: Arch, config, stats: dict,
               v0: float = spec.DEFAULT_V0, v1: float = spec.DEFAULT_V1,
               force: ActPolicy | None = None, equalize="lae", select: str = "bands",
               samples: dict | None = None, weight_fn=None) -> list[GroupPlan]:
    """Plan the four groups of one decoder layer from its calibration statistics.

    Args:
        stats: full linear name -> float32 [K] channel maxima.
        force: apply this policy to every group regardless of its band (the naive
            baselines: all ``DYNAMIC`` or all ``STATIC``; ``LAE_STATIC`` = LAE on every
            foldable input). None = FPTQ's bands.
        equalize: ``"lae"`` or ``("smoothquant", alpha)``: which scales the
            equalizing groups get.
        select: ``"bands"`` (the paper: v0 and v1 decide) or ``"error"``: below v1,
            choose between ``static`` and ``lae_static`` by the output error measured
            on calibration rows (``samples``: full linear name -> float32 tensor
            [n, K]), with weights passed through ``weight_fn(w, channel_weight)``
            (e.g. INT4 quantize-dequantize); v0 is then not used.
    Returns:
        one :class:`GroupPlan` per group, in :data:`LINEAR_GROUPS` order.
    """
    out = []
    for group in LINEAR_GROUPS:
        names = tuple(f"{prefix}.{p}" for p in arch.group_linears(group))
        m = _group_input_max(stats, names)
        v = float(np.max(m)) if m.size else 0.0
        band = spec.select_policy(v, v0, v1)
        policy = band if force is None else ActPolicy(force)
        gp = GroupPlan(index, prefix, group, names, v, band, policy, m=m)
        if select == "error" and force is None and band is not ActPolicy.DYNAMIC:
            if not samples or names[0] not in samples:
                raise ValueError("select='error' needs calibration samples of every linear input")
            _select_by_error(gp, samples[names[0]], layer, arch, config, equalize, weight_fn)
        elif select not in ("bands", "error"):
            raise ValueError(f"select must be 'bands' or 'error', got {select!r}")
        if gp.policy is ActPolicy.LAE_STATIC:
            reason = fold_check(arch, group, layer, config)
            if reason is None:
                gp.fold = _fold_target(arch, group, prefix)
                _equalize_group(gp, m, layer, arch, config, equalize)
            else:
                gp.policy, gp.fallback = ActPolicy.DYNAMIC, reason
        if gp.policy is ActPolicy.STATIC:
            gp.act_scale = float(spec.act_scale_from_amax(np.float32(v)))
        elif gp.policy is ActPolicy.LAE_STATIC:
            gp.act_scale = float(spec.act_scale_from_amax(np.float32(gp.v_after)))
        out.append(gp)
    return out
