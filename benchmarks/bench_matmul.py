"""Side-by-side timing of the W4A8 matmul of every available backend against torch's own matmuls.

For each weight shape (N, K) and each M, one run times, interleaved round by
round so that every variant sees the same machine load:

* every backend that starts here (``fptq.backends.available_backends()``, or
  the ``--backends`` subset): ``w4a8_matmul`` with what a real caller passes
  per call (int8 activations, their per-token scales, the *packed* INT4
  weight, its scales, a bias), inputs already on the backend's device;
* for a backend with a prepared-weight API (``prepare_weight`` +
  ``w4a8_matmul_prepared``), that too, as ``NAME:prepared`` (the weight is
  unpacked once, outside the timing);
* every backend's prepared-linear path, the model's hot path, as
  ``NAME:linear``: ``prepare_linear`` once (outside the timing), then per call
  ``linear_forward(x)`` on float32 activations [M, K] (the check of x, per-token
  INT8 quantization, the integer matmul and the epilogue; what ``W4A8Linear``
  runs). Compared with the float baselines, which take the same float32 x;
* ``read weights (floor)``: one parallel pass reading every byte of the numba
  backend's prepared weights (blocked nibbles, zero points, scales), the
  memory floor of a product that must read them once (``vs floor`` =
  floor_ms / ms);
* the baselines a user would reach for instead: torch float32
  ``torch.matmul``, bfloat16 ``torch.matmul`` (weights and activations
  already bfloat16) and ``torch._int_mm`` on int8 (one per-channel int8
  product: no groups, no epilogue).

Each variant gets one warm-up call (reported as ``first_call_ms``; for numba it
includes JIT compilation or loading the cache), then is timed until the
per-case budget is spent (at least ``--min-reps`` calls, at most ``--max-reps``).
A variant whose predicted call time (from the previous, smaller M) exceeds
``--max-call`` seconds is skipped and the table says so (the NumPy
reference at large shapes). All backend outputs are compared bit for bit with
each other (and with the NumPy reference where it ran); a disagreement is
reported in the table and the JSON, and the exit status is 1.
``--breakdown`` adds the torch backend's two halves timed alone (the per-group
``_int_mm`` products; the pinned float32 epilogue on ready int32 sums), to
show where its time goes.

Reported per variant: median milliseconds, GOP/s (2*M*N*K / median), the
throughput relative to ``_int_mm`` (``int_mm_ms / ms``; 1.0 = as fast), the
speed-up over float32 matmul (``fp32_ms / ms``) and over bfloat16 matmul
(``bf16_ms / ms``), and for the numba backend at M = 1 the ratio to the memory
floor. The ``NAME:linear`` outputs are compared bit for bit with each other.

    python benchmarks/bench_matmul.py --out bench_matmul.json
    python benchmarks/bench_matmul.py --backends torch,numba --m 1,128 --shapes 4096x4096
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_SHAPES = "4096x4096,1536x576,576x1536"
DEFAULT_M = "1,16,128,512"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=None,
                   help="comma-separated backend names (default: every backend that starts here)")
    p.add_argument("--m", default=DEFAULT_M, help=f"comma-separated M values (default {DEFAULT_M})")
    p.add_argument("--shapes", default=DEFAULT_SHAPES,
                   help=f"comma-separated NxK weight shapes (default {DEFAULT_SHAPES})")
    p.add_argument("--group-size", type=int, default=128, help="G (default 128)")
    p.add_argument("--fmt", default="int4_sym", choices=["int4_sym", "uint4_asym"])
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed calls per (shape, M) case")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-reps", type=int, default=200)
    p.add_argument("--max-call", type=float, default=3.0,
                   help="skip a variant whose predicted single call exceeds this many seconds")
    p.add_argument("--no-baselines", action="store_true", help="skip fp32 / bf16 / _int_mm")
    p.add_argument("--no-prepared", action="store_true", help="skip the NAME:prepared variants")
    p.add_argument("--no-linear", action="store_true",
                   help="skip the NAME:linear variants (prepare_linear + linear_forward)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the torch backend's two halves alone: its per-group int8 products "
                        "(torch:products) and its float32 epilogue on ready int32 sums (torch:epilogue)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--clock", default="wall", choices=["wall", "thread"],
                   help="wall: wall time (default). thread: CPU time of the calling thread, with torch and numba "
                        "set to one thread: a one-thread comparison that other jobs on a shared machine cannot "
                        "inflate by preempting it (they still share the caches and memory)")
    p.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "env"],
                   help="OMP_WAIT_POLICY for this process, set before torch loads (default passive: on a "
                        "shared box spinning OpenMP threads make many-kernel paths erratic; 'env' = leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu_model": platform.processor() or "?"}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


#: the clock of the timed calls: wall time, or (--clock thread) this thread's CPU time
CLOCK = time.perf_counter


class Variant:
    """One timed callable plus its bookkeeping."""

    def __init__(self, name, kind, fn, ops):
        self.name, self.kind, self.fn, self.ops = name, kind, fn, ops
        self.times: list[float] = []
        self.first_call_s = None
        self.output = None
        self.skipped = None

    def call(self):
        t0 = CLOCK()
        out = self.fn()
        self.times.append(CLOCK() - t0)
        return out

    @property
    def median_s(self):
        return statistics.median(self.times) if self.times else None


def make_inputs(np, spec, n, k, m, g, fmt, rng):
    """Random exact-format inputs (values do not change the timing of an exact kernel)."""
    ng = spec.num_groups(k, g)
    qx = rng.integers(-127, 128, size=(m, k), dtype=np.int8)
    xscale = (rng.random(m, dtype=np.float32) + np.float32(0.5)) / np.float32(64)
    packed = rng.integers(0, 256, size=(n, spec.packed_width(k)), dtype=np.uint8)
    if k % 2:
        packed[:, -1] &= 0x0F
    wscale = (rng.random((n, ng), dtype=np.float32) + np.float32(0.5)) / np.float32(16)
    zero = rng.integers(0, 16, size=(n, ng), dtype=np.uint8) if fmt == "uint4_asym" else None
    bias = rng.standard_normal(n, dtype=np.float32)
    return qx, xscale, packed, wscale, zero, bias


def backend_variants(backends, inputs, k, g, fmt, ops, with_prepared):
    out = []
    qx, xscale, packed, wscale, zero, bias = inputs
    for name, b in backends.items():
        t = [None if a is None else b.from_numpy(a) for a in inputs]
        bqx, bxs, bpk, bws, bz, bb = t
        out.append(Variant(name, "backend",
                           lambda b=b, a=t: b.w4a8_matmul(a[0], a[1], a[2], a[3], a[4], k, g, fmt, a[5]), ops))
        if with_prepared and hasattr(b, "prepare_weight") and hasattr(b, "w4a8_matmul_prepared"):
            prep = b.prepare_weight(bpk, bz, k, g, fmt)
            out.append(Variant(f"{name}:prepared", "backend",
                               lambda b=b, p=prep, a=t: b.w4a8_matmul_prepared(a[0], a[1], p, a[3], a[5]), ops))
    return out


def linear_variants(backends, inputs, x, k, g, fmt, ops):
    """Each backend's prepared-linear path (the model's): prepare_linear once, then linear_forward(x)."""
    out = []
    qx, xscale, packed, wscale, zero, bias = inputs
    for name, b in backends.items():
        t = [None if a is None else b.from_numpy(a) for a in (packed, wscale, zero, bias)]
        prep = b.prepare_linear(t[0], t[1], t[2], t[3], None, k, g, fmt)
        bx = b.from_numpy(x)
        out.append(Variant(f"{name}:linear", "linear", lambda b=b, p=prep, bx=bx: b.linear_forward(bx, p), ops))
    return out


@functools.lru_cache(maxsize=None)
def _read_kernels():
    """(one-thread, parallel) passes over uint64 words (an XOR per thread's share): every byte read once."""
    import numba
    import numpy as np

    @numba.njit(cache=False, error_model="numpy")
    def read(v):   # over a slice: vectorized (a range(lo, hi) loop over the whole array was 4.6x slower)
        a = np.uint64(0)
        for i in range(v.size):
            a ^= v[i]
        return a

    @numba.njit(parallel=True, cache=False, error_model="numpy")
    def read_parallel(w):
        parts = numba.get_num_threads()
        chunk = (w.size + parts - 1) // parts
        out = np.zeros(parts, np.uint64)
        for c in numba.prange(parts):
            out[c] = read(w[c * chunk:min((c + 1) * chunk, w.size)])
        return out

    return read, read_parallel


def floor_variant(numba_backend, inputs, k, g, fmt, ops):
    """One read of every byte of the numba backend's prepared weights (its memory floor), on one
    thread or on all of them, as the backend's linear_forward decides for this size."""
    import numpy as np

    from fptq.backends.numba_kernels import blocked

    qx, xscale, packed, wscale, zero, bias = inputs
    prep = numba_backend.prepare_linear(packed, wscale, zero, bias, None, k, g, fmt)
    if prep.kernel is None:
        return []
    words = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                            for a in (prep.kernel.wb, prep.kernel.zc, prep.kernel.wsb)])
    words = np.concatenate([words, np.zeros(-words.size % 8, np.uint8)]).view(np.uint64)
    read, read_parallel = _read_kernels()
    m = qx.shape[0]
    fn = read_parallel if m * prep.n * k >= blocked.PARALLEL_MIN_MACS else read
    return [Variant("read weights (floor)", "floor", lambda: fn(words), ops)]


