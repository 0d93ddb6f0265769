"""The per-layer FPTQ plan: activation policy, LAE scales, static activation scale.

From a layer's calibration channel maxima ``m`` (float32 [K])::

    v      = max_j m_j                                   the layer's input range
    policy = select_policy(v, v0, v1)                    spec section 7
    s      = lae_scales(m)            if policy is LAE_STATIC, else None  (section 3)
    amax'  = max_j float32(m_j / s_j) if LAE, else v     range of the equalized input X / s
    scale  = act_scale_from_amax(amax')  if the policy is static, else None (section 2)

``amax'`` is exact, not an estimate: float32 division by a positive s_j is
correctly rounded, hence monotone in |x| and symmetric in sign, so
``max_t |float32(x[t, j] / s_j)| = float32(max_t |x[t, j]| / s_j)``: re-measuring
the equalized activations on the calibration set gives the same bits
(``tests/test_reference.py`` checks it).

Pure NumPy and framework-free: the model pipeline calls these functions with
numpy arrays of the statistics it gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec import (
    DEFAULT_V0, DEFAULT_V1, ActPolicy, act_scale_from_amax, lae_scales, select_policy,
)
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_ndim

__all__ = ["LayerPlan", "equalized_amax", "plan_layer", "plan_layers", "with_policy"]


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


def with_policy(plan_or_name, channel_max, policy: ActPolicy | str, note: str = "") -> LayerPlan:
    """A plan with the given policy regardless of v (baselines, or LAE that cannot be folded).

    Args:
        plan_or_name: a :class:`LayerPlan` (its name is reused) or a layer name.
        channel_max: float32 [K] calibration channel maxima.
        policy: the policy to use. note: recorded in the plan.
    """
    name = plan_or_name.name if isinstance(plan_or_name, LayerPlan) else str(plan_or_name)
    m = _channel_max(channel_max, name)
    policy = ActPolicy(policy)
    v = FLOAT(m.max(initial=FLOAT(0)))
    s = lae_scales(m) if policy is ActPolicy.LAE_STATIC else None
    amax = equalized_amax(m, s) if s is not None else v
    scale = None if policy is ActPolicy.DYNAMIC else act_scale_from_amax(amax)
    return LayerPlan(name, v, policy, s, scale, note)


def plan_layer(name: str, channel_max, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> LayerPlan:
    """The FPTQ plan of one layer from its calibration channel maxima.

    Args:
        name: layer name. channel_max: float32 [K], >= 0, finite.
        v0, v1: the policy thresholds (0 <= v0 < v1; defaults 15 and 150).
    Returns:
        :class:`LayerPlan`; ``v < v0`` static, ``v0 <= v < v1`` LAE + static,
        ``v >= v1`` per-token dynamic.
    """
    m = _channel_max(channel_max, name)
    policy = select_policy(FLOAT(m.max(initial=FLOAT(0))), v0, v1)
    return with_policy(name, m, policy)


def plan_layers(channel_maxima: dict, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> dict[str, LayerPlan]:
    """``{name: plan_layer(name, m, v0, v1)}`` for a dict of channel maxima
    (e.g. :meth:`fptq.reference.CalibrationStats.channel_maxima`)."""
    return {name: plan_layer(name, m, v0, v1) for name, m in channel_maxima.items()}

