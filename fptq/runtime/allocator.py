"""Freed memory kept in the process for the next forward: glibc malloc's thresholds for the runtime.

A prefill allocates and frees its activations layer by layer: on Qwen2.5-Coder-1.5B, 512 tokens, about
75 MB per decoder layer (the gate and up outputs and the MLP activation alone are 18 MB each). glibc's
malloc hands a freed block above its mmap threshold back to the kernel, and trims the heap's top above
its trim threshold; the next layer's allocation of the same size then faults every page in again, each
one zeroed by the kernel. Measured: **375,424 minor page faults per 512-token 1.5B prefill** (1.5 GB of
pages) and 0.67-0.74 s of system CPU; with the thresholds below, 0 faults and 0.01 s
(``getrusage`` around ``Runtime.forward``, 2026-12-07; ``docs/benchmarks.md``).

:func:`keep_freed_memory` sets, once per process, ``M_MMAP_THRESHOLD`` to glibc's largest value
(:data:`MMAP_THRESHOLD`, 32 MiB on 64-bit: blocks up to it come from the heap and are reused) and
``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` (the heap keeps up to that much free memory at its top).
The cost: the process keeps the pages of its largest transient working set after a forward instead of
returning them (on the 1.5B about the 75 MB of one layer's activations). Where the C library is not
glibc (macOS, musl, Windows) nothing is changed. The setting is process-wide and cannot be undone by
fptq; ``Runtime(..., keep_freed_memory=False)`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: glibc's ``mallopt`` parameter numbers (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``: 4 MiB * sizeof(long))
MMAP_THRESHOLD = 32 << 20
#: free memory the heap's top may keep before glibc returns it
TRIM_THRESHOLD = 1 << 30


def _glibc():
    """The C library if it is glibc (has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring) once per process; True if both were set,
    False where the C library is not glibc or refused a value."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD))
