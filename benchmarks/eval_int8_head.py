"""Perplexity of one checkpoint on the runtime with its own lm_head and with the lm_head as INT8 rows made at
load, in one process, the same windows (issue 24): ``int8`` (``Runtime.from_model(int8_head=True)``: the rows
and the activation quantized, integer kernels) and ``int8w`` (``int8_head="weights"``: the same rows, the
activation kept float32); ``--heads`` picks which.

Loads the checkpoint once (``load_quantized``, numba backend, integer mode), attaches each runtime in
turn as ``fptq eval`` does (:data:`fptq.runtime.attach.ATTRIBUTE`) and runs :func:`fptq.eval.runner.run_eval`
on ``--ppl`` with ``--max-windows`` windows. Prints and writes (``--json``) both perplexities per text and
their ratio; also the per-token decode time of each head (``--decode-tokens`` greedy tokens after a
128-token prompt), so the speed and the loss of the choice are read side by side.

    python benchmarks/eval_int8_head.py /work/runs/s10-default --ppl ptb,wiki --max-windows 16 \
        --heads checkpoint,int8,int8w
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: --heads name -> Runtime.from_model's int8_head
HEADS = {"checkpoint": None, "int8": True, "int8w": "weights"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--ppl", default="ptb,wiki")
    p.add_argument("--max-windows", type=int, default=16)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--heads", default="checkpoint,int8,int8w",
                   help="comma-separated, from: checkpoint, int8, int8w (ratios are over the first)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _decode_tok_s(rt, n: int) -> float:
    ids = np.random.default_rng(0).integers(100, rt.w.vocab, 128)
    rt.reset()
    logits = rt.forward(ids)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = rt.forward(np.array([int(np.argmax(logits[-1]))], np.int64))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    a = parse_args(argv)
    from fptq.eval.runner import run_eval
    from fptq.models.checkpoint import load_quantized
    from fptq.runtime.attach import ATTRIBUTE
    from fptq.runtime.engine import Runtime

    model, tok, _ = load_quantized(a.ckpt, backend="numba")
    out = {"ckpt": a.ckpt, "max_windows": a.max_windows, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "heads": {}}
    names = a.heads.split(",")
    for name in names:
        if name not in HEADS:
            raise SystemExit(f"eval_int8_head: --heads: {name!r} is not one of {sorted(HEADS)}")
    for name in names:
        rt = Runtime.from_model(model, int8_head=HEADS[name])
        model.__dict__[ATTRIBUTE] = rt
        res = run_eval(model, tok, ppl=a.ppl, max_windows=a.max_windows, progress=False)
        ppl = {src: r["ppl"] for src, r in res["perplexity"].items()}
        out["heads"][name] = {"head_kind": int(rt.w.head[0]), "perplexity": ppl,
                              "decode_tok_s": _decode_tok_s(rt, a.decode_tokens)}
        print(name, out["heads"][name], flush=True)
    base = out["heads"][names[0]]["perplexity"]
    out["ratio"] = {}
    for name in names[1:]:
        q = out["heads"][name]["perplexity"]
        out["ratio"][name] = {src: q[src] / base[src] for src in base}
        print(f"{name} / {names[0]} perplexity:", {k: round(v, 5) for k, v in out["ratio"][name].items()})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
