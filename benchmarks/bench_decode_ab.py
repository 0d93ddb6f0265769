"""Before/after decode (or prefill) speed of the runtime on one checkpoint, interleaved round by round (issue 24).

Two worker processes hold a loaded runtime each: ``before`` imports fptq from ``--base`` (a source tree
of the older commit, e.g. made by ``git archive COMMIT | tar -x -C DIR``), ``after`` from this checkout.
Every round asks each variant in turn (the order rotates per round) for one decode measurement: a
``--prompt``-token prompt, then ``--new`` greedy tokens one at a time (tokens/s of those), as
``benchmarks/bench_llamacpp.py`` times them. Variants: ``before``; ``after`` (the runtime's default: the
split chosen per token by :class:`fptq.runtime.tuning.SplitTuner`); ``after-split`` (the same process, the
tuner off, every large group on two threads); ``after-1t`` (the tuner off, every linear on one thread). The
medians, every round and the load averages go to the JSON. Greedy tokens are compared across variants
(the same checkpoint and head: the same tokens).

    python benchmarks/bench_decode_ab.py --ckpt /work/runs/qwen15b-w4a8 --base /tmp/base --rounds 5

With ``--prefill N`` the variants are ``before`` and ``after`` and each measurement is one prefill of N
pseudo-random tokens (ms; the digest of its last row of logits is compared across variants: a change
meant to keep the bits must give the same digest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--base", required=True, help="source tree of the 'before' fptq")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head", choices=("checkpoint", "int8"), default="int8")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--prefill", type=int, default=0, help="measure prefills of this many tokens instead of decode")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a) -> None:
    """Load the runtime, then answer each stdin line (a split setting: 'default', 'split' or 'off') with one JSON
    line: decode tokens/s and the greedy tokens."""
    import numba
    import numpy as np

    import fptq
    from fptq.models.checkpoint import load_quantized
    from fptq.runtime.engine import Runtime

    numba.set_num_threads(a.threads)
    model, _, _ = load_quantized(a.ckpt, backend="numba")
    rt = Runtime.from_model(model, threads=a.threads, int8_head=True if a.head == "int8" else None,
                            hand_over=True)
    default_split = int(rt.w.dims[8])
    ids = np.random.default_rng(0).integers(100, rt.w.vocab, a.prompt)
    print(json.dumps({"ready": fptq.__file__}), flush=True)
    tuner = getattr(rt, "tuner", None)                       # issue 24's SplitTuner (absent before it)
    for line in sys.stdin:
        what = line.strip()
        if what == "prefill":
            print(json.dumps(_prefill(rt, a.prefill)), flush=True)
            continue
        if tuner is not None:
            tuner.active = what == "default"
        rt.w.dims[8] = (1 << 62) if what == "off" else default_split
        rt.reset()
        logits = rt.forward(ids)
        toks = []
        t0 = time.perf_counter()
        for _ in range(a.new):
            toks.append(int(np.argmax(logits[-1])))
            logits = rt.forward(np.array([toks[-1]], np.int64))
        dt = time.perf_counter() - t0
        print(json.dumps({"tok_s": a.new / dt, "tokens": toks}), flush=True)


def _prefill(rt, tokens: int) -> dict:
    """One timed prefill of ``tokens`` pseudo-random tokens: ms and the digest of the last logits row."""
    import hashlib

    import numpy as np

    ids = np.random.default_rng(1).integers(100, rt.w.vocab, tokens)
    rt.reset()
    t0 = time.perf_counter()
    logits = rt.forward(ids)
    ms = (time.perf_counter() - t0) * 1e3
    return {"ms": ms, "tok_s": tokens / ms * 1e3, "tokens": [hashlib.sha256(np.ascontiguousarray(logits[-1]).tobytes()).hexdigest()]}


def _start(tree: Path, a):
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--worker", "--ckpt", a.ckpt, "--base", a.base, "--threads", str(a.threads),
           "--head", a.head, "--prompt", str(a.prompt), "--new", str(a.new), "--prefill", str(a.prefill)]
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(p.stdout.readline())["ready"]
    if not ready.startswith(str(tree)):
        raise SystemExit(f"worker for {tree} imported fptq from {ready}")
    return p


def _ask(p, what: str) -> dict:
    p.stdin.write(what + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    load0 = os.getloadavg()
    procs = {"before": _start(Path(a.base).resolve(), a), "after": _start(ROOT, a)}
    variants = [("before", "before", "default"), ("after", "after", "default"), ("after-split", "after", "split"),
                ("after-1t", "after", "off")]
    if a.prefill:
        variants = [("before", "before", "prefill"), ("after", "after", "prefill")]
    for _, proc, split in variants:                                     # warm-up (compiles, fills caches)
        _ask(procs[proc], split)
    rounds = {v[0]: [] for v in variants}
    tokens = {}
    for r in range(a.rounds):
        for name, proc, split in variants[r % len(variants):] + variants[:r % len(variants)]:
            res = _ask(procs[proc], split)
            rounds[name].append(res["tok_s"])
            tokens[name] = res["tokens"]
    for p in procs.values():
        p.stdin.close()
        p.wait()
    med = {k: statistics.median(v) for k, v in rounds.items()}
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "ckpt": a.ckpt, "head": a.head,
           "threads": a.threads, "prompt": a.prompt, "new": a.new, "prefill": a.prefill, "base": a.base,
           "median_tok_s": med,
           "rounds_tok_s": rounds, "same_tokens": len({tuple(t) for t in tokens.values()}) == 1,
           "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    for k, v in med.items():
        print(f"{k:9} {v:7.2f} tok/s  rounds {' '.join(f'{x:.2f}' for x in rounds[k])}")
    print(f"same greedy tokens: {out['same_tokens']}; load {load0} -> {out['loadavg_end']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0 if out["same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
