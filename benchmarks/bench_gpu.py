"""W4A8 matmul on the GPU, side by side in one run: cupy kernels, torch-cuda, cuBLAS, the memory floor.

::

    PYTHONPATH=$PWD python benchmarks/bench_gpu.py [--out DIR] [--ms 1,4,8,16,64,256,1024,4096]
        [--shapes 4096x4096,11008x4096,4096x11008] [--group-size 128] [--budget-s 150]

Measures, in this order and in one process (so all see the same card state):

1. the ceilings: device-to-device copy bandwidth (bytes read + written, 1 GiB
   buffers) and a bf16 ``torch.matmul`` at 8192^3;
2. for each (N, K), weight format (symmetric, asymmetric; G = 128) and M, one
   row, each measurement guarded (a failure is recorded as ``<column>_error`` in
   the row and listed under the table; nothing else is lost) and the row saved
   as soon as its first number exists: ``cupy`` W4A8 first
   (``CupyBackend.matmul_launcher``: the decode or prefill kernel, no per-call
   checks), at 4 <= M <= 16 also ``cupy`` with the prefill path forced (where
   the decode/prefill crossover ``cupy_launch.DECODE_MAX_M`` should sit is
   read off these two columns), then ``torch-cuda`` W4A8 (the prepared-weight path,
   ``torch_matmul.matmul_prepared``), cuBLAS bf16 (``torch.matmul``) and cuBLAS
   int8 (``torch._int_mm``; it needs M > 16, so M <= 16 is timed at M = 32 and
   marked), and the W4A8 memory floor: packed weights + scales (+ zero points)
   + int8 activations + per-token scales + float32 output, over the copy
   bandwidth measured in step 1.

Timing: each variant's calls are captured in a CUDA graph (CuPy stream capture
or ``torch.cuda.CUDAGraph``) cycling over enough copies of the weights to
exceed four times the L2 cache, so that back-to-back launches are timed rather
than launch latency or cache hits; CUDA events around each replay; the median
of the replays, per call. A variant that cannot be captured is timed eagerly
(events around a loop) and marked so. cupy and torch-cuda results are compared
bit for bit on every shape (both must equal the spec).

Writes ``bench_gpu.json`` and ``bench_gpu.md`` to ``--out`` (default ``$OUT``
or ``benchmarks/results/gpu``) after the ceilings and after every row, and
prints the table. Without a CUDA GPU (or
without torch/CuPy) it exits with status 2 and says what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
MS = (1, 4, 8, 16, 64, 256, 1024, 4096)
GROUP_SIZE = 128
#: H200 figures measured on this workplace's machines (docs/gpu.md); the run measures its own.
EXPECTED_COPY_TBPS = 4.3
EXPECTED_BF16_TFLOPS = 790.0


class NoGPU(RuntimeError):
    """What this benchmark needs is missing here."""


# ---------------------------------------------------------------------------------------------
# pure arithmetic (unit-tested without a GPU: tests/test_cupy_bench.py)


def w4a8_bytes(m: int, n: int, k: int, group_size: int, asym: bool) -> int:
    """Fewest bytes a W4A8 matmul moves: packed weights, scales (+ zero points), int8 x, x scales, float32 y."""
    ng = -(-k // group_size)
    return n * ((k + 1) // 2) + n * ng * 4 + (n * ng if asym else 0) + m * k + m * 4 + m * n * 4


def floor_us(nbytes: int, copy_bytes_per_s: float) -> float:
    """Time to move ``nbytes`` at the measured copy rate (bytes read + written per second), in microseconds."""
    return nbytes / copy_bytes_per_s * 1e6


def rotation_copies(bytes_per_call: int, l2_bytes: int, cap: int = 64) -> int:
    """Copies of the inputs to cycle through so one pass exceeds four times the L2 cache."""
    return max(1, min(cap, math.ceil(4 * l2_bytes / max(bytes_per_call, 1))))


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"4096x4096,11008x4096"`` -> ((N, K), ...)."""
    out = []
    for part in text.split(","):
        n, sep, k = part.strip().partition("x")
        if not sep or not n.isdigit() or not k.isdigit():
            raise argparse.ArgumentTypeError(f"--shapes: expected NxK items such as 4096x11008, got {part!r}")
        out.append((int(n), int(k)))
    return tuple(out)


def parse_ms(text: str) -> tuple[int, ...]:
    try:
        ms = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ms: expected comma-separated integers, got {text!r}") from None
    if not ms or min(ms) < 1:
        raise argparse.ArgumentTypeError(f"--ms: every M must be >= 1, got {text!r}")
    return ms


