"""The GPU check's non-GPU logic: benchmarks/bench_gpu.py's arithmetic and its clean refusal
without a GPU, and benchmarks/gpu_check.sh's stages (parsed and listed with --dry-run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_memory_floor_matches_the_issue():
    """N = K = 4096, M = 1, G = 128 at 4.3 TB/s: about 2.1 us (the issue's figure)."""
    b = _bench()
    nbytes = b.w4a8_bytes(1, 4096, 4096, 128, asym=False)
    assert nbytes == 4096 * 2048 + 4096 * 32 * 4 + 4096 + 4 + 4096 * 4
    assert 2.0 < b.floor_us(nbytes, 4.3e12) < 2.2
    assert b.w4a8_bytes(1, 4096, 4096, 128, asym=True) == nbytes + 4096 * 32


def test_rotation_exceeds_four_l2_caches():
    b = _bench()
    l2 = 60 << 20
    c = b.rotation_copies(8 << 20, l2)
    assert c * (8 << 20) >= 4 * l2 and (c - 1) * (8 << 20) < 4 * l2
    assert b.rotation_copies(1 << 30, l2) == 1 and b.rotation_copies(1, l2) == 64


def test_argument_parsers():
    b = _bench()
    assert b.parse_shapes("4096x4096, 11008x4096") == ((4096, 4096), (11008, 4096))
    assert b.parse_ms("1,16,4096") == (1, 16, 4096)
    for bad in ("4096", "ax4"):
        with pytest.raises(Exception, match="NxK"):
            b.parse_shapes(bad)
    with pytest.raises(Exception, match=">= 1"):
        b.parse_ms("0,1")


def test_verdicts_and_markdown():
    b = _bench()
    rows = [{"n": 4096, "k": 4096, "m": 1, "fmt": "sym", "cupy_us": 3.0, "cupy_path": "decode", "floor_us": 2.1,
             "bf16_us": 9.0, "int_mm_us": 8.0, "int_mm_padded": True, "torch_cuda_us": 50.0, "agree": True},
            {"n": 4096, "k": 4096, "m": 1024, "fmt": "sym", "cupy_us": 100.0, "cupy_path": "prefill",
             "floor_us": 5.0, "bf16_us": 90.0, "int_mm_us": 40.0, "torch_cuda_us": 300.0, "agree": False}]
    assert b.verdicts(rows[0]) == {"within_2x_floor": True, "beats_bf16": True}
    assert b.verdicts(rows[1]) == {"half_of_int8": False, "beats_bf16": False}
    md = b.markdown({"machine": {"gpu": "H200", "date": "d"}, "ceilings": {"copy_TBps": 4.3, "bf16_TFLOPs": 790},
                     "group_size": 128, "rows": rows, "notes": ["n1"]})
    assert "| 4096x4096 | sym | 1 | 3.0 (decode) | n/a | 2.10 | 1.43 |" in md and "8.0 (M=32)" in md and "- n1" in md


def test_bench_refuses_cleanly_without_a_gpu(tmp_path):
    try:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2, r.stderr
    assert "bench_gpu.py needs" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_gpu_check_parses_and_lists_every_stage(tmp_path):
    """The check's stages in order (env, then the smoke first of the GPU stages), one log each, every
    timeout counted: under 360 s in all, so a failed first run can be fixed and rerun in a 15-minute slot."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
    names = [line[1:line.index("]")] for line in lines]
    assert names == ["env", "smoke", "memcheck", "racecheck", "gpu-tests", "bench", "conf-cupy", "conf-torch",
                     "compile"], names
    logs = [line.split("-> ")[1].split(":")[0] for line in lines]
    assert logs == [f"logs/{n}.log" for n in names]  # one log per stage
    out = r.stdout
    assert "gpu_smoke.py --gemm-only --no-pool" in out and "--tool memcheck" in out and "--tool racecheck" in out
    assert "--fptq-backend cupy" in out and "--fptq-backend torch-cuda" in out and "tests/test_cupy_gpu.py" in out
    limits = [int(line.split("timeout ")[1].split("s")[0]) for line in lines]
    assert sum(limits) < 360, f"the stage timeouts add up to {sum(limits)} s, over the 6-minute budget"
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def _smoke():
    spec_ = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    return mod


def test_smoke_launches_every_kernel_over_the_emulated_backend():
    """gpu_smoke.run_smoke's cases, run over the emulated backend (tests/cupy_emulated.py): every kernel of
    cupy_compile.MODULES is launched (each decode MT, both prefill tiles) and every result has the spec's bits."""
    sys.path.insert(0, str(ROOT / "tests"))
    from cupy_emulated import EmulatedCupyBackend

    s = _smoke()
    r = s.run_smoke(lambda force: EmulatedCupyBackend(force_path=force))
    assert r["ok"] and not r["kernels_not_launched"], r
    assert len(r["cases"]) == len(s.op_cases(np.random.default_rng(0))) + len(s.gemm_cases(np.random.default_rng(0)))


def test_smoke_reports_a_wrong_kernel_and_a_kernel_never_launched(monkeypatch):
    sys.path.insert(0, str(ROOT / "tests"))
    import cupy_emulated as E

    s = _smoke()
    monkeypatch.setattr(s, "gemm_cases", lambda rng: [])
    good = E._EMULATED["pack_int4"]

    def bad_pack(grid, block, q, packed, n_rows, k):
        good(grid, block, q, packed, n_rows, k)
        packed.reshape(-1)[0] ^= 1
    monkeypatch.setitem(E._EMULATED, "pack_int4", bad_pack)
    r = s.run_smoke(lambda force: E.EmulatedCupyBackend(force_path=force))
    assert not r["ok"]
    assert [c["case"] for c in r["cases"] if not c["ok"]] == ["pack_int4"]
    assert "gemm_decode<1>" in r["kernels_not_launched"]


def test_bench_rows_survive_failures_and_save_cupy_first():
    """bench_shape over the emulated cupy backend with a torch that fails everywhere: every row keeps its
    cupy time (saved before anything else runs), the failures are recorded per column, and the table
    lists them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from cupy_emulated import EmulatedCupyBackend, _NumpyAsCupy

    b = _bench()

    class Timer:
        def cupy_graph(self, calls):
            for c in dict.fromkeys(calls):  # each distinct launch once (the emulation is slow)
                c()
            return 1.5, "fake"

        def torch_graph(self, calls):
            raise RuntimeError("torch: no CUDA here")

    class Torch:
        def __getattr__(self, name):
            raise RuntimeError("torch: no CUDA here")

    saved = []
    ctx = {"torch": Torch(), "cp": _NumpyAsCupy(), "timer": Timer(), "group_size": 128, "ms": (1, 8), "l2": 256,
           "rng": np.random.default_rng(0), "deadline": float("inf"), "cupy": EmulatedCupyBackend(),
           "cupy_prefill": EmulatedCupyBackend(force_path="prefill"), "torch_b": b._NoTorch(), "copy_bps": 4e12}
    result = {"rows": [], "notes": [], "machine": {"gpu": "emulated", "date": "d"}, "group_size": 128,
              "ceilings": {"copy_TBps": 4.0, "bf16_TFLOPs": 1.0}}

    def emit(row):
        first = not result["rows"] or result["rows"][-1] is not row
        if first:
            result["rows"].append(row)
            saved.append(dict(row))
    b.bench_shape(ctx, 16, 256, emit)
    assert [(r["m"], r["fmt"]) for r in result["rows"]] == [(1, "sym"), (8, "sym"), (1, "asym"), (8, "asym")]
    for r, first_save in zip(result["rows"], saved):
        assert first_save["cupy_us"] == 1.5 and "torch_cuda_us" not in first_save  # cupy saved first
        assert r["cupy_path"] == "decode" and "torch_cuda_us_error" in r and "cublas_error" in r
    assert all(r.get("cupy_prefill_us") == 1.5 for r in result["rows"] if r["m"] == 8)
    md = b.markdown(result)
    assert "- failed: 16x256 sym M=1: torch_cuda_us: RuntimeError" in md
