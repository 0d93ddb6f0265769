"""The GPU check's non-GPU logic: benchmarks/bench_gpu.py's arithmetic and its clean refusal
without a GPU, and benchmarks/gpu_check.sh's stages (parsed and listed with --dry-run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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
    assert "| 4096x4096 | sym | 1 | 3.0 (decode) | 2.10 | 1.43 |" in md and "8.0 (M=32)" in md and "- n1" in md


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
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for stage in ("[env]", "[compile]", "[conf-cupy]", "[conf-torch]", "[gpu-tests]", "[bench]"):
        assert stage in out, stage
    assert "conf-large" in out  # run, or said to be skipped
    assert "cupy" in out and "torch-cuda" in out and "tests/test_cupy_gpu.py" in out
    limits = [int(line.split("timeout ")[1].split("s")[0]) for line in out.splitlines() if "timeout " in line]
    assert sum(limits) <= 480, f"the stage timeouts add up to {sum(limits)} s, over the 8-minute budget"
