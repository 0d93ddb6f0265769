"""The Numba cache of fptq's kernels is keyed by all of fptq's compiled sources (numba_kernels/_cache.py).

Numba stamps a cached function with a hash of its own file only; a kernel whose callee in another
file changed would load stale machine code. These tests check that fptq's functions get the guarded
locator, whose stamp carries the digest of every compiled source, and that another file's change
changes that stamp.
"""

from __future__ import annotations

import pytest

pytest.importorskip("numba")

from numba.core import caching  # noqa: E402

from fptq.backends.numba_kernels import _cache, _jit  # noqa: E402,F401
from fptq.backends.numba_kernels import packing  # noqa: E402


def _locator_of(func):
    return caching.FunctionCache(func.py_func)._impl.locator


def test_fptq_kernels_get_the_guarded_locator_with_the_digest_in_their_stamp():
    loc = _locator_of(packing.unpack_row)
    assert type(loc).__name__.startswith("Fptq"), type(loc)
    stamp = loc.get_source_stamp()
    assert isinstance(stamp, tuple) and stamp[1] == _cache.sources_digest()


def test_a_change_in_another_compiled_source_changes_the_stamp(tmp_path, monkeypatch):
    loc = _locator_of(packing.unpack_row)
    before = loc.get_source_stamp()
    fake = tmp_path / "numba_kernels"
    fake.mkdir()
    for d in _cache.SOURCE_DIRS:
        for f in d.glob("*.py"):
            (fake / f"{d.name}_{f.name}").write_bytes(f.read_bytes())
    (fake / "spec_formats.py").write_bytes(b"# an edited callee\n" + (fake / "spec_formats.py").read_bytes())
    monkeypatch.setattr(_cache, "SOURCE_DIRS", (fake,))
    _cache.sources_digest.cache_clear()
    try:
        after = loc.get_source_stamp()
    finally:
        monkeypatch.undo()
        _cache.sources_digest.cache_clear()
    assert after[0] == before[0] and after[1] != before[1]


def test_functions_outside_fptq_are_left_to_numba(tmp_path):
    import numba

    src = tmp_path / "user_mod.py"
    src.write_text("def f(x):\n    return x + 1\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_mod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    loc = _locator_of(numba.njit(cache=True)(mod.f))
    assert not type(loc).__name__.startswith("Fptq")
    assert not isinstance(loc.get_source_stamp(), tuple) or len(loc.get_source_stamp()) != 2 or \
        loc.get_source_stamp()[1] != _cache.sources_digest()
