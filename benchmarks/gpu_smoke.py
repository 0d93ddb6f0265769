"""The GPU check's first stage: load every CUDA module of the cupy backend and launch every kernel once.

::

    PYTHONPATH=$PWD python benchmarks/gpu_smoke.py [--out DIR] [--gemm-only] [--no-pool]

In about 20 seconds on a bare machine: compiles the modules in parallel
(NVRTC, one process per module, into ``$FPTQ_CUDA_CACHE``), checks every
cubin is whole (length == ELF extent), loads each module, then runs every
operation once on tiny inputs and each matmul path (decode at every MT,
prefill with each tile, generic) on small ragged shapes, comparing the
spec's bits. Every launch's arguments are checked against the kernel's
parameters (``cupy_compile.check_launch_args``) and every kernel of
``cupy_compile.MODULES`` must have been launched. Writes ``smoke.json``
to ``--out`` and exits 0 when all passed, 1 when something failed, 2 when
there is no GPU or CuPy (with the reason).

``--gemm-only --no-pool`` is what the compute-sanitizer stages run: the three
matmul paths on small ragged shapes, with CuPy's memory pool off so that each
array is its own allocation and an out-of-bounds access is seen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# what to run (pure NumPy; tests/test_cupy_bench.py runs it over the emulated backend)


def op_cases(rng) -> list[tuple[str, str, dict]]:
    """(label, operation, arguments) for every non-matmul operation, tiny and edge-weighted."""
    from fptq import spec
    from fptq.spec import WeightFormat

    x = (rng.standard_normal((5, 7)) * 3).astype(F32)
    x[0, 0] = 1e-45  # a subnormal: flushed to zero would be a wrong bit
    q = rng.integers(-127, 128, (5, 7), dtype=np.int8)
    q4 = rng.integers(-8, 8, (3, 7), dtype=np.int8)
    s = rng.uniform(0.5, 4, 7).astype(F32)
    sc, z = spec.weight_scales(x, 3, WeightFormat.ASYMMETRIC)
    acc = rng.integers(-2**20, 2**20, (3, 4, 2), dtype=np.int32)
    return [
        ("act_scale_from_amax", "act_scale_from_amax", dict(amax=np.array([0.0, 1e-40, 5.0], F32))),
        ("quantize_act_per_tensor", "quantize_act_per_tensor", dict(x=x, scale=np.array(0.02, F32))),
        ("quantize_act_per_token", "quantize_act_per_token", dict(x=x)),
        ("dequantize_act", "dequantize_act", dict(q=q, scale=rng.uniform(0.1, 1, 5).astype(F32))),
        ("lae_scales", "lae_scales", dict(channel_max=np.array([0.0, 1e-45, 1.0, 150.0, 3e38], F32))),
        ("lae_apply_activation", "lae_apply_activation", dict(x=x, s=s)),
        ("lae_apply_weight", "lae_apply_weight", dict(w=x, s=s)),
        ("quantize_weight asym G=3", "quantize_weight", dict(w=x, group_size=3, fmt=WeightFormat.ASYMMETRIC)),
        ("quantize_weight_with_scales", "quantize_weight_with_scales",
         dict(w=x, scale=sc, zero=z, group_size=3, fmt=WeightFormat.ASYMMETRIC)),
        ("dequantize_weight", "dequantize_weight",
         dict(q=spec.quantize_weight_with_scales(x, sc, z, 3, WeightFormat.ASYMMETRIC), scale=sc, zero=z,
              group_size=3, fmt=WeightFormat.ASYMMETRIC)),
        ("pack_int4", "pack_int4", dict(q=q4, signed=True)),
        ("unpack_int4", "unpack_int4", dict(packed=spec.pack_int4(q4, True), k=7, signed=True)),
        ("select_policies", "select_policies", dict(v=np.array([0.0, 14.99, 15.0, 150.0, 1e30], F32))),
        ("w4a8_epilogue", "w4a8_epilogue", dict(acc=acc, wscale=rng.uniform(0.1, 1, (4, 2)).astype(F32),
                                                xscale=rng.uniform(0.1, 1, 3).astype(F32),
                                                bias=rng.standard_normal(4).astype(F32))),
    ]


def matmul_case(rng, m, n, k, g, asym, per_token=True, with_bias=True) -> dict:
    from fptq import spec
    from fptq.spec import WeightFormat

    q = rng.integers(0, 16, (n, k), dtype=np.int8) if asym else rng.integers(-8, 8, (n, k), dtype=np.int8)
    ng = spec.num_groups(k, g)
    qx = rng.integers(-128, 128, (m, k), dtype=np.int8)
    qx[0, :3] = -128
    return dict(qx=qx, xscale=rng.uniform(0.01, 1, m if per_token else 1).astype(F32),
                packed=spec.pack_int4(q, not asym),
                wscale=(rng.uniform(0.5, 2, (n, ng)) * 2.0 ** rng.integers(-10, 3, (n, ng))).astype(F32),
                zero=rng.integers(0, 16, (n, ng), dtype=np.uint8) if asym else None, k=k, group_size=g,
                fmt=WeightFormat.ASYMMETRIC if asym else WeightFormat.SYMMETRIC,
                bias=rng.standard_normal(n).astype(F32) if with_bias else None)


def gemm_cases(rng) -> list[tuple[str, str | None, object, dict]]:
    """(label, forced path, prefill tile or None, case): every decode MT, each prefill tile, generic;
    ragged: N not a multiple of a block's rows or of a tile, K with a short last group, M past a tile."""
    from fptq.backends import cupy_launch as L

    out = [(f"decode M={m}", "decode", None, matmul_case(rng, m, 37, 96 + 32 * m, 64, asym=m % 2 == 1))
           for m in (1, 2, 3, 5, 9)]
    out += [(f"prefill {t.bm}x{t.bn} M={m}", "prefill", t, matmul_case(rng, m, 70, 160, 64, asym=i == 1))
            for i, t in enumerate(L.PREFILL_TILES) for m in (17, 131)]
    out.append(("generic K=99 G=33", None, None, matmul_case(rng, 3, 9, 99, 33, asym=True)))
    return out


