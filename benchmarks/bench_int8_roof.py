"""The int8 roof of this CPU beside the W4A8 kernel at prefill sizes (issue 24).

A prefill is the model's linears at M = prompt length, compute-bound, not memory-bound: the
question for the prefill target is how far the kernel is from what the CPU's integer dot product
can do. This script measures both in one run:

* **roof**: ``vpdpbusd`` on zmm (AVX-512 VNNI, the instruction the numba backend's tile uses;
  64 multiply-adds of uint8 x int8 into int32 each) in 16 independent chains held in registers,
  no memory traffic, on 1 thread and on ``--threads`` threads (one loop per thread in a numba
  ``prange``); giga multiply-accumulates per second (GMAC/s), the best of ``--rounds``; and the
  tile's inner step alone on 1 thread (the same 16 vpdpbusd with the activations as 4-byte
  broadcast loads and a 64-byte weight load and nibble unpack per step, data in L1): what the
  tile's loop can reach before its epilogues, outer loops and cache misses;
* **kernel**: the numba backend's prepared linear (``prepare_linear`` + ``linear_forward``:
  per-token INT8 quantization of float32 x, the blocked integer product, the float epilogue;
  what the runtime's prefill calls) at M = ``--m`` on the given weight shapes (default: the
  linears of Qwen2.5-Coder-1.5B, the model of issue 24's prefill target), median of
  ``--reps`` calls, with its GMAC/s (M N K / time) and its share of the multi-thread roof;
* **prefill bound**: with ``--layers`` and the count of each shape per layer (``--shapes
  NxK*count``), the model's linear multiply-adds for one M-token prefill over the roof: the time
  no kernel of this instruction can beat on this machine, beside the kernel's measured time.

Where the CPU has no AVX-512 VNNI the roof is not measured (the script says so and exits 2).

    python benchmarks/bench_int8_roof.py --out benchmarks/results/bench_int8_roof_<date>.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time

#: Qwen2.5-Coder-1.5B's linears per decoder layer, (N, K, count): q, o (1536 x 1536); k, v
#: (256 x 1536); gate, up (8960 x 1536); down (1536 x 8960); 28 layers.
QWEN15B_SHAPES = "1536x1536*2,256x1536*2,8960x1536*2,1536x8960*1"
QWEN15B_LAYERS = 28
CHAINS = 16
MACS_PER_DPBUSD = 64
#: bytes between the activation rows of the tile-step measurement (K = 1024 plus the kernel's 64-byte pad)
TILE_X_STRIDE = 1088


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads of the multi-thread roof and the kernel")
    p.add_argument("--m", type=int, default=512, help="activation rows of the kernel's product (prefill length)")
    p.add_argument("--shapes", default=QWEN15B_SHAPES,
                   help="weight shapes NxK*count, comma-separated (count: per decoder layer)")
    p.add_argument("--layers", type=int, default=QWEN15B_LAYERS, help="decoder layers, for the prefill bound")
    p.add_argument("--group", type=int, default=128, help="weight group size")
    p.add_argument("--rounds", type=int, default=5, help="roof measurements per thread count (best is kept)")
    p.add_argument("--reps", type=int, default=7, help="timed kernel calls per shape (median is kept)")
    p.add_argument("--out", default=None, help="JSON file to write (default: benchmarks/results/bench_int8_roof_<date-time>.json)")
    a = p.parse_args(argv)
    for name in ("threads", "m", "layers", "group", "rounds", "reps"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    try:
        a.shape_list = parse_shapes(a.shapes)
    except ValueError as e:
        p.error(f"--shapes: {e}")
    return a


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"1536x1536*2,256x1536"`` -> [(1536, 1536, 2), (256, 1536, 1)]."""
    out = []
    for part in text.split(","):
        dims, _, count = part.strip().partition("*")
        n, _, k = dims.partition("x")
        try:
            row = (int(n), int(k), int(count or 1))
        except ValueError:
            raise ValueError(f"{part!r} is not NxK or NxK*count") from None
        if min(row) < 1:
            raise ValueError(f"{part!r}: every number must be >= 1")
        out.append(row)
    return out


