"""Where the time of the runtime's decode linears (M = 1) goes, on one model's shapes (issue 24).

Builds every layer's seven W4A8 linears in the runtime's blocked layout from random bytes (the same
arrays :func:`fptq.runtime.linears.stack_slots` makes: packed nibbles, zero points, scales, bias; random
weights cost the same as real ones), stacked over ``--layers`` layers so that, as at decode, every call
reads its weights from DRAM. Then, interleaved round by round (medians), it times:

* ``read 1t`` / ``read 2t``: the read bandwidth (vectorized XOR over 512 MB, 1 and 2 threads) and
  ``copy``: ``np.copyto``'s rate, in the same run;
* per slot, one call per layer of each decode variant (``--variants``), reporting ms per layer-call and
  the bytes it reads per second (packed weights + zero points + scales + bias);
* the whole token's linears (every slot of every layer) per variant.

Every variant's outputs are compared bit for bit with ``serial`` (the one-thread prepared linear).
With ``PYTHONPATH`` set to an older source tree, ``--variants serial`` times that tree's kernel.

    python benchmarks/bench_decode_linears.py --model qwen2.5-coder-1.5b --rounds 5
    python benchmarks/bench_decode_linears.py --variants serial --clock cpu --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))   # after PYTHONPATH: an older tree can be timed

#: (hidden, q rows, kv rows, intermediate, layers, group, bias on q/k/v)
SHAPES = {"qwen2.5-coder-1.5b": (1536, 1536, 256, 8960, 28, 128, True),
          "smollm2-135m": (576, 576, 192, 1536, 30, 64, False)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SHAPES), default="qwen2.5-coder-1.5b")
    p.add_argument("--layers", type=int, default=None, help="layers stacked (default: the model's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="serial,decode", help="comma list of: serial, decode")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this thread's CPU time (time.thread_time; less sensitive to other jobs; counts "
                   "only the calling thread, so meaningful for the one-thread 'serial' variant only)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def make_linear(rng, n: int, k: int, g: int, layers: int, bias: bool) -> tuple:
    """A slot's stacked tuple (the runtime's ``lin``) of random symmetric W4A8 linears."""
    from fptq.backends.numba_kernels import blocked

    nblk, ng = (n + 15) // 16, (k + g - 1) // g
    steps = (k + 7) // 8
    wb = rng.integers(0, 256, (layers, nblk, steps, 64), dtype=np.uint8)
    zc = np.full((layers, nblk, ng, 16), 8, np.uint8)
    wsb = (rng.random((layers, nblk, ng, 16), dtype=np.float32) * 1e-2 + 1e-3).astype(np.float32)
    bb = rng.standard_normal((layers, nblk * 16)).astype(np.float32) if bias else np.zeros((layers, nblk * 16),
                                                                                             np.float32)
    steps_last = (k - (ng - 1) * g + 7) // 8
    return (wb, zc, wsb, bb, np.ones(layers, np.float32), np.ones(layers, np.bool_), bias, np.int64(g),
            np.int64(steps_last), np.int64(n), np.int64(blocked.panel_size(nblk)))


def lin_bytes(lin) -> int:
    """Bytes one layer's call reads from its weights."""
    return sum(a[0].nbytes for a in lin[:4])


def _variants(threads: int):
    """name -> fn(x, lins, l): ``serial`` one call per linear on one thread (the runtime's M = 1 path before
    issue 24's split); ``decode`` the group of linears sharing x in one two-thread region."""
    from fptq.runtime import forward as fw

    def serial(x, lins, l):
        return [fw.linear_serial(x, lin, l)[0] for lin in lins]

    def decode(x, lins, l):
        la, lb, lc = (lins + (lins[0],) * 3)[:3]
        return list(fw.linear_group(x, la, lb, lc, len(lins), l, threads, 1 << 62, 0)[:len(lins)])

    return {"serial": serial, "decode": decode}


def _groups(slots: dict):
    """The calls of one layer: (name, input width key, linears sharing that input)."""
    return [("qkv", "h", (slots["q"], slots["k"], slots["v"])), ("o", "a", (slots["o"],)),
            ("gate_up", "h", (slots["gate"], slots["up"])), ("down", "f", (slots["down"],))]