@contextlib.contextmanager
def forced_tile(tile):
    """The prefill tile the backend picks, pinned (cupy_launch.choose_prefill_tile patched), or unchanged."""
    from fptq.backends import cupy_launch as L

    real = L.choose_prefill_tile
    if tile is not None:
        L.choose_prefill_tile = lambda m, n, sm_count=None: tile
    try:
        yield
    finally:
        L.choose_prefill_tile = real


def instrument(b, launched: set) -> None:
    """Wrap ``b._fn`` so that every launch's arguments are checked against the kernel's parameters
    and every launched kernel is recorded."""
    from fptq.backends import cupy_compile as CC

    real = b._fn

    def fn(module, kernel):
        f = real(module, kernel)

        def launch(grid, block, args):
            CC.check_launch_args(module, kernel, args, placeholders=(b._dummy,))
            launched.add(kernel)
            return f(grid, block, args)
        return launch
    b._fn = fn


def _same_bits(got, want) -> str | None:
    if isinstance(want, tuple):
        for i, (g, w) in enumerate(zip(got, want)):
            if (why := _same_bits(g, w)) is not None:
                return f"output {i}: {why}"
        return None
    if want is None or isinstance(want, (int, str)) or not hasattr(want, "dtype"):
        return None if got == want else f"{got!r} != {want!r}"
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype} {got.shape} vs {want.dtype} {want.shape}"
    if got.tobytes() != want.tobytes():
        bad = np.argwhere(got.view(np.uint8).reshape(-1) != want.view(np.uint8).reshape(-1))
        return f"bits differ ({bad.size} bytes; first byte {int(bad[0, 0])})"
    return None


