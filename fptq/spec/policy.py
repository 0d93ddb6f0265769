"""The layerwise activation policy of FPTQ (spec section 7).

For every linear layer, ``v`` is the range of its input activation: the
maximum |x| over the whole calibration set (the max of its channel maxima).

* ``v < v0``        -> ``ActPolicy.STATIC``      per-tensor static INT8
* ``v0 <= v < v1``  -> ``ActPolicy.LAE_STATIC``  LAE, then per-tensor static INT8
* ``v >= v1``       -> ``ActPolicy.DYNAMIC``     per-token dynamic INT8

Defaults ``v0 = 15``, ``v1 = 150`` (the paper's, tuned on LLaMA-7B).
The comparisons are exact float comparisons of float32 v against the
thresholds converted to float32.
"""

from __future__ import annotations

import numpy as np

from .formats import DEFAULT_V0, DEFAULT_V1, FLOAT, ActPolicy
from .validate import as_float32

__all__ = ["POLICY_CODES", "policy_thresholds", "select_policy", "select_policies"]

#: Integer codes used for arrays of policies (backends return these).
POLICY_CODES = {ActPolicy.STATIC: 0, ActPolicy.LAE_STATIC: 1, ActPolicy.DYNAMIC: 2}
_BY_CODE = {c: p for p, c in POLICY_CODES.items()}


def policy_thresholds(v0, v1) -> tuple[np.float32, np.float32]:
    """The thresholds as float32, checked: ``0 <= v0 < v1`` (ValueError otherwise)."""
    t = as_float32(np.array([v0, v1], dtype=np.float64), "v0/v1")
    if not 0 <= t[0] < t[1]:
        raise ValueError(f"thresholds must satisfy 0 <= v0 < v1, got v0={v0}, v1={v1}")
    return t[0], t[1]


def select_policies(v, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> np.ndarray:
    """Vectorized policy selection.

    Args:
        v: float32 array of ranges (>= 0, finite), any shape.
        v0, v1: thresholds, 0 <= v0 < v1.
    Returns:
        uint8 array of the same shape holding ``POLICY_CODES`` (0 static,
        1 LAE + static, 2 dynamic).
    """
    v = as_float32(v, "v")
    if v.size and (v < 0).any():
        raise ValueError("v (activation range) must be >= 0")
    t0, t1 = policy_thresholds(v0, v1)
    return np.where(v < t0, 0, np.where(v < t1, 1, 2)).astype(np.uint8)


def select_policy(v: float, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> ActPolicy:
    """The :class:`ActPolicy` of one layer whose input range is ``v``."""
    return _BY_CODE[int(select_policies(np.array([v], dtype=FLOAT), v0, v1)[0])]