def verdicts(row: dict) -> dict:
    """The issue's targets for one row: M <= 16 within 2x of the floor; M >= 1024 at least 50% of
    cuBLAS int8 throughput; faster than cuBLAS bf16 at every M. None where a time is missing."""
    out = {}
    c = row.get("cupy_us")
    if c and row.get("floor_us") and row["m"] <= 16:
        out["within_2x_floor"] = c <= 2 * row["floor_us"]
    if c and row.get("int_mm_us") and row["m"] >= 1024:
        out["half_of_int8"] = row["int_mm_us"] / c >= 0.5
    if c and row.get("bf16_us"):
        out["beats_bf16"] = c < row["bf16_us"]
    return out


def markdown(result: dict) -> str:
    c = result["ceilings"]
    lines = [f"# W4A8 on {result['machine']['gpu']} ({result['machine']['date']})", "",
             f"copy {c['copy_TBps']:.2f} TB/s (read + write), bf16 8192^3 {c['bf16_TFLOPs']:.0f} TFLOP/s; "
             f"G = {result['group_size']}; times are medians per call in microseconds.", "",
             "| N x K | fmt | M | cupy (path) | cupy forced prefill | floor | cupy/floor | torch-cuda | bf16 | "
             "int8 `_int_mm` | int8/cupy | bf16/cupy | same bits |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def f(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)

    for r in result["rows"]:
        cu = r.get("cupy_us")
        lines.append(
            f"| {r['n']}x{r['k']} | {r['fmt']} | {r['m']} | {f(cu)} ({r.get('cupy_path', '?')}) | "
            f"{f(r.get('cupy_prefill_us'))} | {f(r.get('floor_us'), '.2f')} | {f(cu / r['floor_us'] if cu else None, '.2f')} | "
            f"{f(r.get('torch_cuda_us'))} | {f(r.get('bf16_us'))} | "
            f"{f(r.get('int_mm_us'))}{' (M=32)' if r.get('int_mm_padded') else ''} | "
            f"{f(r['int_mm_us'] / cu if cu and r.get('int_mm_us') else None, '.2f')} | "
            f"{f(r['bf16_us'] / cu if cu and r.get('bf16_us') else None, '.2f')} | {r.get('agree', 'n/a')} |")
    errors = [f"{r['n']}x{r['k']} {r['fmt']} M={r['m']}: {key[:-6]}: {v}" for r in result["rows"]
              for key, v in r.items() if key.endswith("_error")]
    if result.get("notes") or errors:
        lines += [""] + [f"- {n}" for n in result["notes"]] + [f"- failed: {e}" for e in errors]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the GPU part


def require_gpu():
    """(torch, cupy) or :class:`NoGPU` saying what is missing."""
    try:
        import torch
    except ImportError as e:
        raise NoGPU(f"bench_gpu.py needs torch with CUDA: {e}") from e
    if not torch.cuda.is_available():
        raise NoGPU(f"bench_gpu.py needs an NVIDIA GPU: torch {torch.__version__} sees none "
                    f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda or 'none'})")
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - ImportError or a CUDA runtime error: say which
        raise NoGPU(f"bench_gpu.py needs CuPy with a GPU: {type(e).__name__}: {e}") from e
    return torch, cupy


class Timer:
    def __init__(self, torch, cupy, replays: int):
        self.torch, self.cp, self.replays = torch, cupy, replays

    def torch_graph(self, calls) -> tuple[float, str]:
        """Median microseconds per call of ``calls`` (zero-argument callables) captured in one torch graph."""
        torch = self.torch
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for c in calls[:3]:
                c()  # warm-up: cuBLAS handles and workspaces before capture
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for c in calls:
                    c()
            run, how = g.replay, "graph"
        except Exception:  # noqa: BLE001 - not capturable: time eagerly
            torch.cuda.synchronize()

            def run():
                for c in calls:
                    c()
            how = "eager"
        return self._events(run, lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize,
                            lambda a, b: a.elapsed_time(b), len(calls)), how

    def cupy_graph(self, calls) -> tuple[float, str]:
        cp = self.cp
        s = cp.cuda.Stream(non_blocking=True)
        with s:
            for c in calls[:3]:
                c()
            s.synchronize()
            try:
                s.begin_capture()
                try:
                    for c in calls:
                        c()
                finally:
                    g = s.end_capture()
                run, how = (lambda: g.launch(s)), "graph"
            except Exception:  # noqa: BLE001 - not capturable: time eagerly
                def run():
                    for c in calls:
                        c()
                how = "eager"
            t = self._events(run, cp.cuda.Event, s.synchronize, lambda a, b: cp.cuda.get_elapsed_time(a, b),
                             len(calls), record=lambda e: e.record(s))
        return t, how

    def _events(self, run, make_event, sync, elapsed, ncalls, record=None):
        record = record or (lambda e: e.record())
        run()
        sync()
        times = []
        for _ in range(self.replays):
            a, b = make_event(), make_event()
            record(a)
            run()
            record(b)
            b.synchronize()
            times.append(elapsed(a, b) * 1e3 / ncalls)  # ms -> us per call
        return statistics.median(times)


