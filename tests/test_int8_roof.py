"""benchmarks/bench_int8_roof.py: the vpdpbusd roof loop computes what it claims (so its GMAC/s counts
real instructions), the shape parser, the prefill bound's arithmetic and the JSON it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_bench_scripts import _script  # noqa: E402  (the benchmark scripts loaded by file, one helper)


def _roof():
    return _script("bench_int8_roof")


def _needs_vnni(mod):
    if not mod.has_vnni():
        pytest.skip("no AVX-512 VNNI on this CPU (as numba targets it): the roof loop cannot run")


def test_parse_shapes_reads_counts_and_refuses_bad_parts():
    mod = _roof()
    assert mod.parse_shapes("1536x1536*2, 256x1536") == [(1536, 1536, 2), (256, 1536, 1)]
    for bad in ("1536", "axb", "0x16", "16x16*0"):
        with pytest.raises(ValueError, match="NxK|>= 1"):
            mod.parse_shapes(bad)


def test_prefill_bound_is_the_macs_over_the_roof():
    mod = _roof()
    rows = [{"m": 4, "n": 10, "k": 20, "count": 2, "ms": 1.0}, {"m": 4, "n": 5, "k": 8, "count": 1, "ms": 0.5}]
    b = mod.prefill_bound(rows, layers=3, roof_gmac_s=2.0)
    macs = 3 * (4 * 10 * 20 * 2 + 4 * 5 * 8)
    assert b["gmac"] == macs / 1e9
    assert b["roof_s"] == pytest.approx(macs / 2.0e9)
    assert b["kernel_s"] == pytest.approx(3 * 2.5e-3)
    assert b["kernel_share_of_roof"] == pytest.approx(macs / 7.5e-3 / 2.0e9)


@pytest.mark.parametrize("n,seed", [(1, 7), (1000, 0x01FF7F80), (123457, -5)])
def test_roof_loop_runs_every_vpdpbusd(n, seed):
    """Lane 0 of the 16 chains' sum: chain c starts at c and gains d = sum_j u_j x_j per iteration
    (u the seed's four bytes unsigned, x = u ^ 0x01 per byte, signed), int32 wrapping; a loop that ran
    one iteration more or less, or a chain the compiler dropped, gives another number."""
    mod = _roof()
    _needs_vnni(mod)
    dp_loop, _, _ = mod._roof_kernels()
    u = np.array([seed], dtype=np.int64).astype(np.uint32).view(np.uint8).astype(np.int64)
    x = (u ^ 1).astype(np.uint8).view(np.int8).astype(np.int64)
    d = int((u * x).sum())
    want = (sum(range(mod.CHAINS)) + mod.CHAINS * n * d + 2**31) % 2**32 - 2**31
    assert dp_loop(n, seed) == want


def test_main_writes_json_and_never_overwrites(tmp_path, capsys):
    mod = _roof()
    _needs_vnni(mod)
    out = tmp_path / "roof.json"
    args = ["--threads", "1", "--m", "8", "--shapes", "32x256*2", "--layers", "2", "--rounds", "1", "--reps", "1",
            "--out", str(out)]
    assert mod.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["roof"]["1"]["gmac_s"] > 0 and doc["kernel"][0]["n"] == 32 and doc["prefill"]["layers"] == 2
    before = out.read_bytes()
    assert mod.main(args) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_tile_step_loop_runs_every_step():
    """Weights 0x11 (both nibbles 1) and activations 1: each vpdpbusd adds 4 per lane, so lane 0 of the 16
    chains' sum is sum(c) + 16 * 4 n; a step more or less, or a dropped chain, gives another number."""
    mod = _roof()
    _needs_vnni(mod)
    _, _, tile_loop = mod._roof_kernels()
    x, w = mod.tile_inputs()
    for n in (1, 64, 1001):
        assert tile_loop(n, x, w) == sum(range(mod.CHAINS)) + mod.CHAINS * 4 * n
