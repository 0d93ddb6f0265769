"""fptq.backends: one interface, interchangeable implementations, a registry.

``get_backend("numpy" | "numba" | "torch" | "torch-cuda" | "pkg.mod:Class")``;
third-party backends register under the entry-point group ``fptq.backends``.
"""

from .base import OPERATIONS, Backend, BackendUnavailable, ReferenceFallback
from .registry import (
    BUILTIN_BACKENDS, ENTRY_POINT_GROUP, UnknownBackend, available_backends, get_backend,
    load_backend_class, registered_backends,
)

__all__ = ["OPERATIONS", "Backend", "BackendUnavailable", "ReferenceFallback", "BUILTIN_BACKENDS",
           "ENTRY_POINT_GROUP", "UnknownBackend", "available_backends", "get_backend",
           "load_backend_class", "registered_backends"]