def _call(b, op, kw):
    from fptq import spec

    dev = {k: (b.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    got = getattr(b, op)(**dev)
    to_host = (lambda t: t if t is None or isinstance(t, (int, str)) or not hasattr(t, "shape") else b.to_numpy(t))
    got = tuple(to_host(g) for g in (got if isinstance(got, tuple) else (got,)))
    want = getattr(spec, op)(**kw)
    return _same_bits(got if isinstance(want, tuple) else got[0], want)


def run_smoke(make_backend, gemm_only: bool = False, seed: int = 0) -> dict:
    """Every case once; ``make_backend(force_path)`` gives a backend. Returns the report (``ok`` etc.)."""
    from fptq.backends import cupy_compile as CC

    rng = np.random.default_rng(seed)
    launched, rows = set(), []
    backends = {}

    def backend(force):
        if force not in backends:
            backends[force] = make_backend(force)
            instrument(backends[force], launched)
        return backends[force]

    cases = [] if gemm_only else [(label, None, None, op, kw) for label, op, kw in op_cases(rng)]
    cases += [(label, force, tile, "w4a8_matmul", kw) for label, force, tile, kw in gemm_cases(rng)]
    for label, force, tile, op, kw in cases:
        t0 = time.time()
        try:
            with forced_tile(tile):
                why = _call(backend(force), op, kw)
        except Exception as e:  # noqa: BLE001 - the smoke records every failure and goes on
            why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            traceback.print_exc()
        rows.append({"case": label, "ok": why is None, "error": why, "s": round(time.time() - t0, 3)})
        print(f"  {'ok  ' if why is None else 'FAIL'} {label}{'' if why is None else ': ' + why}", flush=True)
    expected = {k for m, ks in CC.MODULES.items() for k in ks if not gemm_only or m in ("gemm_decode",
                                                                                           "gemm_prefill")}
    missing = sorted(expected - launched)
    return {"ok": all(r["ok"] for r in rows) and not missing, "cases": rows, "kernels_launched": sorted(launched),
            "kernels_not_launched": missing}


# ---------------------------------------------------------------------------------------------
# the GPU part


def _compile_one(args):
    name, arch = args
    from fptq.backends import cupy_compile as CC

    t0 = time.time()
    mod = CC.compile_module(name, arch)
    return name, len(mod.cubin), round(time.time() - t0, 2)


def compile_all(arch: str) -> dict:
    """Every module compiled into the cache, one process per module (spawned: no CUDA state is forked)."""
    from fptq.backends import cupy_compile as CC
    from fptq.backends.cubin_elf import check_cubin

    with ProcessPoolExecutor(max_workers=min(len(CC.MODULES), os.cpu_count() or 1),
                             mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_compile_one, [(n, arch) for n in CC.MODULES]))
    out = {}
    for name, size, secs in done:
        mod = CC.compile_module(name, arch)  # from the cache now
        check_cubin(mod.cubin, f"{name}.cu's cubin")
        out[name] = {"bytes": size, "compile_s": secs, "cached": str(mod.path)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/gpu")
    p.add_argument("--gemm-only", action="store_true", help="only the three matmul paths (sanitizer runs)")
    p.add_argument("--no-pool", action="store_true", help="CuPy's memory pool off: one allocation per array")
    p.add_argument("--seed", type=int, default=int(os.environ.get("FPTQ_GPU_SEED", "0")))
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        import cupy as cp
        cp.cuda.runtime.getDeviceCount()
        arch = str(cp.cuda.Device().compute_capability)
    except Exception as e:  # noqa: BLE001 - ImportError or a CUDA runtime error: say which
        print(f"gpu_smoke.py needs CuPy with a GPU: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.no_pool:
        cp.cuda.set_allocator(None)
        cp.cuda.set_pinned_memory_allocator(None)
    from fptq.backends.cupy_backend import CupyBackend

    # the sanitizer runs (--gemm-only) find the cache warm from the smoke stage; no worker processes under them
    report = {"arch": arch, "seed": args.seed, "modules": {} if args.gemm_only else compile_all(arch)}
    report["compile_s"] = round(time.time() - t0, 1)
    print(f"gpu_smoke: sm_{arch}, {len(report['modules'])} modules compiled and whole in {report['compile_s']} s",
          flush=True)
    report |= run_smoke(lambda force: CupyBackend(force_path=force), gemm_only=args.gemm_only, seed=args.seed)
    cp.cuda.Device().synchronize()
    report["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("smoke_gemm.json" if args.gemm_only else "smoke.json")).write_text(json.dumps(report, indent=1))
    print(f"gpu_smoke: {'PASSED' if report['ok'] else 'FAILED'} in {report['wall_s']} s; kernels not launched: "
          f"{report['kernels_not_launched'] or 'none'}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
