"""Compile check of the cupy backend's CUDA kernels for sm_90, without a GPU.

Compiles every ``fptq/backends/cuda/*.cu`` module with NVRTC and exactly the
options the backend uses (:func:`fptq.backends.cupy_compile.compile_module`),
reads ``ptxas -v``'s report per kernel (registers, spills, stack frame,
shared memory) and the PTX (no float op the spec forbids; the instructions
each path is built on are there). Runs wherever CuPy's NVRTC bindings and the
NVRTC library are installed (``pip install cupy-cuda13x 'nvidia-cuda-nvrtc==13.0.*'``);
skips with the reason otherwise (the project's .venv has no CuPy). Run with
``-s`` to see the resource table.
"""

from __future__ import annotations

import pytest

from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L

ARCH = "90"  # the H200 / H100


def _nvrtc_or_skip():
    try:
        return CC.nvrtc_version()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no NVRTC here (CuPy + the NVRTC library are needed for the compile check): {e}")


@pytest.fixture(scope="module")
def compiled():
    _nvrtc_or_skip()
    return {name: CC.compile_module(name, ARCH, use_cache=False) for name in CC.MODULES}


#: Register bounds per kernel family (ptxas on NVRTC 13.0 measured 24-34 for the elementwise
#: kernels, 55-148 for gemm_decode<1..16>, 110 and 176 for the two prefill tiles). A bound
#: keeps occupancy: decode runs 128-thread blocks (168 registers still fit 3 blocks per SM),
#: prefill's 128 x 128 tile one 256-thread block per SM (__launch_bounds__(256, 1): at most 255).
REGISTER_BOUNDS = {"gemm_decode": 168, "gemm_prefill": 232}
ELEMENTWISE_REGISTER_BOUND = 64
STATIC_SMEM_LIMIT = 48 * 1024


def test_every_kernel_compiles_for_sm90_and_reports_resources(compiled):
    rows = []
    for name, mod in compiled.items():
        assert set(mod.entries) == set(CC.MODULES[name]), name
        for kernel in CC.MODULES[name]:
            r = mod.kernel_resources(kernel)
            rows.append((kernel, r))
            assert r.registers > 0, f"{kernel}: no ptxas report"
    print("\nptxas -v, sm_90, NVRTC %d.%d:" % CC.nvrtc_version())
    print(f"{'kernel':32} {'regs':>5} {'spill st':>8} {'spill ld':>8} {'stack':>6} {'smem':>6}")
    for kernel, r in rows:
        print(f"{kernel:32} {r.registers:5} {r.spill_stores:8} {r.spill_loads:8} {r.stack_bytes:6} {r.smem_bytes:6}")


def test_no_spills_and_registers_under_bounds(compiled):
    for name, mod in compiled.items():
        bound = REGISTER_BOUNDS.get(name, ELEMENTWISE_REGISTER_BOUND)
        for kernel in CC.MODULES[name]:
            r = mod.kernel_resources(kernel)
            assert r.spill_stores == 0 and r.spill_loads == 0, f"{kernel} spills: {r}"
            assert r.stack_bytes == 0, f"{kernel} uses a stack frame (a register array went to local memory): {r}"
            assert r.registers <= bound, f"{kernel}: {r.registers} registers > {bound}"
            assert r.smem_bytes <= STATIC_SMEM_LIMIT, f"{kernel}: {r.smem_bytes} bytes of static shared memory"


def test_prefill_registers_allow_its_block():
    """The 128 x 128 tile runs 256 threads per block: 65536 / 256 = 256 registers per thread at most."""
    assert REGISTER_BOUNDS["gemm_prefill"] * max(t.threads for t in L.PREFILL_TILES) <= 65536


def test_ptx_has_no_forbidden_float_ops():
    _nvrtc_or_skip()
    for name in CC.MODULES:
        assert CC.forbidden_float_ops(CC.compile_ptx(name, ARCH)) == [], name


def test_forbidden_float_op_scan_catches_flush_to_zero():
    """What CuPy's own RawModule(code=...) path would do (it appends -ftz=true): the scan must see it."""
    _nvrtc_or_skip()
    found = CC.forbidden_float_ops(CC.compile_ptx("matmul", ARCH, ("-ftz=true",)))
    assert "add.rn.ftz.f32" in found and "mul.rn.ftz.f32" in found


def test_fast_paths_use_the_instructions_they_are_built_on():
    _nvrtc_or_skip()
    decode = CC.compile_ptx("gemm_decode", ARCH)
    assert "dp4a.s32.s32" in decode
    assert "ld.global.nc.v4.u32" in decode or "ld.global.nc.v4.b32" in decode, "16-byte weight loads"
    prefill = CC.compile_ptx("gemm_prefill", ARCH)
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in prefill
    assert "cp.async.cg.shared.global" in prefill and "cp.async.wait_group" in prefill


def test_compile_cache_round_trip(tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv("FPTQ_CUDA_CACHE", str(tmp_path))
    first = CC.compile_module("policy", ARCH)
    assert first.path is not None and first.path.is_file()
    again = CC.compile_module("policy", ARCH)
    assert again.cubin == first.cubin and again.entries == first.entries
    assert again.kernel_resources("select_policies") == first.kernel_resources("select_policies")
