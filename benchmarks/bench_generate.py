"""Decode and prefill tokens/s of a float model and its W4A8 checkpoint, side by side in one process.

Variants (each loaded once, then timed round by round, interleaved, so every
variant sees the same machine load):

* ``float32``: the float model as transformers runs it;
* ``bf16``: the same model cast to bfloat16;
* ``w4a8:BACKEND``: the W4A8 checkpoint on each CPU backend given (integer kernels).

Per round and variant:

* **decode**: greedy generation of ``--new-tokens`` tokens after a
  ``--prompt-tokens``-token prompt (KV cache on); decode tokens/s =
  new tokens / (generation time - one prefill of the prompt, timed separately);
* **prefill**: one forward over ``--prefill-tokens`` tokens; tokens/s = tokens / time.

Reported: medians over ``--rounds`` rounds and the ratios to float32. The
prompt is real text (Penn Treebank test, the first tokens), BOS first.

``--breakdown`` adds, after the timed rounds, where each variant's time goes,
measured on **one thread** (torch and numba set to 1) as **CPU time of that
thread** (``time.thread_time``), so that other jobs on a shared machine do not
inflate it: per decoded token and per 512-token prefill, the time inside the
linear layers (``nn.Linear`` or ``W4A8Linear``; per call and in total), inside
``lm_head`` (float32 for every variant but bf16) and everything else (embedding,
norms, rotary, attention, residual adds, transformers' Python), also per
decoder layer.

    python benchmarks/bench_generate.py CKPT --out bench_generate.json
    python benchmarks/bench_generate.py CKPT --backends numba,torch --rounds 5 --breakdown
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

from fptq.defaults import BACKEND, FALLBACK_BACKEND


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a W4A8 checkpoint written by fptq quantize (of the float model below)")
    p.add_argument("--model", default=None, help="the float model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--backends", default=f"{BACKEND},{FALLBACK_BACKEND}",
                   help=f"CPU backends for the W4A8 rows (default {BACKEND},{FALLBACK_BACKEND}: fptq's default "
                   "and its fallback, fptq.defaults)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--breakdown", action="store_true",
                   help="also measure, on one thread in CPU time, the linears / lm_head / the rest per token")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Clock:
    """Thread CPU time inside the linear layers, inside lm_head and inside whole model forwards,
    split by phase: the first model forward after :meth:`reset` is ``prefill``, later ones ``decode``
    (so generate's own prompt pass is kept apart from its decode steps)."""

    def __init__(self, model, torch):
        from fptq.models.qlinear import W4A8Linear

        self.handles = []
        self.reset()
        head = model.get_output_embeddings()
        for mod in model.modules():
            if mod is head:
                self._hook(mod, "lm_head")
            elif isinstance(mod, (torch.nn.Linear, W4A8Linear)):
                self._hook(mod, "linear")
        self._hook(model, "model", top=True)

    def _hook(self, mod, key, top=False):
        start = {}

        def pre(m, args, kwargs):
            if top:
                self.phase = "decode" if self.forwards else "prefill"
                self.forwards += 1
            start[id(m)] = time.thread_time_ns()

        def post(m, args, kwargs, out):
            k = (key, self.phase)
            self.t[k] = self.t.get(k, 0) + time.thread_time_ns() - start.pop(id(m))
            self.calls[k] = self.calls.get(k, 0) + 1

        self.handles += [mod.register_forward_pre_hook(pre, with_kwargs=True),
                         mod.register_forward_hook(post, with_kwargs=True)]

    def reset(self):
        self.t, self.calls, self.forwards, self.phase = {}, {}, 0, "prefill"

    def ms(self, key, phase):
        return self.t.get((key, phase), 0) / 1e6

    def remove(self):
        for h in self.handles:
            h.remove()


def breakdown(variants, gen, prompt, prefill, new_tokens, torch) -> dict:
    """One-thread CPU-time split of decode (per token) and prefill, per variant (see the module doc)."""
    import numba

    numba_threads, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    out = {}
    try:
        for name, m in variants.items():
            layers = m.config.num_hidden_layers
            clock = _Clock(m, torch)
            gen(m)
            clock.reset()
            t0 = time.thread_time_ns()
            gen(m)
            t_gen = (time.thread_time_ns() - t0) / 1e6
            # decode per token: generate minus its prompt pass (greedy selection etc. stay in decode)
            total = (t_gen - clock.ms("model", "prefill")) / new_tokens
            dec = {k: clock.ms(k, "decode") / new_tokens for k in ("linear", "lm_head")}
            ncalls = clock.calls.get(("linear", "decode"), 0) / new_tokens
            clock.reset()
            t0 = time.thread_time_ns()
            m(prefill)
            t_pre = (time.thread_time_ns() - t0) / 1e6
            pre = {k: clock.ms(k, "prefill") for k in ("linear", "lm_head")}
            clock.remove()
            if torch.get_num_threads() != 1 or numba.get_num_threads() != 1:
                raise RuntimeError(f"breakdown of {name}: not on one thread (torch {torch.get_num_threads()}, "
                                   f"numba {numba.get_num_threads()})")
            out[name] = {
                "decode_ms_per_token": total, "decode_linear_ms": dec["linear"],
                "decode_linear_us_per_call": dec["linear"] * 1e3 / max(ncalls, 1),
                "decode_linear_calls_per_token": ncalls, "decode_lm_head_ms": dec["lm_head"],
                "decode_rest_ms": total - dec["linear"] - dec["lm_head"],
                "decode_rest_us_per_layer": (total - dec["linear"] - dec["lm_head"]) * 1e3 / layers,
                "prefill_ms": t_pre, "prefill_linear_ms": pre["linear"], "prefill_lm_head_ms": pre["lm_head"],
                "prefill_rest_ms": t_pre - pre["linear"] - pre["lm_head"],
            }
    finally:
        numba.set_num_threads(numba_threads)
        torch.set_num_threads(torch_threads)
    return out


def print_breakdown(bd: dict, prefill_tokens: int) -> None:
    print(f"\nwhere the time goes: one thread, CPU time "
          f"(decode: ms per token; prefill: ms per {prefill_tokens} tokens)")
    print("| variant | decode total | linears | per linear call | lm_head | rest | rest per layer "
          "| prefill total | linears | lm_head | rest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in bd.items():
        print(f"| {name} | {r['decode_ms_per_token']:.2f} | {r['decode_linear_ms']:.2f} | "
              f"{r['decode_linear_us_per_call']:.1f} us | {r['decode_lm_head_ms']:.2f} | {r['decode_rest_ms']:.2f} | "
              f"{r['decode_rest_us_per_layer']:.0f} us | {r['prefill_ms']:.0f} | {r['prefill_linear_ms']:.0f} | "
              f"{r['prefill_lm_head_ms']:.0f} | {r['prefill_rest_ms']:.0f} |")


def timed_rounds(variants, gen, prompt, prefill, new_tokens: int, rounds: int):
    """``(times, outputs)``: per variant the decode / prefill tokens/s and prompt seconds of every round
    (variants interleaved within a round), and its greedy tokens from the warm-up."""
    times = {k: {"decode": [], "prefill": [], "prompt": []} for k in variants}
    outputs = {}
    for name, m in variants.items():  # warm-up (numba JIT, caches)
        outputs[name] = gen(m)[0, prompt.shape[1]:].tolist()
        m(prefill)
    for r in range(rounds):
        for name, m in variants.items():
            tp = _time(lambda: m(prompt))
            tg = _time(lambda: gen(m))
            tf = _time(lambda: m(prefill))
            times[name]["prompt"].append(tp)
            times[name]["decode"].append(new_tokens / max(tg - tp, 1e-9))
            times[name]["prefill"].append(prefill.shape[1] / tf)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return times, outputs


def median_rows(times) -> list[dict]:
    """One row per variant: median decode / prefill tokens/s, their ratios to float32, every run."""
    base = {k: statistics.median(times["float32"][k]) for k in ("decode", "prefill")}
    rows = []
    for name, t in times.items():
        dec, pre = statistics.median(t["decode"]), statistics.median(t["prefill"])
        rows.append({"variant": name, "decode_tok_s": dec, "prefill_tok_s": pre,
                     "decode_vs_fp32": dec / base["decode"], "prefill_vs_fp32": pre / base["prefill"],
                     "decode_runs": t["decode"], "prefill_runs": t["prefill"]})
    return rows


def print_rows(rows, outputs) -> bool:
    """Print the table and whether the greedy tokens agree; returns whether the W4A8 backends agree."""
    agree = {k: outputs[k] == outputs["float32"] for k in outputs}
    w4 = [k for k in outputs if k.startswith("w4a8:")]
    print("| variant | decode tok/s | prefill tok/s | decode vs fp32 | prefill vs fp32 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['decode_tok_s']:.1f} | {r['prefill_tok_s']:.0f} | "
              f"{r['decode_vs_fp32']:.2f}x | {r['prefill_vs_fp32']:.2f}x |")
    same_w4 = len({tuple(outputs[k]) for k in w4}) <= 1
    print(f"greedy tokens: W4A8 backends identical to each other: {same_w4}; identical to float32: "
          f"{ {k: v for k, v in agree.items() if k != 'float32'} }")
    return same_w4


def main(argv=None) -> int:
    a = parse_args(argv)
    load_start = os.getloadavg()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.generate import load

    if a.threads:
        torch.set_num_threads(a.threads)
    fmodel, tok = load(a.model)
    variants = {"float32": fmodel}
    bf = load(a.model)[0].to(torch.bfloat16)
    variants["bf16"] = bf
    for b in [x for x in a.backends.split(",") if x]:
        variants[f"w4a8:{b}"] = load(a.checkpoint, backend=b)[0]
    toks = eval_tokens(tok, "ptb")[0].tolist()
    bos = bos_token_id(tok)
    head = [bos] if bos is not None else []
    prompt = torch.tensor([head + toks[: a.prompt_tokens - len(head)]])
    prefill = torch.tensor([head + toks[: a.prefill_tokens - len(head)]])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def gen(m):
        return m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=a.new_tokens,
                          min_new_tokens=a.new_tokens, do_sample=False, temperature=None, top_k=None, top_p=None,
                          pad_token_id=pad)

    with torch.inference_mode():
        times, outputs = timed_rounds(variants, gen, prompt, prefill, a.new_tokens, a.rounds)
    rows = median_rows(times)
    same_w4 = print_rows(rows, outputs)
    print(f"load average: start {[round(v, 2) for v in load_start]}, end {[round(v, 2) for v in os.getloadavg()]} "
          f"(timed rounds; 2 cores here: above 2 other jobs share them)")
    bd = None
    if a.breakdown:
        with torch.inference_mode():
            bd = breakdown(variants, gen, prompt, prefill, a.new_tokens, torch)
        print_breakdown(bd, prefill.shape[1])
    if a.out:
        info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                "load_average_start_end": [list(load_start), list(os.getloadavg())], "settings": vars(a), "rows": rows,
                "w4a8_backends_agree": same_w4, "breakdown_one_thread_cpu_ms": bd}
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {a.out}")
    return 0 if same_w4 else 1


if __name__ == "__main__":
    sys.exit(main())
