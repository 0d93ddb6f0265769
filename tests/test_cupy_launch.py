"""The cupy backend's pure-Python parts, without a GPU: path choice, launch geometry,
compile options and the constants handed to the kernels, the ptxas log parser,
the shipped sources, and the backend's refusal to start without CuPy or a GPU."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fptq import spec
from fptq.backends import BackendUnavailable, get_backend, registered_backends
from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L


@pytest.mark.parametrize("m,k,g,want", [
    (1, 4096, 128, "decode"), (16, 4096, 128, "decode"), (17, 4096, 128, "prefill"),
    (64, 11008, 128, "prefill"), (4096, 4096, 32, "prefill"),
    (1, 4096, 100, "generic"), (64, 4016, 32, "generic"), (1, 576, 64, "decode"),
    (1, 99, 33, "generic"), (0, 4096, 128, "generic"),
])
def test_choose_path(m, k, g, want):
    assert L.choose_path(m, 4096, k, g) == want


def test_misaligned_pointer_takes_the_generic_path():
    assert L.choose_path(1, 64, 4096, 128, (0x1000, 0x2008)) == "generic"
    assert "aligned" in L.fast_path_ok(4096, 128, (0x1008,))
    assert L.fast_path_ok(4096, 128, (0x1000, 0x2010)) is None


def test_forced_paths():
    assert L.choose_path(64, 8, 4096, 128, force="generic") == "generic"
    assert L.choose_path(3, 8, 4096, 128, force="prefill") == "prefill"
    with pytest.raises(ValueError, match="above 16"):
        L.choose_path(17, 8, 4096, 128, force="decode")
    with pytest.raises(ValueError, match="G=100 is not a multiple of 32"):
        L.choose_path(1, 8, 4096, 100, force="decode")
    with pytest.raises(ValueError, match="force"):
        L.choose_path(1, 8, 4096, 128, force="fast")


@pytest.mark.parametrize("m,mt", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)])
def test_decode_template_covers_m(m, mt):
    assert L.decode_mt(m) == mt
    assert L.decode_kernel_name(mt) in CC.MODULES["gemm_decode"]


def test_decode_mt_refuses_prefill_sizes():
    with pytest.raises(ValueError):
        L.decode_mt(17)


def test_decode_grid_covers_every_row():
    for n in (1, 15, 16, 17, 4096, 11008):
        (blocks,), (threads,) = L.decode_grid(n)
        assert threads == L.DECODE_WARPS * 32
        assert (blocks - 1) * L.DECODE_WARPS * L.DECODE_ROWS < n <= blocks * L.DECODE_WARPS * L.DECODE_ROWS
    # N = K = 4096 fills the 132 SMs of an H200 about twice over
    assert L.decode_grid(4096)[0][0] >= 132


def test_prefill_tile_choice_keeps_the_sms_busy():
    big, small = L.PREFILL_TILES
    assert (big.bm, big.bn, big.threads) == (128, 128, 256) and (small.bm, small.bn, small.threads) == (64, 64, 128)
    assert L.choose_prefill_tile(4096, 4096) == big        # 32 x 32 = 1024 blocks
    assert L.choose_prefill_tile(64, 4096) == small        # big would make 32 blocks
    assert L.choose_prefill_tile(1024, 4096, sm_count=132) == big
    assert L.choose_prefill_tile(256, 4096, sm_count=132) == small  # 2 x 32 = 64 < 132


def test_prefill_grid():
    t = L.PREFILL_TILES[0]
    (gx, gy), (threads,) = L.prefill_grid(130, 4097, t)
    assert (gx, gy, threads) == (33, 2, 256)
    with pytest.raises(ValueError, match="grid limit"):
        L.prefill_grid(128 * 65536, 8, t)


def test_kernel_names_match_the_instantiations_in_the_sources():
    for module in ("gemm_decode", "gemm_prefill"):
        src = CC.read_source(f"{module}.cu")
        inst = {re.sub(r"\s+", "", m) for m in re.findall(r"template __global__ void (\w+<[^>]*>)\(", src)}
        assert inst == {re.sub(r"\s+", "", k) for k in CC.MODULES[module]}, module


def test_every_plain_kernel_is_defined_in_its_source():
    for module, kernels in CC.MODULES.items():
        if module in ("gemm_decode", "gemm_prefill"):
            continue
        src = CC.read_source(f"{module}.cu")
        defined = set(re.findall(r'extern "C" __global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)\(', src))
        assert defined == set(kernels), module


def test_elementwise_grid():
    assert L.elementwise_grid(1) == ((1,), (256,))
    assert L.elementwise_grid(10**9, sm_count=132) == ((32 * 132,), (256,))
    with pytest.raises(ValueError):
        L.elementwise_grid(0)
    assert L.warp_per_item_grid(9) == ((2,), (256,))


def test_spec_defines_come_from_the_formats_table():
    d = dict(o[2:].split("=", 1) for o in CC.spec_defines())
    assert int(d["FPTQ_INT8_QMIN"]) == spec.INT8_ACT.qmin and int(d["FPTQ_INT8_QMAX"]) == spec.INT8_ACT.qmax
    assert int(d["FPTQ_INT4_SYM_QMIN"]) == spec.INT4_SYM.qmin and int(d["FPTQ_UINT4_QMAX"]) == spec.UINT4_ASYM.qmax
    assert int(d["FPTQ_UINT4_DIVISOR"]) == spec.UINT4_ASYM.scale_divisor
    assert float.fromhex(d["FPTQ_MIN_SCALE"].rstrip("f")) == float(spec.MIN_SCALE)
    assert int(d["FPTQ_POLICY_DYNAMIC"]) == spec.POLICY_CODES[spec.ActPolicy.DYNAMIC]


def test_compile_options_pin_the_float_math():
    opts = CC.compile_options("90")
    assert "-arch=sm_90" in opts and "--fmad=false" in opts and "-ftz=false" in opts
    assert "-prec-div=true" in opts and not any("fast" in o for o in opts)
    assert CC.compile_options("90a")[0] == "-arch=sm_90a"
    with pytest.raises(ValueError, match="arch"):
        CC.compile_options("sm_90")


SAMPLE_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z11gemm_decodeILi1EEvPKaPKfPKhS3_S5_S3_Pfiiiiiiiii' for 'sm_90'
ptxas info    : Function properties for _Z11gemm_decodeILi1EEvPKaPKfPKhS3_S5_S3_Pfiiiiiiiii
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 55 registers, used 1 barriers, 2112 bytes smem
ptxas info    : Compiling entry function 'select_policies' for 'sm_90'
ptxas info    : Function properties for select_policies
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 28 registers, used 0 barriers
"""


