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

import ctypes
import re
import shutil
import subprocess

import pytest

from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L
from fptq.backends.cubin_elf import check_cubin, elf_extent

ARCH = "90"  # the H200 / H100


def _nvrtc_or_skip():
    try:
        return CC.nvrtc_version()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no NVRTC here (CuPy + the NVRTC library are needed for the compile check): {e}")


@pytest.fixture(scope="module")
def compiled():
    _nvrtc_or_skip()
    return {name: CC.compile_module(name, ARCH) for name in CC.MODULES}  # the cache: what the backend loads


#: Register bounds per kernel family (ptxas on NVRTC 13.0, issue 26's kernels: 24-34 for the
#: elementwise kernels, 76-162 for gemm_decode<1..8> and 234 for gemm_decode<16>, ~180-230 for the
#: two prefill tiles). A bound keeps occupancy: decode runs 128-thread blocks (240 registers still fit
#: 2 blocks per SM; MT = 16 is dp4a-bound, and capping it at 168 registers spilled), prefill's
#: 128 x 128 tile one 256-thread block per SM (__launch_bounds__(256, 1): at most 255).
REGISTER_BOUNDS = {"gemm_decode": 240, "gemm_prefill": 240}
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


def _nvrtc_size(name: str) -> int:
    """nvrtcGetCUBINSize of ``name``'s program, asked of the NVRTC library itself (ctypes)."""
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(CC.read_source(f"{name}.cu"), f"{name}.cu", (CC.read_source(CC.HEADER).encode(),),
                               (CC.HEADER.encode(),))
    try:
        for e in CC.name_expressions(name):
            nvrtc.addNameExpression(prog, e)
        nvrtc.compileProgram(prog, CC.compile_options(ARCH))
        lib = CC._loaded_nvrtc_library()
        if lib is None:
            pytest.skip("the NVRTC library is not found in /proc/self/maps: cannot ask it for the size")
        size = ctypes.c_size_t()
        assert lib.nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(size)) == 0
        return size.value
    finally:
        nvrtc.destroyProgram(prog)


def test_compile_cache_round_trip(tmp_path, monkeypatch):
    """The cached file holds NVRTC's whole binary: its length is nvrtcGetCUBINSize, asked of NVRTC itself
    (CuPy's getCUBIN gives one byte less), and equals the file's ELF extent."""
    _nvrtc_or_skip()
    monkeypatch.setenv("FPTQ_CUDA_CACHE", str(tmp_path))
    first = CC.compile_module("policy", ARCH)
    assert first.path is not None and first.path.is_file()
    want = _nvrtc_size("policy")
    assert len(first.cubin) == want and first.path.stat().st_size == want
    assert first.resources.get(first.entries["select_policies"]), \
        f"no ptxas report for select_policies in a fresh compile's log: {first.log[:800]!r}"
    again = CC.compile_module("policy", ARCH)
    assert again.cubin == first.cubin and again.entries == first.entries and len(again.cubin) == want
    assert again.log == first.log, (again.log[:400], first.log[:400])
    assert again.kernel_resources("select_policies") == first.kernel_resources("select_policies")


def test_a_short_cached_cubin_is_rebuilt(tmp_path, monkeypatch):
    """A cache file one byte short (what CuPy's getCUBIN wrote) is not loaded: the module is compiled again."""
    _nvrtc_or_skip()
    monkeypatch.setenv("FPTQ_CUDA_CACHE", str(tmp_path))
    first = CC.compile_module("policy", ARCH)
    first.path.write_bytes(first.cubin[:-1])
    again = CC.compile_module("policy", ARCH)
    assert again.cubin == first.cubin and again.path.read_bytes() == first.cubin


def test_every_cached_cubin_is_whole_elf(compiled):
    """Length == ELF extent (header tables, sections, segments), machine EM_CUDA, for every module; a cubin
    one byte short is refused by the same check."""
    for name, mod in compiled.items():
        assert mod.path is not None, f"{name}: not cached (FPTQ_CUDA_CACHE unwritable?)"
        data = mod.path.read_bytes()
        assert len(data) == elf_extent(data) == len(mod.cubin), name
        check_cubin(data, name)
        with pytest.raises(ValueError, match="truncated"):
            check_cubin(data[:-1], name)