def breakdown_variants(backend, inputs, k, g, fmt, ops):
    """The torch backend's integer products and its epilogue, each alone (untiled), on prepared weights."""
    import torch

    from fptq.backends import torch_matmul as MM

    qx, xscale, packed, wscale, zero, bias = [None if a is None else backend.from_numpy(a) for a in inputs]
    prep = backend.prepare_weight(packed, zero, k, g, fmt)
    x3 = MM.activation_groups(qx, prep)
    acc = torch.empty((prep.ng, x3.shape[1], prep.w3.shape[1]), dtype=torch.int32)
    ws_t = MM.scales_transposed(wscale, prep)

    def products():
        for gi in range(prep.ng):
            torch._int_mm(x3[gi], prep.w_t[gi], out=acc[gi])

    products()
    y, t = torch.empty(acc.shape[1:]), torch.empty(acc.shape[1:])

    def epilogue():
        y.zero_()
        for gi in range(prep.ng):
            t.copy_(acc[gi])
            t.mul_(ws_t[gi])
            y.add_(t)
        y.mul_(xscale[:, None])
        y.add_(bias)

    return [Variant("torch:products", "breakdown", products, ops),
            Variant("torch:epilogue", "breakdown", epilogue, ops)]


def baseline_variants(torch, m, n, k, ops, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    xb, wb = x.bfloat16(), w.bfloat16()
    xi = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    wi = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=gen)
    return [
        Variant("torch fp32 matmul", "baseline", lambda: torch.matmul(x, w.t()), ops),
        Variant("torch bf16 matmul", "baseline", lambda: torch.matmul(xb, wb.t()), ops),
        Variant("torch._int_mm int8", "baseline", lambda: torch._int_mm(xi, wi.t()), ops),
    ]