class _ChainIR:
    """IR helpers for the two measured loops: ``for i in range(n)`` around CHAINS int32 x 16 sums that start at
    (c, ..., c) for chain c, each step's new sums from ``step(ir, i, sums)``; returns lane 0 of the sums' total
    as int64 (so the result says how many steps ran)."""

    def __init__(self, builder):
        from llvmlite import ir
        from numba.core import cgutils

        self.ir, self.b = ir, builder
        self.i8, self.i32, self.i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        self.vi, self.vb = ir.VectorType(self.i32, 16), ir.VectorType(self.i8, 64)
        self.dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vi, [self.vi] * 3),
                                                     "llvm.x86.avx512.vpdpbusd.512")

    def c64(self, v):
        return self.ir.Constant(self.i64, v)

    def splat(self, v):
        ir, vi = self.ir, self.vi
        one = self.b.insert_element(ir.Constant(vi, ir.Undefined), v, ir.Constant(self.i32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vi, ir.Undefined), ir.Constant(vi, [0] * 16))

    def load(self, addr, ty):
        return self.b.load(self.b.inttoptr(addr, ty.as_pointer()), align=1)

    def loop(self, n, step):
        ir, b = self.ir, self.b
        entry, body, done = b.basic_block, b.append_basic_block("b"), b.append_basic_block("d")
        b.branch(body)
        b.position_at_end(body)
        i = b.phi(self.i64)
        i.add_incoming(self.c64(0), entry)
        sums = []
        for c in range(CHAINS):
            acc = b.phi(self.vi)
            acc.add_incoming(ir.Constant(self.vi, [c] * 16), entry)
            sums.append(acc)
        new = step(i, sums)
        i_next = b.add(i, self.c64(1))
        i.add_incoming(i_next, body)
        for acc, nacc in zip(sums, new):
            acc.add_incoming(nacc, body)
        b.cbranch(b.icmp_signed("<", i_next, n), body, done)
        b.position_at_end(done)
        total = new[0]
        for v in new[1:]:
            total = b.add(total, v)
        return b.sext(b.extract_element(total, ir.Constant(self.i32, 0)), self.i64)