@pytest.mark.parametrize("tool", ["nvdisasm", "cuobjdump"])
def test_disassemblers_accept_every_cubin(compiled, tool):
    """NVIDIA's own ELF readers accept each cached file (nvdisasm rejected CuPy's short ones as invalid ELF)."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not on PATH (pip install nvidia-cuda-{tool} puts one under nvidia/cu13/bin)")
    for name, mod in compiled.items():
        args = [exe, str(mod.path)] if tool == "nvdisasm" else [exe, "-sass", str(mod.path)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and not r.stderr.strip(), f"{tool} {name}: {r.stderr[:300]}"


def test_the_backend_loads_the_whole_cubin(compiled, tmp_path):
    """CupyBackend._fn hands RawModule a file of exactly the cubin's bytes, also when the cache is off."""
    from fptq.backends.cupy_backend import CupyBackend

    seen = []

    class RawModule:
        def __init__(self, path):
            seen.append(open(path, "rb").read())

        def get_function(self, entry):
            return entry

    class FakeCupy:
        pass
    FakeCupy.RawModule = RawModule
    b = object.__new__(CupyBackend)
    b.cp, b.arch, b._functions = FakeCupy, ARCH, {}
    b._compiled = {"policy": compiled["policy"]}
    assert b._fn("policy", "select_policies") == "select_policies"
    nocache = CC.CompiledModule("policy", ARCH, compiled["policy"].cubin, "", {"select_policies": "select_policies"})
    b._compiled, b._functions = {"policy": nocache}, {}
    b._fn("policy", "select_policies")
    assert seen == [compiled["policy"].cubin] * 2
    short = CC.CompiledModule("policy", ARCH, compiled["policy"].cubin[:-1], "", {"select_policies": "x"})
    b._compiled, b._functions = {"policy": short}, {}
    with pytest.raises(ValueError, match="truncated"):
        b._fn("policy", "select_policies")


# ---------------------------------------------------------------------------------------------
# The machine code (SASS, by cuobjdump): what issue 26 asked of the GEMMs' instruction order


def _sass(mod) -> dict[str, list[str]]:
    """kernel name -> its SASS opcodes in order (predicates dropped), by ``cuobjdump -sass`` of the cubin."""
    exe = shutil.which("cuobjdump")
    if exe is None:
        pytest.skip("cuobjdump is not on PATH (pip install nvidia-cuda-cuobjdump puts one under nvidia/cu13/bin)")
    text = subprocess.run([exe, "-sass", str(mod.path)], capture_output=True, text=True, timeout=120).stdout
    by_entry, cur = {}, None
    for line in text.splitlines():
        if "Function :" in line:
            cur = by_entry.setdefault(line.split("Function :")[1].strip(), [])
        elif cur is not None and (m := re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)", line)):
            cur.append(m.group(1))
    return {k: by_entry[e] for k, e in mod.entries.items()}


def test_decode_issues_a_whole_batch_of_weight_copies_before_the_math(compiled):
    """gemm_decode<MT>: the first batch's CH x DEC_ROWS 16-byte weight copies (LDGSTS) all come before
    its first dp4a (IDP.4A) and before the wait (DEPBAR): 16 for MT <= 4, one G = 128 group of 4 rows.
    (Plain 16-byte loads were sunk by ptxas next to their uses: 3 in flight, then math.)"""
    chunks = {1: 4, 2: 4, 4: 4, 8: 2, 16: 1}
    for mt in L.DECODE_MT:
        ops = _sass(compiled["gemm_decode"])[L.decode_kernel_name(mt)]
        first_math = ops.index(next(o for o in ops if o.startswith("IDP.4A")))
        first_wait = ops.index(next(o for o in ops if o.startswith("DEPBAR")))
        copies = [i for i, o in enumerate(ops) if o.startswith("LDGSTS")]
        assert len(copies) == chunks[mt] * L.DECODE_ROWS, (mt, len(copies))
        assert max(copies) < min(first_math, first_wait), f"MT={mt}: a weight copy after the math or the wait"


def test_prefill_main_loop_has_no_integer_division(compiled):
    """No emulated 32-bit division (I2F.U32.RP + MUFU.RCP) and no call anywhere in gemm_prefill: the group,
    the step within it and the stage are counters (step / steps_per_group compiled to 4 such sequences)."""
    for t in L.PREFILL_TILES:
        ops = _sass(compiled["gemm_prefill"])[L.prefill_kernel_name(t)]
        bad = [o for o in ops if o.startswith(("MUFU.RCP", "I2F.U32.RP", "CALL"))]
        assert not bad, f"{L.prefill_kernel_name(t)}: {bad}"
        assert sum(o.startswith("HMMA") or o.startswith("IMMA") for o in ops) >= t.mt * t.nt
