"""Finding backends by name: built-ins, the ``fptq.backends`` entry-point group,
and ``pkg.module:Class`` specs.

Built-ins are listed as import paths and imported only when asked for, so a
missing framework costs nothing until someone selects its backend. Third
parties register theirs in their own ``pyproject.toml``::

    [project.entry-points."fptq.backends"]
    mykernel = "mypkg.fptq_backend:MyKernelBackend"

and ``get_backend("mykernel")`` / ``pytest conformance/ --backend mykernel`` find it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import Backend, BackendUnavailable, missing_members

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "UnknownBackend", "get_backend",
           "registered_backends", "available_backends", "load_backend_class"]

ENTRY_POINT_GROUP = "fptq.backends"

#: name -> "module:Class" of the backends that ship with fptq.
BUILTIN_BACKENDS = {
    "numpy": "fptq.backends.numpy_backend:NumpyBackend",
    "numba": "fptq.backends.numba_backend:NumbaBackend",
    "torch": "fptq.backends.torch_backend:TorchBackend",
    "torch-cuda": "fptq.backends.torch_backend:TorchCudaBackend",
    "cupy": "fptq.backends.cupy_backend:CupyBackend",
}

_instances: dict[str, Backend] = {}


class UnknownBackend(LookupError):
    """No backend of that name is built in, registered, or importable."""


def _entry_point_backends() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_backends() -> dict[str, str]:
    """Every known backend name -> its ``module:Class`` (built-ins, then entry points)."""
    found = dict(BUILTIN_BACKENDS)
    for name, target in _entry_point_backends().items():
        found.setdefault(name, target)
    return found


def load_backend_class(target: str):
    """Import ``module:Class``. A missing module of the target itself is an UnknownBackend;
    a missing dependency inside it propagates as ImportError (the backend's own reason)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownBackend(f"backend spec {target!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UnknownBackend(f"cannot import backend module {module_name!r}: {e}") from e
        raise BackendUnavailable(f"backend {target!r} needs a package that is not installed: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnknownBackend(f"module {module_name!r} has no backend class {attr!r}") from None


def get_backend(name: str) -> Backend:
    """The backend instance for ``name`` (a registered name or ``module:Class``), cached.

    Raises:
        UnknownBackend: no such backend (the message lists the registered names).
        BackendUnavailable: it exists but cannot start here; the message says why.
    """
    if isinstance(name, Backend) and not isinstance(name, str):
        return name
    if name in _instances:
        return _instances[name]
    known = registered_backends()
    if name in known:
        target = known[name]
    elif ":" in name:
        target = name
    else:
        raise UnknownBackend(f"unknown backend {name!r}; registered backends: {', '.join(sorted(known))} "
                             "(or give 'package.module:Class')")
    cls = load_backend_class(target)
    if not isinstance(cls, type):
        raise UnknownBackend(f"backend {name!r}: {target} is a {type(cls).__name__}, not a backend class")
    try:
        backend = cls()
    except BackendUnavailable:
        raise
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} cannot start: {e}") from e
    missing = missing_members(backend)
    if missing:
        raise TypeError(f"backend {name!r} ({target}) is incomplete: it lacks {', '.join(missing)} of the "
                        "fptq.backends.base.Backend protocol (subclass fptq.backends.BackendBase to inherit "
                        "the checks, the model-facing methods and spec defaults of every operation)")
    _instances[name] = backend
    return backend


def available_backends() -> dict[str, str | None]:
    """Every registered backend name -> None if it starts here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    for name in registered_backends():
        try:
            get_backend(name)
            status[name] = None
        except (BackendUnavailable, UnknownBackend) as e:
            status[name] = str(e)
    return status
