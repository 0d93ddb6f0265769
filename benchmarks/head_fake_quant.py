"""What a lower-bit lm_head alone costs: the float model with only its output matrix fake-quantized.

Issue 24's question (docs/benchmarks.md): would an INT4 lm_head (a scale and zero point per 128 columns, round
to nearest) be an affordable way to read fewer bytes per decoded token? The model stays float32 (transformers'
path); the lm_head is untied from the embedding (which stays float) and replaced by the dequantized INT4 weight
(:func:`fptq.reference.fake_quant_weight`). Perplexity on 16 x 512 PTB / Wiki windows, as ``fptq eval``.

    python benchmarks/head_fake_quant.py [--model DIR_OR_GGUF] [--heads float,int4g128] --out results/x.json
"""

from __future__ import annotations

import argparse
import json
import time

#: --heads -> (group size, format) of the fake-quantized head (None: the float head)
HEADS = {"float": None, "int4g128": (128, "uint4_asym")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--heads", default="float,int4g128", help=f"comma-separated, of {', '.join(HEADS)}")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--out", required=True, help="JSON file")
    a = ap.parse_args(argv)
    heads = a.heads.split(",")
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        ap.error(f"--heads: unknown {unknown}; choose from {list(HEADS)}")

    import numpy as np
    import torch

    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.eval.perplexity import perplexity
    from fptq.models.loading import load_float_model
    from fptq.reference import fake_quant_weight

    model, tok, src = load_float_model(a.model, progress=False)
    w = model.get_output_embeddings().weight.detach().float().numpy()
    out = {"model": str(src), "windows": a.windows, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "ppl": {}}
    for name in heads:
        grid = HEADS[name]
        wq = w if grid is None else fake_quant_weight(w, grid[0], grid[1], "rtn", None)
        head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        head.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(wq, dtype=np.float32)))
        model.config.tie_word_embeddings = False
        model.set_output_embeddings(head)
        with torch.no_grad():
            out["ppl"][name] = {text: float(perplexity(model, eval_tokens(tok, text), seq_len=512,
                                                       max_windows=a.windows, progress=False,
                                                       bos_token_id=bos_token_id(tok))["ppl"])
                                for text in ("ptb", "wiki")}
        print(name, out["ppl"][name], flush=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
