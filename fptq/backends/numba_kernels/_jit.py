"""The one set of Numba compilation options every fptq kernel uses.

* ``cache=True``: compiled machine code is written next to the source
  (``__pycache__``, or ``NUMBA_CACHE_DIR``) so a second process loads it
  instead of recompiling. :mod:`._cache` makes the cache key cover every compiled
  source of fptq (a kernel's callees in other files and the formats table included),
  not only the defining file.
* ``fastmath`` is **off** (Numba's default, stated here so nobody adds it):
  fast-math would allow FMA contraction, reassociation and reciprocal
  multiplication, any of which breaks the spec's bit-exact float32 results.
  Without fast-math flags LLVM neither fuses ``a * b + c`` into an FMA nor
  turns ``x / s`` into ``x * (1 / s)``; ``tests/test_numba_backend.py`` has
  inputs on which either would change the bits.
* ``error_model="numpy"``: no Python-style division-by-zero checks in the
  loops (they block vectorization); inputs are validated before any kernel
  runs, and every divisor is a positive scale.
* ``nogil=True``: kernels release the GIL.

``parallel=True`` kernels put the per-item work in a separate ``@njit``
function called from the ``prange`` body: Numba's parfor lowering of an
inlined inner loop defeats LLVM's vectorizer (measured 80x slower on a
byte-reduction), a called function is vectorized normally.
"""

from __future__ import annotations

import numba

from . import _cache

_cache.install()

JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

njit = numba.njit(**JIT_OPTIONS)
#: for small helpers called once per group in hot loops: inlined at Numba IR level
#: (LLVM does not inline Numba's separately compiled functions; a call costs more than
#: a 64-byte chunk of work)
njit_inline = numba.njit(inline="always", **JIT_OPTIONS)
pnjit = numba.njit(parallel=True, **JIT_OPTIONS)
prange = numba.prange