def run(a) -> dict:
    import numba

    import fptq
    from bench_llamacpp import copy_bandwidth, read_bandwidth

    print(f"fptq from {Path(fptq.__file__).parent}", flush=True)

    numba.set_num_threads(a.threads)
    hidden, nq, nkv, inter, layers, g, bias = SHAPES[a.model]
    layers = a.layers or layers
    rng = np.random.default_rng(0)
    slots = {"q": make_linear(rng, nq, hidden, g, layers, bias), "k": make_linear(rng, nkv, hidden, g, layers, bias),
             "v": make_linear(rng, nkv, hidden, g, layers, bias), "o": make_linear(rng, hidden, nq, g, layers, False),
             "gate": make_linear(rng, inter, hidden, g, layers, False),
             "up": make_linear(rng, inter, hidden, g, layers, False),
             "down": make_linear(rng, hidden, inter, g, layers, False)}
    xs = {"h": rng.standard_normal((1, hidden)).astype(np.float32),
          "a": rng.standard_normal((1, nq)).astype(np.float32),
          "f": rng.standard_normal((1, inter)).astype(np.float32)}
    variants = {name: fn for name, fn in _variants(a.threads).items() if name in a.variants.split(",")}
    groups = _groups(slots)
    times = {(v, gname): [] for v in variants for gname, _, _ in groups}
    token = {v: [] for v in variants}
    bw = {"read_1t": [], "read_2t": [], "copy": []}
    mismatches = []
    for v, fn in variants.items():                           # compile, and check the bits
        for gname, xk, lins in groups:
            ref, got = _variants(1)["serial"](xs[xk], lins, 0), fn(xs[xk], lins, 0)
            if not all(np.array_equal(r.view(np.uint32), o.view(np.uint32)) for r, o in zip(ref, got)):
                mismatches.append(f"{v} {gname}")
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    for r in range(a.rounds):
        bw["read_1t"].append(read_bandwidth(1, reps=2) / 1e9)
        bw["read_2t"].append(read_bandwidth(a.threads, reps=2) / 1e9)
        bw["copy"].append(copy_bandwidth(reps=2) / 1e9)
        numba.set_num_threads(a.threads)
        for v, fn in variants.items():
            tok = 0.0
            for gname, xk, lins in groups:
                t0 = clock()
                for l in range(layers):
                    fn(xs[xk], lins, l)
                dt = (clock() - t0) / layers
                times[(v, gname)].append(dt * 1e3)
                tok += dt * layers
            token[v].append(tok * 1e3)
    med = statistics.median
    rows = []
    for gname, _, lins in groups:
        nbytes = sum(lin_bytes(lin) for lin in lins)
        for v in variants:
            ms = med(times[(v, gname)])
            rows.append({"call": gname, "variant": v, "ms": ms, "bytes": nbytes, "gb_s": nbytes / ms / 1e6})
    per_token = sum(lin_bytes(lin) for _, _, lins in groups for lin in lins) * layers
    return {"model": a.model, "layers": layers, "threads": a.threads, "rounds": a.rounds, "clock": a.clock,
            "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "bandwidth_gb_s": {k: med(v) for k, v in bw.items()}, "calls": rows,
            "token_ms": {v: med(t) for v, t in token.items()}, "token_rounds_ms": token,
            "bytes_per_token": per_token, "mismatches": mismatches}


def main(argv=None) -> int:
    a = parse_args(argv)
    res = run(a)
    print(f"{res['model']}, {res['layers']} layers, {res['threads']} threads, {res['rounds']} rounds, {a.clock}, "
          f"load {res['loadavg'][0]:.2f} ({res['date']})")
    print("bandwidth GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in res["bandwidth_gb_s"].items()))
    print(f"{'call':8} {'variant':8} {'ms/layer':>9} {'MB':>7} {'GB/s':>6}")
    for r in res["calls"]:
        print(f"{r['call']:8} {r['variant']:8} {r['ms']:9.3f} {r['bytes'] / 1e6:7.2f} {r['gb_s']:6.1f}")
    mb = res["bytes_per_token"] / 1e6
    for v, ms in res["token_ms"].items():
        print(f"token linears [{v}]: {ms:.1f} ms ({mb:.0f} MB, {mb / ms:.1f} GB/s)")
    if res["mismatches"]:
        print("BITS DIFFER:", res["mismatches"])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
