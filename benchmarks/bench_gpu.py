"""W4A8 matmul on the GPU, side by side in one run: cupy kernels, torch-cuda, cuBLAS, the memory floor.

::

    PYTHONPATH=$PWD python benchmarks/bench_gpu.py [--out DIR] [--ms 1,4,16,64,256,1024,4096]
        [--shapes 4096x4096,11008x4096,4096x11008] [--group-size 128] [--budget-s 150]

Measures, in this order and in one process (so all see the same card state):

1. the ceilings: device-to-device copy bandwidth (bytes read + written, 1 GiB
   buffers) and a bf16 ``torch.matmul`` at 8192^3;
2. for each (N, K), M and weight format (symmetric, asymmetric; G = 128):
   ``cupy`` W4A8 (``CupyBackend.matmul_launcher``: the decode or prefill kernel,
   no per-call checks), ``torch-cuda`` W4A8 (the prepared-weight path,
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

Writes ``bench_gpu.json`` and ``bench_gpu.md`` to ``--out`` (default ``$OUT`` or
``benchmarks/results/gpu``) and prints the table. Without a CUDA GPU (or
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
MS = (1, 4, 16, 64, 256, 1024, 4096)
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
             "| N x K | fmt | M | cupy (path) | floor | cupy/floor | torch-cuda | bf16 | int8 `_int_mm` | "
             "int8/cupy | bf16/cupy | same bits |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def f(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)

    for r in result["rows"]:
        cu = r.get("cupy_us")
        lines.append(
            f"| {r['n']}x{r['k']} | {r['fmt']} | {r['m']} | {f(cu)} ({r.get('cupy_path', '?')}) | "
            f"{f(r.get('floor_us'), '.2f')} | {f(cu / r['floor_us'] if cu else None, '.2f')} | "
            f"{f(r.get('torch_cuda_us'))} | {f(r.get('bf16_us'))} | "
            f"{f(r.get('int_mm_us'))}{' (M=32)' if r.get('int_mm_padded') else ''} | "
            f"{f(r['int_mm_us'] / cu if cu and r.get('int_mm_us') else None, '.2f')} | "
            f"{f(r['bf16_us'] / cu if cu and r.get('bf16_us') else None, '.2f')} | {r.get('agree', 'n/a')} |")
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
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


def bench_shape(torch, cp, cupy_b, torch_b, timer, n, k, ms, g, copy_bps, l2, rng, deadline) -> list[dict]:
    """Rows for one (N, K); stops early (fewer rows) once ``time.time()`` passes ``deadline``."""
    from fptq import spec
    from fptq.backends import torch_matmul as MM
    from fptq.spec import WeightFormat

    rows = []
    kmax = max(ms)
    x_host = rng.integers(-128, 128, (kmax, k), dtype=np.int8)
    xs_host = rng.uniform(0.01, 1.0, kmax).astype(np.float32)
    ng = spec.num_groups(k, g)
    baselines = {}  # M -> the cuBLAS times (they do not depend on the weight format)
    for fmt in (WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC):
        asym = fmt is WeightFormat.ASYMMETRIC
        packed_b = n * ((k + 1) // 2)
        copies = rotation_copies(packed_b, l2)
        weights = []
        for _ in range(copies):
            packed = cp.asarray(rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8))
            wscale = cp.asarray((rng.uniform(0.5, 2.0, (n, ng)) * 2.0 ** -8).astype(np.float32))
            zero = cp.asarray(rng.integers(0, 16, (n, ng), dtype=np.uint8)) if asym else None
            weights.append((packed, wscale, zero))
        # torch-cuda's prepared weights (unpacked int8, N*K bytes each): fewer copies rotate past the L2
        preps = [torch_b.prepare_weight(torch.as_tensor(cp.asnumpy(p), device="cuda"),
                                        None if z is None else torch.as_tensor(cp.asnumpy(z), device="cuda"),
                                        k, g, fmt) for p, _, z in weights[:rotation_copies(n * k, l2, 16)]]
        ws_t = [MM.scales_transposed(torch.as_tensor(cp.asnumpy(w), device="cuda"), pr)
                for (_, w, _), pr in zip(weights, preps)]
        for m in ms:
            if time.time() > deadline:
                break
            qx, xs = cp.asarray(x_host[:m]), cp.asarray(xs_host[:m])
            launches = [cupy_b.matmul_launcher(qx, xs, p, w, z, k, g, fmt) for p, w, z in weights]
            path = cupy_b.last_path
            t_cupy, how_c = timer.cupy_graph([fn for fn, _ in launches] * max(1, 20 // copies))
            # torch-cuda: the same weights through its prepared path
            tq, txs = torch.as_tensor(x_host[:m], device="cuda"), torch.as_tensor(xs_host[:m], device="cuda")
            t_torch, how_t = timer.torch_graph(
                [(lambda pr=pr, wt=wt: MM.matmul_prepared(tq, txs, pr, wt, None, torch_b.use_int_mm))
                 for pr, wt in zip(preps, ws_t)] * max(1, 20 // len(preps)))
            # bit-exact agreement of the two backends (both must equal the spec)
            launches[0][0]()
            y_cupy = cp.asnumpy(launches[0][1])
            y_torch = MM.matmul_prepared(tq, txs, preps[0], ws_t[0], None, torch_b.use_int_mm).cpu().numpy()
            agree = bool(np.array_equal(y_cupy.view(np.uint32), y_torch.view(np.uint32)))
            row = {"n": n, "k": k, "m": m, "fmt": "asym" if asym else "sym", "cupy_us": t_cupy, "cupy_path": path,
                   "cupy_timing": how_c, "torch_cuda_us": t_torch, "torch_cuda_timing": how_t,
                   "floor_us": floor_us(w4a8_bytes(m, n, k, g, asym), copy_bps), "agree": agree}
            if m not in baselines:
                baselines[m] = cublas(torch, timer, m, n, k, l2)
            row.update(baselines[m])
            rows.append(row)
            print(f"  {n}x{k} {row['fmt']} M={m}: cupy {t_cupy:.1f} us ({path}), floor {row['floor_us']:.2f}, "
                  f"torch-cuda {t_torch:.1f}, same bits {agree}", flush=True)
            del launches
        del weights, preps, ws_t
    return rows


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
    """The whole benchmark; ``save(result)`` is called after the ceilings and after every shape,
    so a run stopped by a timeout keeps what it measured."""
    torch, cp = require_gpu()
    from fptq.backends.cupy_backend import CupyBackend
    from fptq.backends.torch_backend import TorchCudaBackend

    t0 = time.time()
    timer = Timer(torch, cp, replays=args.replays)
    props = torch.cuda.get_device_properties(0)
    l2 = int(getattr(props, "L2_cache_size", 60 << 20) or (60 << 20))
    cupy_b, torch_b = CupyBackend(), TorchCudaBackend()
    result = {"machine": {"gpu": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
                          "torch": torch.__version__, "cupy": cp.__version__, "python": platform.python_version(),
                          "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                          "cupy_backend": cupy_b.describe(), "torch_backend": torch_b.describe()},
              "group_size": args.group_size, "rows": [], "notes": []}
    print(f"bench_gpu: {result['machine']['cupy_backend']}", flush=True)
    result["ceilings"] = ceilings(torch, timer)
    c = result["ceilings"]
    print(f"ceilings: copy {c['copy_TBps']:.2f} TB/s, bf16 {c['bf16_TFLOPs']:.0f} TFLOP/s", flush=True)
    save(result)
    rng = np.random.default_rng(args.seed)
    deadline = t0 + args.budget_s
    for n, k in args.shapes:
        result["rows"] += bench_shape(torch, cp, cupy_b, torch_b, timer, n, k, args.ms, args.group_size,
                                      c["copy_TBps"] * 1e12, l2, rng, deadline)
        for r in result["rows"]:
            r["targets"] = verdicts(r)
        if any(r.get("int_mm_padded") for r in result["rows"]):
            note = "torch._int_mm needs M > 16: rows with M <= 16 time it at M = 32"
            if note not in result["notes"]:
                result["notes"].append(note)
        result["wall_s"] = time.time() - t0
        save(result)
        if time.time() > deadline:
            result["notes"].append(f"stopped after {n}x{k}: the {args.budget_s:.0f} s budget (--budget-s) was spent")
            save(result)
            break
    return result


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
