"""fptq.heap: with glibc, keep_freed_memory() makes a layer-like pattern of large allocations
reuse freed pages (no page faults once warm) where glibc's own thresholds fault them in again; a Runtime sets
it unless told not to."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest

from fptq import heap as allocator

GLIBC = allocator._glibc() is not None

#: one "layer" of a 1.5B prefill's activation sizes (MB), allocated in turn, touched, then all freed
_PATTERN = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys
    from fptq.heap import keep_freed_memory
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    sizes = [s << 20 for s in (3, 1, 1, 3, 3, 18, 18, 18, 3)]
    def layer():
        ps = [libc.malloc(n) for n in sizes]
        for p, n in zip(ps, sizes):
            libc.memset(p, 1, n)
        for p in ps:
            libc.free(p)
    for _ in range(3):
        layer()                                   # warm: the heap reaches its working size
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layer()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PATTERN, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: keep_freed_memory changes nothing")
def test_freed_layer_memory_is_reused_without_page_faults():
    pages = 10 * sum((3, 1, 1, 3, 3, 18, 18, 18, 3)) * 256          # pages the 10 timed layers touch
    kept, faults = _faults("keep")
    assert kept == "True"
    assert faults < pages // 100, f"{faults} minor faults for {pages} pages touched"
    _, default_faults = _faults("default")                            # glibc's own thresholds: faulted again
    assert default_faults > pages // 2, f"glibc's defaults gave only {default_faults} faults for {pages} pages"


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    allocator.keep_freed_memory.cache_clear()
    try:
        assert allocator.keep_freed_memory() is False
        allocator.trim()                                   # nothing to call: no error
    finally:
        allocator.keep_freed_memory.cache_clear()


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: trim changes nothing")
def test_trim_gives_freed_heap_pages_back():
    """Freed small blocks stay resident in glibc's heap (below the mmap threshold) until trimmed."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import ctypes, ctypes.util
        from fptq.heap import trim
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        def rss():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1])
        ps = [libc.malloc(64 << 10) for _ in range(4000)]       # 250 MB in 64 KB blocks, under the mmap threshold
        for p in ps:
            libc.memset(p, 1, 64 << 10)
        keep = libc.malloc(16)                                  # pins the heap's top: only trim can give pages back
        for p in ps:
            libc.free(p)
        before = rss()
        trim()
        print(before - rss())
    """)], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 200_000, f"trim gave back only {out.stdout.strip()} kB of ~250 MB freed"


def test_runtime_sets_it_unless_told_not_to(monkeypatch):
    pytest.importorskip("numba")
    from fptq.runtime import engine

    calls = []
    monkeypatch.setattr(engine, "_keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(engine.Runtime, "_grow", lambda self, need: None)
    monkeypatch.setattr(engine, "SplitTuner", lambda dims: None)
    weights = types.SimpleNamespace(dims=None)
    engine.Runtime(weights, keep_freed_memory=False)
    assert calls == []
    engine.Runtime(weights)
    assert calls == [1]
