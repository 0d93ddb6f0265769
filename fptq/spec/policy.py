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

from . import validate as V
from .arrays import NUMPY
from .formats import DEFAULT_V0, DEFAULT_V1, FLOAT, POLICY_CODES, ActPolicy

__all__ = ["POLICY_CODES", "select_policy", "select_policies"]

_BY_CODE = {c: p for p, c in POLICY_CODES.items()}


def select_policies(v, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> np.ndarray:
    """Vectorized policy selection.

    Args:
        v: float32 array of ranges (>= 0, finite), any shape.
        v0, v1: thresholds: real numbers (not bool), finite as float32, 0 <= v0 < v1.
    Returns:
        uint8 array of the same shape holding ``POLICY_CODES`` (0 static,
        1 LAE + static, 2 dynamic).
    """
    v, t0, t1 = V.select_policies(NUMPY, v, v0, v1)
    return _select(v, t0, t1)


def _select(v: np.ndarray, t0: np.float32, t1: np.float32) -> np.ndarray:
    """Unchecked :func:`select_policies` (v float32 >= 0, float32 thresholds 0 <= t0 < t1)."""
    c = {p: np.uint8(code) for p, code in POLICY_CODES.items()}
    return np.where(v < t0, c[ActPolicy.STATIC],
                    np.where(v < t1, c[ActPolicy.LAE_STATIC], c[ActPolicy.DYNAMIC])).astype(np.uint8)


def select_policy(v: float, v0: float = DEFAULT_V0, v1: float = DEFAULT_V1) -> ActPolicy:
    """The :class:`ActPolicy` of one layer whose input range is ``v``."""
    return _BY_CODE[int(select_policies(np.array([v], dtype=FLOAT), v0, v1)[0])]
