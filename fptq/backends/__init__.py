"""fptq.backends: one interface, one base class, interchangeable implementations, a registry.

``get_backend("numpy" | "numba" | "torch" | "torch-cuda" | "cupy" | "pkg.mod:Class")``
returns a started backend (a :class:`Backend`; the built-ins subclass
:class:`BackendBase`, which checks every operation once and calls the
backend's unchecked hooks); third-party backends register under the
entry-point group ``fptq.backends``. Importing this package loads no
framework: a backend imports its own in ``__init__``.
"""

from .base import MEMBERS, OPERATIONS, Backend, BackendBase, BackendUnavailable, PreparedLinear
from .registry import (
    BUILTIN_BACKENDS, ENTRY_POINT_GROUP, UnknownBackend, available_backends, get_backend,
    load_backend_class, registered_backends,
)

__all__ = ["OPERATIONS", "MEMBERS", "Backend", "BackendBase", "BackendUnavailable", "PreparedLinear",
           "BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "UnknownBackend", "available_backends", "get_backend",
           "load_backend_class", "registered_backends"]
