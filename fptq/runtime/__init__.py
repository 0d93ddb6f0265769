"""A lean W4A8 runtime: a whole token (or prompt) through one compiled Numba forward with a KV cache.

The transformers path (:func:`fptq.models.checkpoint.load_quantized`) is the reference; this package
runs the same checkpoint without transformers' per-layer Python: :mod:`.weights` reads a loaded model
into flat arrays (the numba backend's blocked W4A8 layout), :mod:`.forward` is the compiled forward,
:mod:`.engine` holds the KV cache, :mod:`.sampling` generates. Families: :mod:`.family`.
"""

from __future__ import annotations

__all__ = ["Runtime", "RuntimeUnsupported", "FAMILIES"]


def __getattr__(name):
    if name == "Runtime":
        from .engine import Runtime

        return Runtime
    if name == "RuntimeUnsupported":
        from .weights import RuntimeUnsupported

        return RuntimeUnsupported
    if name == "FAMILIES":
        from .family import FAMILIES

        return FAMILIES
    raise AttributeError(f"module 'fptq.runtime' has no attribute {name!r}")
