"""A probe, not a benchmark table: a float model with its embeddings / lm_head rounded to bfloat16, as fptq's
checkpoint stores them, on the eval texts (16 x 512, BOS before each): the head's share of a W4A8 row's loss
(docs/results.md, "The 1.5B's rotation-based peer, session 21").

    python benchmarks/probe_bf16_head.py --model GGUF_OR_DIR --texts ptb,wiki,science,fiction --out OUT.json

Prints the perplexities and writes them as ``fptq eval --json`` does (:func:`fptq.eval.runner.run_eval`'s result).
"""

from __future__ import annotations

import argparse
import time


def round_tables_to_bf16(model) -> None:
    """Round the input embeddings and the lm_head (one table when tied) to bfloat16 and back, in place."""
    import torch

    tables = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    with torch.no_grad():
        for w in tables.values():
            w.copy_(w.to(torch.bfloat16).to(w.dtype))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--texts", default="ptb,wiki,science,fiction", help="comma-separated eval texts")
    ap.add_argument("--windows", type=int, default=16, help="windows of 512 tokens per text (default 16)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args(argv)

    from fptq.eval.runner import run_eval, write_json
    from fptq.models.loading import load_float_model

    model, tok, _ = load_float_model(a.model, progress=False)
    round_tables_to_bf16(model)
    t0 = time.time()
    res = run_eval(model, tok, ppl=a.texts, max_windows=a.windows, progress=False)
    res["model_kind"] = "float32, embeddings / lm_head rounded to bfloat16"
    write_json(a.out, res)
    print({k: v["ppl"] for k, v in res["perplexity"].items()}, f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
