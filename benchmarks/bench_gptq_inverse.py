"""GPTQ's inverse Cholesky: the in-place LAPACK one fptq uses against the NumPy one it replaced, one process.

    python benchmarks/bench_gptq_inverse.py [--sizes 1024,2048,4096] [--rounds 3] [--json PATH]

For each ``K``: a Hessian ``H = X^T X / R`` of ``R = 2K`` standard normal rows (float64, seeded), dampened
by 0.01 of its mean diagonal as ``gptq_quantize`` does. "numpy" is the computation fptq used until
2026-12-06 (``L = cholesky(H); Linv = inv(L); U = cholesky(Linv^T Linv)^T``: ~14/3 K^3 FLOPs, about four
``[K, K]`` float64 at its peak); "lapack" is :func:`fptq.reference.gptq._inverse_cholesky` (``potrf``,
``potri``, ``potrf`` in the handed buffer: 4/3 K^3 FLOPs, one ``[K, K]``). The two alternate round by
round; medians of the wall times, their ratio, and the largest difference between the two factors relative
to the factor's largest entry (both are the same matrix in exact arithmetic; they differ by float64
rounding). Peak memory is not timed here: ``python benchmarks/memory_model_check.py coefficients``.
Prints a table and writes JSON (default ``benchmarks/results/bench_gptq_inverse_<date>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fptq.reference.gptq import _inverse_cholesky  # noqa: E402


def numpy_inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """The factor as fptq computed it before the in-place version (``H`` already dampened)."""
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    del L
    return np.linalg.cholesky(Linv.T @ Linv).T


def hessian(k: int, seed: int = 0) -> np.ndarray:
    """``X^T X / R`` of ``R = 2K`` standard normal rows, float64 [K, K]."""
    x = np.random.default_rng(seed).standard_normal((2 * k, k))
    return x.T @ x / len(x)


def time_one(k: int, rounds: int) -> dict:
    """Alternating rounds of both methods on the same ``H``; medians, ratio and the factors' difference."""
    H = hessian(k)
    damped = H.copy()
    damped[np.diag_indices(k)] += 0.01 * float(np.mean(np.diag(H)))
    t_np, t_la = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        u_np = numpy_inverse_cholesky(damped)
        t_np.append(time.perf_counter() - t)
        buf = H.copy()
        t = time.perf_counter()
        u_la = _inverse_cholesky([buf], 0.01)
        t_la.append(time.perf_counter() - t)
    rel = float(np.abs(u_np - u_la).max() / np.abs(u_np).max())
    med_np, med_la = float(np.median(t_np)), float(np.median(t_la))
    return {"k": k, "numpy_s": med_np, "lapack_s": med_la, "speedup": med_np / med_la,
            "numpy_all_s": t_np, "lapack_all_s": t_la, "max_rel_diff": rel}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,2048,4096", help="K values (comma-separated)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per size")
    ap.add_argument("--json", default=None, help="JSON path")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or a.rounds < 1:
        ap.error("--sizes must list positive integers and --rounds must be >= 1")
    load0 = os.getloadavg()
    rows = [time_one(k, a.rounds) for k in sizes]
    print(f"{'K':>6} {'numpy s':>9} {'lapack s':>9} {'speedup':>8} {'max rel diff':>13}")
    for r in rows:
        print(f"{r['k']:>6} {r['numpy_s']:9.3f} {r['lapack_s']:9.3f} {r['speedup']:8.2f} {r['max_rel_diff']:13.2e}")
    date = time.strftime("%Y-%m-%d")
    out = Path(a.json) if a.json else ROOT / "benchmarks" / "results" / f"bench_gptq_inverse_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rounds": a.rounds, "rows": rows,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "numpy": np.__version__,
           "command": "python benchmarks/bench_gptq_inverse.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"load average {load0[0]:.2f} -> {doc['loadavg_end'][0]:.2f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