def test_parse_ptxas_log():
    r = CC.parse_ptxas_log(SAMPLE_LOG)
    assert list(r) == ["_Z11gemm_decodeILi1EEvPKaPKfPKhS3_S5_S3_Pfiiiiiiiii", "select_policies"]
    d = r["_Z11gemm_decodeILi1EEvPKaPKfPKhS3_S5_S3_Pfiiiiiiiii"]
    assert (d.registers, d.spill_stores, d.spill_loads, d.smem_bytes) == (55, 8, 12, 2112)
    assert r["select_policies"] == CC.KernelResources(registers=28)


def test_forbidden_float_ops_scan():
    ptx = "\tadd.rn.f32 %f1, %f2, %f3;\n\tfma.rn.f32 %f4, %f1, %f2, %f3;\n@%p1 div.full.f32 %f5, %f1, %f2;\n" \
          "\tmax.ftz.f32 %f6, %f1, %f2;\n\tfma.rn.f64 %fd1, %fd2, %fd3, %fd4;\n\tlg2.approx.f32 %f7, %f1;\n"
    assert CC.forbidden_float_ops(ptx) == ["div.full.f32", "fma.rn.f32", "lg2.approx.f32", "max.ftz.f32"]


def test_sources_ship_as_package_data():
    for module in CC.MODULES:
        assert "#include \"common.cu\"" in CC.read_source(f"{module}.cu")
    assert "FPTQ_INT8_QMAX" in CC.read_source(CC.HEADER)


def test_cupy_is_registered_and_unavailable_here_with_a_reason():
    assert registered_backends()["cupy"] == "fptq.backends.cupy_backend:CupyBackend"
    try:
        import cupy  # noqa: F401
        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy or no GPU: the usual case off the GPU machine
        with pytest.raises(BackendUnavailable, match="cupy|CuPy|CUDA"):
            get_backend("cupy")
    else:
        pytest.skip("a GPU is present: tests/test_cupy_gpu.py covers the backend")


def test_module_list_covers_the_backend_operations():
    """Every operation of fptq.backends.OPERATIONS has its unchecked hook in CupyBackend (a kernel; only
    quantize_weight's hook is the base class's composition of weight_scales and
    quantize_weight_with_scales), and every hook's kernel is in the module list."""
    from fptq.backends import OPERATIONS
    from fptq.backends.cupy_backend import CupyBackend

    for op in OPERATIONS:
        if op != "quantize_weight":
            assert f"_{op}_unchecked" in CupyBackend.__dict__, op
    kernels = {k for names in CC.MODULES.values() for k in names}
    assert set(OPERATIONS) - {"quantize_weight", "w4a8_matmul"} <= kernels
    assert np.dtype(np.float32).itemsize == 4