def run_case(variants, budget, min_reps, max_reps, max_call, predicted):
    """Warm up each variant, then time them round-robin until the budget is spent."""
    active = []
    for v in variants:
        guess = predicted.get(v.name)
        if guess is not None and guess > max_call:
            v.skipped = f"skipped: predicted {guess:.1f} s per call > --max-call {max_call:g} s"
            continue
        t0 = time.perf_counter()
        v.output = v.fn()
        v.first_call_s = time.perf_counter() - t0
        if v.first_call_s > max_call:  # too slow to repeat: the warm-up is its only sample
            v.times.append(v.first_call_s)
            v.skipped = "1 call only (slower than --max-call)"
            continue
        active.append(v)
    start = time.perf_counter()
    while active:
        for v in list(active):
            v.call()
            n = len(v.times)
            spent = time.perf_counter() - start
            # done: enough samples, or the case budget is spent, or (a slow variant) its own calls used it up
            if n >= max_reps or (n >= min_reps and spent >= budget) or sum(v.times) >= budget:
                active.remove(v)


def check_agreement(np, variants, to_numpy, kind="backend"):
    """All outputs of the variants of this kind must be the same bits. Returns {variant: None | message}."""
    outs = {v.name: to_numpy[v.name](v.output) for v in variants if v.kind == kind and v.output is not None}
    if not outs:
        return {}
    ref_name = next((r for r in ("numpy", "numpy:linear") if r in outs), next(iter(outs)))
    ref = outs[ref_name]
    res = {}
    for name, o in outs.items():
        same = o.dtype == ref.dtype and o.shape == ref.shape and np.array_equal(o.view(np.uint32), ref.view(np.uint32))
        res[name] = None if same else f"differs from {ref_name}"
    return res


