"""The ``numpy`` backend: the spec itself (the reference every other backend is checked against).

Each operation is the :mod:`fptq.spec` function of the same name, which checks its arguments once
(:mod:`fptq.spec.validate`) and runs its unchecked implementation (e.g.
``fptq.spec.matmul._group_sums`` / ``_epilogue``).
"""

from __future__ import annotations

import numpy as np

from .base import ReferenceFallback


class NumpyBackend(ReferenceFallback):
    """The NumPy reference: every operation is the :mod:`fptq.spec` function of the same name."""

    name = "numpy"

    def from_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def to_numpy(self, t) -> np.ndarray:
        return np.asarray(t)

    def _n(self, t):
        """Arguments go to the spec as they are: its checks read them (``fptq.spec.arrays.NUMPY``),
        so a foreign tensor NumPy cannot hold is a TypeError naming the argument (docs/spec.md §9)."""
        return t

    def describe(self) -> str:
        return f"numpy {np.__version__} (CPU, the reference)"
