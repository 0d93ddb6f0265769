"""fptq.backends.registry: names, ``module:Class`` specs, the entry-point group, unavailable backends."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import numpy as np
import pytest

from fptq.backends import MEMBERS, OPERATIONS, BackendUnavailable, UnknownBackend, registry
from fptq.backends.numpy_backend import NumpyBackend

MOD = "fptq_test_fake_backends"


class Fake(NumpyBackend):
    name = "fake"


class NoGpu(NumpyBackend):
    name = "nogpu"

    def __init__(self):
        raise BackendUnavailable("no CUDA device visible")


class NeedsFramework(NumpyBackend):
    name = "needs"

    def __init__(self):
        raise ImportError("No module named 'someframework'")


class NotABackend:
    name = "broken"


class Incomplete:
    """A third party's hand-written backend that forgot what a model needs (and one operation)."""

    name = "incomplete"
    device = "cpu"
    array_type = np.ndarray

    def __init__(self):
        ref = NumpyBackend()
        for m in ("from_numpy", "to_numpy", "describe", *OPERATIONS):
            if m != "select_policies":
                setattr(self, m, getattr(ref, m))
    linear_forward_finite = "not a method"


@pytest.fixture(autouse=True)
def fake_module(monkeypatch):
    """A throw-away module holding the classes above, and a fresh instance cache."""
    mod = types.ModuleType(MOD)
    for cls in (Fake, NoGpu, NeedsFramework, NotABackend, Incomplete):
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, MOD, mod)
    monkeypatch.setattr(registry, "_instances", {})
    return mod


def test_builtin_numpy():
    b = registry.get_backend("numpy")
    assert isinstance(b, NumpyBackend) and b.name == "numpy"
    assert registry.get_backend("numpy") is b  # cached
    np.testing.assert_array_equal(b.to_numpy(b.from_numpy(np.arange(3))), np.arange(3))


def test_unknown_name_lists_registered_backends():
    with pytest.raises(UnknownBackend) as e:
        registry.get_backend("no-such-kernel")
    msg = str(e.value)
    assert "no-such-kernel" in msg
    for name in registry.BUILTIN_BACKENDS:
        assert name in msg
    assert "package.module:Class" in msg


def test_module_class_spec():
    b = registry.get_backend(f"{MOD}:Fake")
    assert isinstance(b, Fake)
    assert isinstance(registry.get_backend("fptq.backends.numpy_backend:NumpyBackend"), NumpyBackend)


@pytest.mark.parametrize("target,match", [
    (f"{MOD}:Missing", "has no backend class"),
    ("fptq_no_such_module_xyz:Cls", "cannot import backend module"),
    (f"{MOD}:", "not of the form"),
])
def test_bad_module_class_spec(target, match):
    with pytest.raises(UnknownBackend, match=match):
        registry.get_backend(target)


def test_entry_point_backend_discovered(monkeypatch):
    """A third party's entry point in the group fptq.backends is found by name, without editing fptq."""
    eps = [EntryPoint(name="mykernel", value=f"{MOD}:Fake", group=registry.ENTRY_POINT_GROUP)]

    def fake_entry_points(group=None):
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert registry.registered_backends()["mykernel"] == f"{MOD}:Fake"
    assert isinstance(registry.get_backend("mykernel"), Fake)


def test_entry_point_cannot_shadow_builtin(monkeypatch):
    monkeypatch.setattr(registry, "_entry_point_backends", lambda: {"numpy": f"{MOD}:Fake"})
    assert registry.registered_backends()["numpy"] == registry.BUILTIN_BACKENDS["numpy"]


def test_installed_entry_points_include_numpy():
    """fptq's own pyproject lists numpy in the group (tools enumerating it see the reference)."""
    assert registry._entry_point_backends().get("numpy") == registry.BUILTIN_BACKENDS["numpy"]


def test_unavailable_propagates_reason():
    with pytest.raises(BackendUnavailable, match="no CUDA device visible"):
        registry.get_backend(f"{MOD}:NoGpu")


def test_import_error_in_init_becomes_unavailable():
    with pytest.raises(BackendUnavailable, match="someframework"):
        registry.get_backend(f"{MOD}:NeedsFramework")


def test_missing_dependency_of_backend_module(tmp_path, monkeypatch):
    """A backend module that imports a package that is not installed: unavailable, naming the package."""
    (tmp_path / "fptq_test_needs_dep.py").write_text("import fptq_definitely_missing_dep\nclass B: name = 'b'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailable, match="fptq_definitely_missing_dep"):
        registry.get_backend("fptq_test_needs_dep:B")


def test_not_a_backend_is_rejected():
    with pytest.raises(TypeError, match="lacks"):
        registry.get_backend(f"{MOD}:NotABackend")


def test_an_incomplete_backend_is_refused_naming_what_it_lacks():
    """The registry checks the whole Protocol (fptq.backends.base.Backend), not a few attributes:
    an operation, the model-facing methods, and a member that is there but not callable."""
    with pytest.raises(TypeError) as e:
        registry.get_backend(f"{MOD}:Incomplete")
    msg = str(e.value)
    lacks = msg.split("lacks ", 1)[1].split(" of the", 1)[0].split(", ")
    assert lacks == ["select_policies", "prepare_linear", "linear_forward", "linear_forward_finite"], msg
    assert f"{MOD}:Incomplete" in msg and "BackendBase" in msg
    assert f"{MOD}:Incomplete" not in registry._instances


def test_every_builtin_class_has_the_whole_protocol():
    """Checked on the classes, so backends that cannot start here (cupy, torch-cuda) are covered too."""
    for name, target in registry.BUILTIN_BACKENDS.items():
        try:
            cls = registry.load_backend_class(target)
        except BackendUnavailable:
            continue
        missing = [m for m in MEMBERS if not hasattr(cls, m) and m not in ("device", "array_type")]
        assert not missing, f"{name} lacks {missing}"


def test_available_backends_reports_reasons(monkeypatch):
    monkeypatch.setattr(registry, "_entry_point_backends",
                        lambda: {"nogpu": f"{MOD}:NoGpu", "fake": f"{MOD}:Fake"})
    status = registry.available_backends()
    assert status["numpy"] is None and status["fake"] is None
    assert "no CUDA device visible" in status["nogpu"]