def fmt_row(cells, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_table(shape_results, file=sys.stdout):
    header = ["M", "variant", "median ms", "GOP/s", "vs _int_mm", "vs fp32", "vs bf16", "vs floor", "reps", "note"]
    for sr in shape_results:
        print(f"\nN={sr['n']}  K={sr['k']}  G={sr['group_size']}  ({sr['fmt']})", file=file)
        rows = [header]
        for case in sr["cases"]:
            for r in case["variants"]:
                ms = r["median_ms"]
                rows.append([case["m"], r["name"],
                             "-" if ms is None else f"{ms:.3f}",
                             "-" if r["gops"] is None else f"{r['gops']:.1f}",
                             "-" if r["vs_int_mm"] is None else f"{r['vs_int_mm']:.2f}",
                             "-" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}",
                             "-" if r.get("vs_bf16") is None else f"{r['vs_bf16']:.2f}",
                             "-" if r.get("vs_floor") is None else f"{r['vs_floor']:.2f}",
                             r["reps"], r["note"] or ""])
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        for row in rows:
            print(fmt_row(row, widths), file=file)


# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    if args.omp_wait_policy != "env":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    import numpy as np

    from fptq import spec
    from fptq.backends import available_backends, get_backend

    status = available_backends()
    wanted = [s.strip() for s in args.backends.split(",")] if args.backends else \
        [name for name, why in status.items() if why is None]
    backends, unavailable = {}, {}
    for name in wanted:
        try:
            backends[name] = get_backend(name)
        except Exception as e:  # a backend that cannot start is reported, not fatal
            unavailable[name] = f"{type(e).__name__}: {e}"
    for name, why in status.items():
        if why is not None and args.backends is None:
            unavailable[name] = why
    try:
        import torch
    except ImportError:
        torch = None
        if not args.no_baselines:
            print("torch is not installed: baselines skipped", file=sys.stderr)
            args.no_baselines = True
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread":
        global CLOCK
        CLOCK = time.thread_time
        try:   # numba first: starting its OpenMP pool resets the thread count torch shares with it
            import numba
            numba.set_num_threads(1)
        except ImportError:
            pass
        if torch is not None:
            torch.set_num_threads(1)

    print(f"backends: {', '.join(f'{n} ({b.describe()})' for n, b in backends.items())}")
    for n, why in unavailable.items():
        print(f"not available: {n}: {why.splitlines()[0]}")
    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine_info(),
        "torch": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "clock": args.clock,
        "numpy": np.__version__,
        "backends": {n: b.describe() for n, b in backends.items()},
        "unavailable": unavailable,
        "load_average_start": load_average(),
        "settings": {k: v for k, v in vars(args).items()},
    }
    ms_list = [int(v) for v in args.m.split(",")]
    shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shapes.split(",")]
    rng = np.random.default_rng(args.seed)
    to_numpy = {}
    for name, b in backends.items():
        to_numpy[name] = b.to_numpy
        to_numpy[f"{name}:prepared"] = b.to_numpy
        to_numpy[f"{name}:linear"] = b.to_numpy
    shape_results = []
    for n, k in shapes:
        g = k if args.group_size == -1 else args.group_size
        sr = {"n": n, "k": k, "group_size": g, "fmt": args.fmt, "cases": []}
        last = {}  # variant -> (m, median_s): predicts the next, larger M
        for m in sorted(ms_list):
            ops = 2.0 * m * n * k
            inputs = make_inputs(np, spec, n, k, m, g, args.fmt, rng)
            variants = backend_variants(backends, inputs, k, g, args.fmt, ops, not args.no_prepared)
            if not args.no_linear:
                x = rng.standard_normal((m, k), dtype=np.float32)
                variants += linear_variants(backends, inputs, x, k, g, args.fmt, ops)
                if m == 1 and "numba" in backends:
                    variants += floor_variant(backends["numba"], inputs, k, g, args.fmt, ops)
            if args.breakdown and "torch" in backends:
                variants += breakdown_variants(backends["torch"], inputs, k, g, args.fmt, ops)
            if not args.no_baselines:
                variants += baseline_variants(torch, m, n, k, ops, args.seed)
            predicted = {name: t * max(m / pm, 1.0) for name, (pm, t) in last.items()}
            t0 = time.perf_counter()
            run_case(variants, args.budget, args.min_reps, args.max_reps, args.max_call, predicted)
            agree = check_agreement(np, variants, to_numpy)
            agree.update(check_agreement(np, variants, to_numpy, kind="linear"))
            base = {v.name: v.median_s for v in variants}
            int_mm, fp32 = base.get("torch._int_mm int8"), base.get("torch fp32 matmul")
            bf16, floor = base.get("torch bf16 matmul"), base.get("read weights (floor)")
            rows = []
            for v in variants:
                med = v.median_s
                if med is not None:
                    last[v.name] = (m, med)
                note = v.skipped or ""
                if agree.get(v.name):
                    note = (note + "; " if note else "") + "OUTPUT " + agree[v.name]
                rows.append({
                    "name": v.name, "kind": v.kind, "reps": len(v.times),
                    "median_ms": None if med is None else med * 1e3,
                    "min_ms": None if not v.times else min(v.times) * 1e3,
                    "first_call_ms": None if v.first_call_s is None else v.first_call_s * 1e3,
                    "gops": None if med is None else ops / med / 1e9,
                    "vs_int_mm": None if med is None or int_mm is None else int_mm / med,
                    "vs_fp32": None if med is None or fp32 is None else fp32 / med,
                    "vs_bf16": None if med is None or bf16 is None else bf16 / med,
                    "vs_floor": (None if med is None or floor is None or not v.name.startswith("numba")
                                 else floor / med),
                    "bit_exact_agreement": (None if v.kind not in ("backend", "linear") or v.name not in agree
                                            else agree[v.name] is None),
                    "note": note or None,
                })
            sr["cases"].append({"m": m, "wall_s": time.perf_counter() - t0, "variants": rows})
            print(f"  N={n} K={k} M={m}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        shape_results.append(sr)
    info["load_average_end"] = load_average()
    if torch is not None:
        info["torch_threads_end"] = torch.get_num_threads()
    info["results"] = shape_results
    print_table(shape_results)
    print(f"\nload average: start {info['load_average_start']}, end {info['load_average_end']}; "
          f"torch threads {info['torch_threads']} (at the end {info.get('torch_threads_end')}); "
          f"OMP_WAIT_POLICY={info['omp_wait_policy']}; clock {args.clock}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {args.out}")
    bad = [r for sr in shape_results for c in sr["cases"] for r in c["variants"] if r["bit_exact_agreement"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
