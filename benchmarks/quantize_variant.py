"""Quantize a model with QuantConfig overrides and measure PTB/Wiki perplexity, in one process.

The quick loop behind the choice of fptq's defaults (docs/results.md, "How the 2026-11-30 default
was chosen"): no checkpoint is written; the quantized model is evaluated in memory with the integer
kernels of ``--backend`` (or ``--mode fake_quant``) on the same windows as ``fptq compare``.

    python benchmarks/quantize_variant.py NAME '{"sequential": true, "gptq_clip": true}' \
        [--model DIR_OR_GGUF] [--windows 16] [--texts ptb,wiki,fiction] [--out results/variants]

Prints one line per run and writes OUT/NAME.json (the overrides, perplexities, the plan's policy
counts, quantize seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="run name (the JSON file's stem)")
    ap.add_argument("overrides", help='QuantConfig fields as JSON, e.g. \'{"gptq_clip": false}\'')
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--windows", type=int, default=16, help="perplexity windows of 512 tokens per text")
    ap.add_argument("--texts", default="ptb,wiki",
                    help="comma-separated evaluation texts (fptq.data.text.TEXT_SOURCES; 'fiction' is the held-out one)")
    ap.add_argument("--mode", default="integer", choices=["integer", "fake_quant"])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--out", default="results/variants")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from fptq.data.calibration import calibration_ids
    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.eval.perplexity import perplexity
    from fptq.models.config import QuantConfig
    from fptq.models.loading import load_float_model
    from fptq.models.quantize import quantize_model

    from fptq.data.text import TEXT_SOURCES

    texts = [t for t in a.texts.split(",") if t]
    unknown = [t for t in texts if t not in TEXT_SOURCES]
    if unknown or not texts:
        ap.error(f"--texts: unknown text(s) {unknown or a.texts!r}; choose from {', '.join(TEXT_SOURCES)}")
    overrides = json.loads(a.overrides)
    cfg = QuantConfig(**overrides)
    model, tok, src = load_float_model(a.model, progress=False)
    ids = calibration_ids(tok, cfg.calib, cfg.n_samples, cfg.seq_len, cfg.seed, vocab_size=model.config.vocab_size)
    t0 = time.time()
    res = quantize_model(model, ids, cfg, backend=a.backend, mode=a.mode, progress=False, inplace=True)
    out = {"name": a.name, "overrides": overrides, "config": cfg.to_json(), "model": str(src),
           "mode": a.mode, "backend": a.backend, "windows": a.windows,
           "quantize_seconds": time.time() - t0, "policy_counts": res.plan.counts(), "ppl": {}}
    tuning = getattr(res, "scale_tuning", None)
    if tuning is not None:
        out["scale_tuning"] = {k: v for k, v in vars(tuning).items()}
    with torch.no_grad():
        for text in texts:
            r = perplexity(res.model, eval_tokens(tok, text), seq_len=512, max_windows=a.windows, progress=False,
                           bos_token_id=bos_token_id(tok))
            out["ppl"][text] = float(r["ppl"])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, f"{a.name}.json").write_text(json.dumps(out, indent=1))
    ppl = " ".join(f"{t} {v:.3f}" for t, v in out["ppl"].items())
    print(f"{a.name} {a.overrides}: {ppl} "
          f"(quantize {out['quantize_seconds']:.0f} s; {out['policy_counts']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
