"""Policy selection kernel (spec section 7): 0 if v < v0, 1 if v < v1, else 2."""

from __future__ import annotations

import numpy as np

from ...spec.formats import ActPolicy
from ...spec.policy import POLICY_CODES
from ._jit import njit

_STATIC = np.uint8(POLICY_CODES[ActPolicy.STATIC])
_LAE = np.uint8(POLICY_CODES[ActPolicy.LAE_STATIC])
_DYNAMIC = np.uint8(POLICY_CODES[ActPolicy.DYNAMIC])


@njit
def select_policies(v, t0, t1):
    """float32 [n] ranges, float32 thresholds t0 < t1 -> uint8 [n] policy codes."""
    out = np.empty(v.size, np.uint8)
    for i in range(v.size):
        x = v[i]
        out[i] = _STATIC if x < t0 else (_LAE if x < t1 else _DYNAMIC)
    return out
