"""A prefill with glibc's default malloc thresholds, then with the runtime's (issue 24).

One process: the runtime of CKPT is built with ``keep_freed_memory=False`` (malloc as the process had it),
``--rounds`` prefills of ``--tokens`` pseudo-random tokens are timed, with the minor page faults and the
system CPU time of each (``getrusage``); then :func:`fptq.heap.keep_freed_memory` is set (it
cannot be unset in a process, hence this order) and the same prefills are timed again. Prints the medians
and writes the rounds to JSON.

    python benchmarks/bench_prefill_allocator.py CKPT --threads 2 --out benchmarks/results/prefill_allocator_<date>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import statistics
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an fptq checkpoint the runtime runs")
    p.add_argument("--tokens", type=int, default=512, help="prefill length (default 512)")
    p.add_argument("--rounds", type=int, default=5, help="timed prefills per setting (default 5)")
    p.add_argument("--threads", type=int, default=2, help="numba threads (default 2)")
    p.add_argument("--out", default=None, help="JSON file to write (refused if it exists)")
    a = p.parse_args(argv)
    for name in ("tokens", "rounds", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if not os.path.isdir(a.checkpoint):
        p.error(f"checkpoint: {a.checkpoint} is not a directory")
    if a.out and os.path.exists(a.out):
        p.error(f"--out: {a.out} exists; not overwriting it")
    return a


def timed_prefills(rt, ids, rounds: int) -> list[dict]:
    out = []
    for _ in range(rounds):
        rt.reset()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        rt.forward(ids)
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        out.append({"ms": dt * 1e3, "minor_faults": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime,
                    "user_s": r1.ru_utime - r0.ru_utime})
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    import numba

    from fptq.models.checkpoint import load_quantized
    from fptq.heap import keep_freed_memory
    from fptq.runtime.engine import Runtime

    numba.set_num_threads(a.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    model, _, _ = load_quantized(a.checkpoint, backend="numba")
    rt = Runtime.from_model(model, threads=a.threads, keep_freed_memory=False)
    ids = np.random.default_rng(0).integers(100, rt.w.vocab, a.tokens)
    rt.reset()
    rt.forward(ids)                                                       # compile / warm
    res = {"glibc defaults": timed_prefills(rt, ids, a.rounds)}
    kept = keep_freed_memory()
    rt.reset()
    rt.forward(ids)
    res["keep_freed_memory" if kept else "keep_freed_memory (not glibc: unchanged)"] = timed_prefills(rt, ids, a.rounds)
    print(f"| malloc | prefill {a.tokens} ms (median) | tok/s | minor faults per prefill | system CPU s |")
    print("|---|---|---|---|---|")
    for name, rows in res.items():
        ms = statistics.median(r["ms"] for r in rows)
        print(f"| {name} | {ms:.0f} | {a.tokens / ms * 1e3:.1f} | {statistics.median(r['minor_faults'] for r in rows):.0f} | "
              f"{statistics.median(r['sys_s'] for r in rows):.2f} |")
    if a.out:
        doc = {"started_utc": started.isoformat(timespec="seconds"), "checkpoint": os.path.abspath(a.checkpoint),
               "tokens": a.tokens, "threads": a.threads, "load_average_end": os.getloadavg(), "rounds": res}
        with open(a.out, "x") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