def _time_copy(torch, timer: Timer, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return timer.torch_graph([lambda: dst.copy_(src)] * 4)[0]


def _time_bf16(torch, timer: Timer, n: int) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return timer.torch_graph([lambda: torch.matmul(a, b)] * 4)[0]


def ceilings(torch, timer: Timer) -> dict:
    """Copy bandwidth (1 GiB buffers, bytes read + written) and bf16 matmul rate at 8192^3, on random data."""
    nbytes, n = 1 << 30, 8192
    t_copy = _time_copy(torch, timer, nbytes)
    t_mm = _time_bf16(torch, timer, n)
    torch.cuda.empty_cache()
    return {"copy_TBps": 2 * nbytes / (t_copy * 1e-6) / 1e12, "copy_us_1GiB": t_copy,
            "bf16_TFLOPs": 2 * n ** 3 / (t_mm * 1e-6) / 1e12}


def guarded(row: dict, key: str, fn) -> None:
    """``row[key] = fn()``; on an exception ``row[key + "_error"]`` holds its first line instead, so one failed
    measurement (a first torch-cuda or cuBLAS failure, say) loses nothing else."""
    try:
        row[key] = fn()
    except Exception as e:  # noqa: BLE001 - recorded in the row and the table, never lost
        row[key + "_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        print(f"    {key} failed: {row[key + '_error']}", flush=True)


def _weights(cp, rng, n, k, ng, asym, copies):
    out = []
    for _ in range(copies):
        packed = cp.asarray(rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8))
        wscale = cp.asarray((rng.uniform(0.5, 2.0, (n, ng)) * 2.0 ** -8).astype(np.float32))
        zero = cp.asarray(rng.integers(0, 16, (n, ng), dtype=np.uint8)) if asym else None
        out.append((packed, wscale, zero))
    return out


def _time_cupy(timer, backend, qx, xs, weights, k, g, fmt, copies):
    launches = [backend.matmul_launcher(qx, xs, p, w, z, k, g, fmt) for p, w, z in weights]
    t, how = timer.cupy_graph([fn for fn, _ in launches] * max(1, 20 // copies))
    return {"us": t, "timing": how, "path": backend.last_path, "launch": launches[0]}


def bench_shape(ctx, n, k, emit) -> None:
    """Rows for one (N, K), handed to ``emit(row)`` one at a time (the caller saves after each). Per row,
    in this order, each guarded: cupy (the path it chooses; at 4 <= M <= 16 also the prefill path forced,
    to place the decode/prefill crossover), then torch-cuda, the bit comparison, cuBLAS bf16 and int8."""
    from fptq import spec
    from fptq.spec import WeightFormat

    torch, cp, timer, g, rng = ctx["torch"], ctx["cp"], ctx["timer"], ctx["group_size"], ctx["rng"]
    x_host = rng.integers(-128, 128, (max(ctx["ms"]), k), dtype=np.int8)
    xs_host = rng.uniform(0.01, 1.0, max(ctx["ms"])).astype(np.float32)
    ng = spec.num_groups(k, g)
    baselines = {}  # M -> the cuBLAS times (they do not depend on the weight format)
    for fmt in (WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC):
        asym = fmt is WeightFormat.ASYMMETRIC
        copies = rotation_copies(n * ((k + 1) // 2), ctx["l2"])
        weights = _weights(cp, rng, n, k, ng, asym, copies)
        torch_w = {}
        for m in ctx["ms"]:
            if time.time() > ctx["deadline"]:
                return
            row = {"n": n, "k": k, "m": m, "fmt": "asym" if asym else "sym",
                   "floor_us": floor_us(w4a8_bytes(m, n, k, g, asym), ctx["copy_bps"])}
            qx, xs = cp.asarray(x_host[:m]), cp.asarray(xs_host[:m])
            c = {}
            guarded(c, "r", lambda: _time_cupy(timer, ctx["cupy"], qx, xs, weights, k, g, fmt, copies))
            if "r" in c:
                row.update(cupy_us=c["r"]["us"], cupy_path=c["r"]["path"], cupy_timing=c["r"]["timing"])
            else:
                row["cupy_error"] = c["r_error"]
            emit(row)  # saved before anything else is tried
            if 4 <= m <= 16:
                guarded(row, "cupy_prefill_us", lambda: _time_cupy(timer, ctx["cupy_prefill"], qx, xs, weights,
                                                                  k, g, fmt, copies)["us"])
            guarded(row, "torch_cuda_us", lambda: _time_torch(ctx, torch_w, weights, x_host, xs_host, m, n, k,
                                                              g, fmt))
            if "r" in c and "torch_cuda_us" in row:
                guarded(row, "agree", lambda: _agree(ctx, torch_w, c["r"]["launch"], x_host, xs_host, m))
            if m not in baselines:
                baselines[m] = {}
                guarded(baselines[m], "cublas", lambda: cublas(torch, timer, m, n, k, ctx["l2"]))
            row.update(baselines[m].get("cublas", {}))
            if "cublas_error" in baselines[m]:
                row["cublas_error"] = baselines[m]["cublas_error"]
            emit(row)
            print(f"  {n}x{k} {row['fmt']} M={m}: cupy {row.get('cupy_us', float('nan')):.1f} us "
                  f"({row.get('cupy_path')}), floor {row['floor_us']:.2f}, torch-cuda "
                  f"{row.get('torch_cuda_us', float('nan')):.1f}, same bits {row.get('agree')}", flush=True)
        del weights, torch_w


def _prepared_torch(ctx, torch_w, weights, k, g, fmt):
    """torch-cuda's prepared weights (unpacked int8, N*K bytes each), made once per format."""
    if "preps" not in torch_w:
        from fptq.backends import torch_matmul as MM
        torch, cp = ctx["torch"], ctx["cp"]
        n = weights[0][0].shape[0]
        preps = [ctx["torch_b"].prepare_weight(torch.as_tensor(cp.asnumpy(p), device="cuda"),
                                               None if z is None else torch.as_tensor(cp.asnumpy(z), device="cuda"),
                                               k, g, fmt) for p, _, z in weights[:rotation_copies(n * k, ctx["l2"], 16)]]
        torch_w["preps"] = preps
        torch_w["ws"] = [MM.scales_transposed(torch.as_tensor(cp.asnumpy(w), device="cuda"), pr)
                         for (_, w, _), pr in zip(weights, preps)]
    return torch_w["preps"], torch_w["ws"]


def _time_torch(ctx, torch_w, weights, x_host, xs_host, m, n, k, g, fmt):
    from fptq.backends import torch_matmul as MM
    torch = ctx["torch"]
    preps, ws_t = _prepared_torch(ctx, torch_w, weights, k, g, fmt)
    tq, txs = torch.as_tensor(x_host[:m], device="cuda"), torch.as_tensor(xs_host[:m], device="cuda")
    use = ctx["torch_b"].use_int_mm
    return ctx["timer"].torch_graph([(lambda pr=pr, wt=wt: MM.matmul_prepared(tq, txs, pr, wt, None, use))
                                     for pr, wt in zip(preps, ws_t)] * max(1, 20 // len(preps)))[0]


def _agree(ctx, torch_w, launch, x_host, xs_host, m) -> bool:
    """cupy and torch-cuda on the first weight copy: the same bits (both must equal the spec)."""
    from fptq.backends import torch_matmul as MM
    torch, cp = ctx["torch"], ctx["cp"]
    fn, out = launch
    fn()
    y_cupy = cp.asnumpy(out)
    tq, txs = torch.as_tensor(x_host[:m], device="cuda"), torch.as_tensor(xs_host[:m], device="cuda")
    y_torch = MM.matmul_prepared(tq, txs, torch_w["preps"][0], torch_w["ws"][0], None,
                                 ctx["torch_b"].use_int_mm).cpu().numpy()
    return bool(np.array_equal(y_cupy.view(np.uint32), y_torch.view(np.uint32)))


def cublas(torch, timer, m, n, k, l2) -> dict:
    out = {}
    wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(rotation_copies(2 * n * k, l2, 8))]
    xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out["bf16_us"], _ = timer.torch_graph([(lambda w=w: torch.matmul(xb, w.t())) for w in wb] * 4)
    del wb
    mi = max(m, 32)  # torch._int_mm needs M > 16
    wi = [torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
          for _ in range(rotation_copies(n * k, l2, 8))]
    xi = torch.randint(-128, 128, (mi, k), device="cuda", dtype=torch.int8)
    try:
        out["int_mm_us"], _ = timer.torch_graph([(lambda w=w: torch._int_mm(xi, w.t())) for w in wi] * 4)
        out["int_mm_padded"] = mi != m
    except RuntimeError as e:
        out["int_mm_error"] = str(e).splitlines()[0]
    del wi
    torch.cuda.empty_cache()
    return out


def run(args, save) -> dict:
    """The whole benchmark; ``save(result)`` is called after the ceilings and after every row (its cupy
    time first), so a run stopped by a timeout or an error keeps what it measured."""
    torch, cp = require_gpu()
    from fptq.backends.cupy_backend import CupyBackend

    t0 = time.time()
    timer = Timer(torch, cp, replays=args.replays)
    props = torch.cuda.get_device_properties(0)
    l2 = int(getattr(props, "L2_cache_size", 60 << 20) or (60 << 20))
    cupy_b = CupyBackend()
    result = {"machine": {"gpu": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
                          "torch": torch.__version__, "cupy": cp.__version__, "python": platform.python_version(),
                          "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                          "cupy_backend": cupy_b.describe()},
              "group_size": args.group_size, "rows": [], "notes": []}
    ctx = {"torch": torch, "cp": cp, "timer": timer, "group_size": args.group_size, "ms": args.ms, "l2": l2,
           "rng": np.random.default_rng(args.seed), "deadline": t0 + args.budget_s, "cupy": cupy_b,
           "cupy_prefill": CupyBackend(force_path="prefill")}
    try:
        from fptq.backends.torch_backend import TorchCudaBackend
        ctx["torch_b"] = TorchCudaBackend()
        result["machine"]["torch_backend"] = ctx["torch_b"].describe()
    except Exception as e:  # noqa: BLE001 - the cupy rows still run; the torch columns say why they are empty
        result["notes"].append(f"torch-cuda backend unavailable: {type(e).__name__}: {e}")
        ctx["torch_b"] = _NoTorch()
    print(f"bench_gpu: {result['machine']['cupy_backend']}", flush=True)
    c = {}
    guarded(c, "ceilings", lambda: ceilings(torch, timer))
    result["ceilings"] = c.get("ceilings") or {"copy_TBps": EXPECTED_COPY_TBPS, "bf16_TFLOPs": float("nan"),
                                               "error": c.get("ceilings_error")}
    if "ceilings_error" in c:
        result["notes"].append(f"ceilings failed ({c['ceilings_error']}); the floor uses {EXPECTED_COPY_TBPS} TB/s")
    ctx["copy_bps"] = result["ceilings"]["copy_TBps"] * 1e12
    print(f"ceilings: copy {result['ceilings']['copy_TBps']:.2f} TB/s, bf16 "
          f"{result['ceilings']['bf16_TFLOPs']:.0f} TFLOP/s", flush=True)
    save(result)

    def emit(row):
        if not result["rows"] or result["rows"][-1] is not row:
            result["rows"].append(row)
        row["targets"] = verdicts(row)
        if row.get("int_mm_padded"):
            note = "torch._int_mm needs M > 16: rows with M <= 16 time it at M = 32"
            if note not in result["notes"]:
                result["notes"].append(note)
        result["wall_s"] = time.time() - t0
        save(result)

    for n, k in args.shapes:
        bench_shape(ctx, n, k, emit)
        if time.time() > ctx["deadline"]:
            result["notes"].append(f"stopped after {n}x{k}: the {args.budget_s:.0f} s budget (--budget-s) was spent")
            save(result)
            break
    return result


class _NoTorch:
    """Stands for an unavailable torch-cuda backend: its measurements fail (guarded) with this reason."""

    use_int_mm = False

    def prepare_weight(self, *a, **k):
        raise RuntimeError("torch-cuda backend unavailable (see notes)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/gpu")
    p.add_argument("--shapes", type=parse_shapes, default=SHAPES)
    p.add_argument("--ms", type=parse_ms, default=MS)
    p.add_argument("--group-size", type=int, default=GROUP_SIZE)
    p.add_argument("--replays", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=150.0, help="skip remaining shapes after this many seconds")
    args = p.parse_args(argv)
    out = Path(args.out)

    def save(result):
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=1))
        (out / "bench_gpu.md").write_text(markdown(result))

    try:
        result = run(args, save)
    except NoGPU as e:
        print(f"bench_gpu.py: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
