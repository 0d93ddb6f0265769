"""The process's C heap (glibc malloc), one place for what fptq asks of it: give freed pages back, keep them.

* :func:`trim` -- ``malloc_trim(0)``: the heap's free pages go back to the kernel. Quantization calls it
  after every calibration batch, quantized linear and layer (:func:`fptq.models.layer_pass.release_freed_memory`
  says what it saves), the runtime after re-laying out a model's linears (:func:`fptq.runtime.linears.give_back_freed`).
* :func:`keep_freed_memory` -- the opposite, for the runtime's forwards. A prefill allocates and frees its
  activations layer by layer: on Qwen2.5-Coder-1.5B, 512 tokens, about 75 MB per decoder layer (the gate and up
  outputs and the MLP activation alone are 18 MB each). glibc's malloc hands a freed block above its mmap
  threshold back to the kernel, and trims the heap's top above its trim threshold; the next layer's allocation
  of the same size then faults every page in again, each one zeroed by the kernel. Measured: **345,000-356,000
  minor page faults per 512-token 1.5B prefill** (1.4 GB of pages) and 0.69-0.81 s of system CPU; with the
  thresholds below, 0 faults and 0.00-0.01 s (``benchmarks/bench_prefill_allocator.py``, 2026-12-07;
  ``docs/benchmarks.md``). It sets, once per process, ``M_MMAP_THRESHOLD`` to glibc's largest value
  (:data:`MMAP_THRESHOLD`, 32 MiB on 64-bit: blocks up to it come from the heap and are reused) and
  ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` (the heap keeps up to that much free memory at its top; an
  explicit :func:`trim` still returns it). The cost: the process keeps the pages of its largest transient
  working set after a forward instead of returning them (on the 1.5B about the 75 MB of one layer's
  activations). Process-wide, and fptq does not undo it; a :class:`fptq.runtime.engine.Runtime` sets it unless
  built with ``keep_freed_memory=False``.

Where the C library is not glibc (macOS, musl, Windows) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "trim"]

#: glibc's ``mallopt`` parameter numbers (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``: 4 MiB * sizeof(long))
MMAP_THRESHOLD = 32 << 20
#: free memory the heap's top may keep before glibc returns it
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library if it is glibc (has ``gnu_get_libc_version``, ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version, libc.malloc_trim
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


def trim() -> None:
    """``malloc_trim(0)``: the heap's free pages back to the kernel (nothing where the C library is not glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
