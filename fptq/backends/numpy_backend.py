"""The ``numpy`` backend: the spec itself (the reference every other backend is checked against)."""

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

    def describe(self) -> str:
        return f"numpy {np.__version__} (CPU, the reference)"