def _roof_kernels():
    """Numba functions: ``dp_loop(n, seed)`` runs n iterations of CHAINS vpdpbusd on registers; ``dp_parallel``
    runs one such loop per thread; ``tile_loop(n, x, w)`` the tile's inner step n times on L1-resident data."""
    import numba
    from numba import types
    from numba.core.extending import intrinsic

    @intrinsic
    def dp_chains(typingctx, n, seed):
        def codegen(context, builder, signature, args):
            t = _ChainIR(builder)
            u = t.splat(builder.trunc(args[1], t.i32))
            x = builder.xor(u, t.ir.Constant(t.vi, [0x01010101] * 16))
            return t.loop(args[0], lambda i, sums: [builder.call(t.dpbusd, [acc, u, x]) for acc in sums])

        return types.int64(types.int64, types.int64), codegen

    @intrinsic
    def tile_steps(typingctx, n, xp, wp):
        """The tile's inner step (fptq/backends/numba_kernels/tile.py, 8 rows) on L1-resident data: per
        iteration one 64-byte weight load (cycling over 128 x 64 bytes at ``wp``), its two nibbles
        (and, shift), and per row two vpdpbusd with the row's next 4 + 4 activation bytes as broadcast
        loads (rows :data:`TILE_X_STRIDE` bytes apart at ``xp``, cycling over 64 steps)."""
        def codegen(context, builder, signature, args):
            t = _ChainIR(builder)
            b, c64 = builder, t.c64

            def step(i, sums):
                w = t.load(b.add(args[2], b.mul(b.and_(i, c64(127)), c64(64))), t.vb)
                lo = b.bitcast(b.and_(w, t.ir.Constant(t.vb, [15] * 64)), t.vi)
                hi = b.bitcast(b.lshr(w, t.ir.Constant(t.vb, [4] * 64)), t.vi)
                xoff = b.add(args[1], b.mul(b.and_(i, c64(63)), c64(8)))
                new = []
                for r in range(CHAINS // 2):
                    xa = b.add(xoff, c64(r * TILE_X_STRIDE))
                    new.append(b.call(t.dpbusd, [sums[2 * r], lo, t.splat(t.load(xa, t.i32))]))
                    new.append(b.call(t.dpbusd, [sums[2 * r + 1], hi, t.splat(t.load(b.add(xa, c64(4)), t.i32))]))
                return new

            return t.loop(args[0], step)

        return types.int64(types.int64, types.int64, types.int64), codegen

    @numba.njit(cache=False)
    def dp_loop(n, seed):
        return dp_chains(n, seed)

    @numba.njit(cache=False)
    def tile_loop(n, x, w):
        return tile_steps(n, x.ctypes.data, w.ctypes.data)

    @numba.njit(parallel=True, cache=False)
    def dp_parallel(n, seed, parts):
        out = 0
        for p in numba.prange(parts):
            out += dp_chains(n, seed + p)
        return out

    return dp_loop, dp_parallel, tile_loop


def tile_inputs():
    """The L1-resident activations and weights :func:`_roof_kernels`' ``tile_loop`` reads (ones: every
    vpdpbusd then adds 4 per lane, so its result is known)."""
    import numpy as np

    return np.ones(TILE_X_STRIDE * (CHAINS // 2), np.int8), np.full(128 * 64, 0x11, np.uint8)


def measure_roof(threads: int, rounds: int) -> dict:
    """Best GMAC/s of the vpdpbusd chains on 1 thread and on ``threads`` threads, and (``"1 tile step"``) of the
    tile's inner step on L1-resident data on 1 thread."""
    import numba

    dp_loop, dp_parallel, tile_loop = _roof_kernels()
    x, w = tile_inputs()
    tile_loop(1000, x, w)
    n = 20_000_000                       # 20 M iterations x 16 x 64 = 20.5 G MAC per thread
    dp_loop(1000, 3)
    numba.set_num_threads(threads)
    dp_parallel(1000, 3, threads)
    result = {}
    for label, fn, parts in (("1", lambda: dp_loop(n, 7), 1), (str(threads), lambda: dp_parallel(n, 7, threads), threads),
                             ("1 tile step", lambda: tile_loop(n, x, w), 1)):
        best = None
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        result[label] = {"seconds": best, "gmac_s": parts * n * CHAINS * MACS_PER_DPBUSD / best / 1e9}
    return result


def measure_kernel(shapes, m: int, group: int, threads: int, reps: int) -> list[dict]:
    """The numba backend's prepared linear at M = m on each (N, K): median ms and GMAC/s."""
    import numba
    import numpy as np

    from fptq.backends import get_backend
    from fptq.spec.formats import WeightFormat

    numba.set_num_threads(threads)
    be = get_backend("numba")
    rng = np.random.default_rng(0)
    rows = []
    for n, k, count in shapes:
        packed = rng.integers(0, 256, size=(n, k // 2), dtype=np.uint8)
        wscale = rng.uniform(0.001, 0.01, size=(n, k // group)).astype(np.float32)
        zero = rng.integers(0, 16, size=(n, k // group), dtype=np.uint8)
        prep = be.prepare_linear(packed, wscale, zero, None, None, k, group, WeightFormat.ASYMMETRIC)
        x = rng.standard_normal((m, k), dtype=np.float32)
        be.linear_forward(x, prep)                                    # compile / load the cache
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            be.linear_forward(x, prep)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        rows.append({"n": n, "k": k, "count": count, "m": m, "ms": ms, "gmac_s": m * n * k / ms / 1e6})
    return rows


def has_vnni() -> bool:
    from fptq.backends.numba_kernels.tile import USE_VNNI

    return bool(USE_VNNI)


def prefill_bound(rows: list[dict], layers: int, roof_gmac_s: float) -> dict:
    """One prefill's linear multiply-adds over the roof, beside the kernel's measured time."""
    macs = layers * sum(r["m"] * r["n"] * r["k"] * r["count"] for r in rows)
    kernel_s = layers * sum(r["ms"] * r["count"] for r in rows) / 1e3
    return {"layers": layers, "gmac": macs / 1e9, "roof_s": macs / roof_gmac_s / 1e9, "kernel_s": kernel_s,
            "kernel_share_of_roof": macs / kernel_s / 1e9 / roof_gmac_s}


def print_report(roof: dict, rows: list[dict], bound: dict, threads: int, file=sys.stdout) -> None:
    top = roof[str(threads)]["gmac_s"]
    print(f"vpdpbusd zmm roof: 1 thread {roof['1']['gmac_s']:.1f} GMAC/s, {threads} threads {top:.1f} GMAC/s; "
          f"the tile's inner step on L1-resident data, 1 thread: {roof['1 tile step']['gmac_s']:.1f} GMAC/s "
          f"({roof['1 tile step']['gmac_s'] / roof['1']['gmac_s']:.1%} of the 1-thread roof)", file=file)
    print(f"{'N x K':>12} {'M':>5} {'ms':>9} {'GMAC/s':>8} {'of roof':>8}", file=file)
    for r in rows:
        print(f"{r['n']:>6}x{r['k']:<5} {r['m']:>5} {r['ms']:>9.2f} {r['gmac_s']:>8.1f} {r['gmac_s'] / top:>8.1%}",
              file=file)
    print(f"prefill ({bound['layers']} layers, {bound['gmac']:.0f} G MAC): roof {bound['roof_s'] * 1e3:.0f} ms, "
          f"kernel {bound['kernel_s'] * 1e3:.0f} ms ({bound['kernel_share_of_roof']:.1%} of the roof)", file=file)


def main(argv=None) -> int:
    a = parse_args(argv)
    if not has_vnni():
        print("bench_int8_roof: this CPU (as numba targets it) has no AVX-512 VNNI; the roof is not measured",
              file=sys.stderr)
        return 2
    started = _dt.datetime.now(_dt.timezone.utc)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"bench_int8_roof_{started:%Y-%m-%d-%H%M}.json")
    if os.path.exists(out):
        print(f"bench_int8_roof: {out} exists; not overwriting it (name another --out)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    roof = measure_roof(a.threads, a.rounds)
    rows = measure_kernel(a.shape_list, a.m, a.group, a.threads, a.reps)
    for r in rows:
        r["share_of_roof"] = r["gmac_s"] / roof[str(a.threads)]["gmac_s"]
    bound = prefill_bound(rows, a.layers, roof[str(a.threads)]["gmac_s"])
    print_report(roof, rows, bound, a.threads)
    doc = {"started_utc": started.isoformat(timespec="seconds"), "threads": a.threads, "group": a.group,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
           "roof": roof, "kernel": rows, "prefill": bound}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "x") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
