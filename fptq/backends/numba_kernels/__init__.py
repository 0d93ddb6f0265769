"""Numba kernels of the ``numba`` backend, one module per spec section.

Importing this package imports numba (the backend imports it only when
constructed). Kernels take validated, C-contiguous NumPy arrays of the spec's
dtypes; the checks live in :class:`fptq.backends.numba_backend.NumbaBackend`.
Compilation options: :mod:`._jit` (``cache=True``, no fast-math).
"""

from . import activation, blocked, lae, matmul, packing, policy, weights
from ._jit import JIT_OPTIONS

__all__ = ["activation", "blocked", "lae", "matmul", "packing", "policy", "weights", "JIT_OPTIONS"]
