"""Numba kernels of the ``numba`` backend, one module per spec section.

Importing this package imports numba (the backend imports it only when
constructed). Kernels take validated, C-contiguous NumPy arrays of the spec's
dtypes; the checks live in :class:`fptq.backends.base.BackendBase` (the
numba backend's base class). Besides the sections: :mod:`.simd` (the SIMD dot
products of the matmul), :mod:`.blocked` (the prepared-linear kernel) and
:mod:`.tile` (its LLVM IR tile); the nibble constants are in :mod:`.packing`,
from the formats table. Compilation options: :mod:`._jit` (``cache=True``, no
fast-math).
"""

from . import activation, blocked, lae, matmul, packing, policy, simd, tile, weights
from ._jit import JIT_OPTIONS

__all__ = ["activation", "blocked", "lae", "matmul", "packing", "policy", "simd", "tile", "weights", "JIT_OPTIONS"]
