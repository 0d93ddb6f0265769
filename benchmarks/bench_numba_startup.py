"""Start-up cost of the numba backend: JIT compilation (cold cache) and loading the cache (warm).

Runs the same child process twice with one fresh, empty ``NUMBA_CACHE_DIR``:

1. **cold**: every kernel is compiled on its first call (and written to the cache);
2. **warm**: a new process with the cache filled: every kernel is loaded, not compiled.

The child imports numba and the backend, then calls every operation of the
backend once on small inputs (the W4A8 matmul on each of its three paths) and
reports each first call's wall time, then the same calls again (steady state).
Prints a table and, with ``--out``, writes JSON.

    python benchmarks/bench_numba_startup.py --out numba_startup.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import numba
t_numba = time.perf_counter()
from fptq import spec
from fptq.backends import get_backend
b = get_backend("numba")
t_backend = time.perf_counter()

rng = np.random.default_rng(0)
x = rng.standard_normal((5, 96)).astype(np.float32)
w = rng.standard_normal((12, 96)).astype(np.float32)
amax = np.abs(x).max(axis=0)
s = spec.lae_scales(amax)
q, qs = spec.quantize_act_per_token(x)
qw = spec.quantize_weight(w, 32)
qa = spec.quantize_weight(w, 32, "uint4_asym")
packed = spec.pack_int4(qw.q)
qx1 = q[:1]
bias = rng.standard_normal(12).astype(np.float32)
acc = spec.w4a8_group_sums(q, packed, None, 96, 32)
calls = {
    "act_scale_from_amax": lambda: b.act_scale_from_amax(amax),
    "quantize_act_per_tensor": lambda: b.quantize_act_per_tensor(x, np.float32(0.1)),
    "quantize_act_per_token": lambda: b.quantize_act_per_token(x),
    "dequantize_act": lambda: (b.dequantize_act(q, qs), b.dequantize_act(q, np.float32(0.1))),
    "lae_scales": lambda: b.lae_scales(amax),
    "lae_apply_activation": lambda: b.lae_apply_activation(x, s),
    "lae_apply_weight": lambda: b.lae_apply_weight(w, s),
    "weight_scales": lambda: (b.weight_scales(w, 32), b.weight_scales(w, 32, "uint4_asym")),
    "quantize_weight": lambda: (b.quantize_weight(w, 32), b.quantize_weight(w, 32, "uint4_asym")),
    "dequantize_weight": lambda: b.dequantize_weight(qw.q, qw.scale, None, 32),
    "pack_int4": lambda: b.pack_int4(qw.q),
    "unpack_int4": lambda: b.unpack_int4(packed, 96),
    "w4a8_group_sums": lambda: (b.w4a8_group_sums(q, packed, None, 96, 32),
                                b.w4a8_group_sums(q, packed, None, 96, 3)),
    "w4a8_epilogue": lambda: b.w4a8_epilogue(acc, qw.scale, qs, bias),
    "w4a8_matmul decode": lambda: b.w4a8_matmul(qx1, qs[:1], packed, qw.scale, None, 96, 32, bias=bias,
                                                path="decode"),
    "w4a8_matmul tiled": lambda: b.w4a8_matmul(q, qs, packed, qw.scale, None, 96, 32, bias=bias, path="tiled"),
    "w4a8_matmul generic": lambda: b.w4a8_matmul(q, qs, packed, qw.scale, None, 96, 32, bias=bias,
                                                 path="generic"),
    "select_policies": lambda: b.select_policies(amax),
}
first, again = {}, {}
for name, fn in calls.items():
    t = time.perf_counter(); fn(); first[name] = time.perf_counter() - t
t_first = time.perf_counter()
for name, fn in calls.items():
    t = time.perf_counter(); fn(); again[name] = time.perf_counter() - t
print(json.dumps({"import_numba_s": t_numba - t0, "backend_s": t_backend - t_numba,
                  "first_calls_s": t_first - t_backend, "total_s": t_first - t0,
                  "first": first, "again": again, "describe": b.describe()}))
'''


def run_child(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"child failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fptq-numba-cache-") as cache:
        cold = run_child(cache)
        warm = run_child(cache)
        n_files = sum(len(f) for _, _, f in os.walk(cache))
    load1 = os.getloadavg()[0]

    print(f"numba backend start-up; {cold['describe']}")
    print(f"load average {load0:.2f} at start, {load1:.2f} at end; cache: {n_files} files\n")
    print(f"| {'first call of':<34} | {'cold (compile) s':>16} | {'warm (cache) s':>14} | {'steady ms':>9} |")
    print(f"|{'-' * 36}|{'-' * 18}:|{'-' * 16}:|{'-' * 11}:|")
    for name in cold["first"]:
        print(f"| {name:<34} | {cold['first'][name]:16.3f} | {warm['first'][name]:14.3f} | "
              f"{warm['again'][name] * 1e3:9.3f} |")
    for key, label in (("import_numba_s", "import numba"), ("backend_s", "import + construct backend"),
                       ("first_calls_s", "all first calls"), ("total_s", "total in-process"),
                       ("process_wall_s", "process wall (incl. Python start)")):
        print(f"| {label:<34} | {cold[key]:16.3f} | {warm[key]:14.3f} | {'':>9} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": _dt.datetime.now().isoformat(timespec="minutes"), "machine": platform.platform(),
                       "python": platform.python_version(), "loadavg": [load0, load1], "cache_files": n_files,
                       "cold": cold, "warm": warm}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
