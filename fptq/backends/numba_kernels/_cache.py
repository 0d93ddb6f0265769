"""Numba's on-disk cache, invalidated when *any* of fptq's compiled sources changes.

Numba keys a cached function by a hash of the one file that defines it. fptq's
kernels call functions of other files (``blocked.py`` -> ``tile.py``,
``packing.py``; ``fptq/runtime/forward.py`` -> the backend's kernels) and read
constants of ``fptq/spec/formats.py`` at compile time, and Numba inlines or
links those callees into the cached machine code. After an edit of a callee
alone (a ``git pull`` that leaves the caller's file untouched) Numba would load
the stale caller with the old callee baked in: wrong bits, or a segfault when
a signature changed (seen during development of the runtime).

:func:`install` puts one locator in front of each of Numba's file-backed
locators. For a function defined in fptq's compiled sources
(:data:`SOURCE_DIRS`) it behaves exactly like Numba's own, but its source stamp
is ``(numba's stamp, digest of every file of SOURCE_DIRS)``; any other function
is left to Numba. A stale index entry then no longer matches and Numba
recompiles and overwrites it (Numba compares the stamp for equality).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["SOURCE_DIRS", "sources_digest", "install"]

_FPTQ = Path(__file__).resolve().parents[2]
#: the directories whose Python files are compiled by Numba or read by compiled code
SOURCE_DIRS = (_FPTQ / "backends" / "numba_kernels", _FPTQ / "runtime", _FPTQ / "spec")


def _owned(py_file: str) -> bool:
    try:
        parent = Path(py_file).resolve().parent
    except OSError:
        return False
    return parent in SOURCE_DIRS


@lru_cache(maxsize=1)
def sources_digest() -> str:
    """SHA-256 over the names and contents of every ``*.py`` in :data:`SOURCE_DIRS` (sorted)."""
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for f in sorted(d.glob("*.py")):
            h.update(f"{d.name}/{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _guarded(base):
    """A subclass of Numba locator ``base`` that takes only fptq's sources and stamps them with the digest."""

    class Guarded(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if _owned(py_file) else None

        def get_source_stamp(self):
            return (super().get_source_stamp(), sources_digest())

    Guarded.__name__ = Guarded.__qualname__ = f"Fptq{base.__name__}"
    return Guarded


def install() -> bool:
    """Put the guarded locators in front of Numba's file-backed ones (once); False where this
    Numba has no such locators (then Numba's own per-file stamps apply)."""
    try:
        from numba.core import caching
        impl = caching.CacheImpl
        bases = (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator)
    except (ImportError, AttributeError):
        return False
    current = impl._locator_classes
    if any(getattr(c, "__name__", "").startswith("Fptq") for c in current):
        return True
    guarded = []
    for c in current:
        if c in bases:
            guarded.append(_guarded(c))
        guarded.append(c)
    impl._locator_classes = guarded
    return True
