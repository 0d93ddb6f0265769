"""The online rotation's run-time product ``x @ Q``: Hadamard factors vs a dense matmul, one process.

    python benchmarks/bench_rotation.py [--widths 576,1536] [--rows 1,512] [--threads 1] [--json PATH]

``Q`` is fptq's randomized Hadamard rotation of each width (``fptq.reference.rotation.random_orthogonal``)
in float32, as a model stores it; "factors" is what a rotated model computes at run time (a
:class:`fptq.models.rotate.RotateOutput` holding ``Q`` and the factors read from it: for a float32 CPU
tensor, :func:`fptq.reference.rotation.apply_hadamard_factors` in NumPy), "dense" is ``x @ Q`` in torch.
Prints a table of medians and writes JSON.
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


def _median_us(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="576,1536", help="rotation widths (SmolLM2-135M: hidden 576, MLP 1536)")
    ap.add_argument("--rows", default="1,512", help="rows of x (1: a decoded token; 512: a prefill window)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", default="results/bench_rotation.json")
    a = ap.parse_args(argv)
    import torch

    from fptq.models.rotate import RotateOutput, _times_rotation, factor_tensors
    from fptq.reference import rotation as R

    torch.set_num_threads(a.threads)
    rows_out = []
    print("| width | rows | blocks | factors (us) | dense (us) | dense / factors |")
    print("|---|---|---|---|---|---|")
    for n in (int(w) for w in a.widths.split(",")):
        q = torch.from_numpy(R.random_orthogonal(n, seed=0).astype(np.float32))
        factors = factor_tensors(q)
        if factors is None:
            raise SystemExit(f"width {n}: Q is not read back as Hadamard factors")
        module = RotateOutput(torch.nn.Identity(), q, factors)
        blocks = R.hadamard_blocks(factors[0].shape[0] // factors[1].shape[0])
        for m in (int(x) for x in a.rows.split(",")):
            x = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
            calls = 200 if m <= 16 else 20
            fast = _median_us(lambda: _times_rotation(x, module, "rotation"), calls)
            dense = _median_us(lambda: x @ q, calls)
            sizes = "x".join(str(b.shape[0]) for b in blocks) or "-"
            rows_out.append({"width": n, "rows": m, "blocks": sizes, "factors_us": fast, "dense_us": dense})
            print(f"| {n} | {m} | {sizes} x {factors[1].shape[0]} | {fast:.0f} | {dense:.0f} | {dense / fast:.2f} |")
    out = {"results": rows_out, "threads": a.threads, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "loadavg": os.getloadavg()}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
