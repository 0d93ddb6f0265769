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


def parse_texts(ap, value: str) -> list:
    """``--texts``: the comma-separated evaluation texts, each one of fptq.data.text.TEXT_SOURCES."""
    from fptq.data.text import TEXT_SOURCES

    texts = [t for t in value.split(",") if t]
    unknown = [t for t in texts if t not in TEXT_SOURCES]
    if unknown or not texts:
        ap.error(f"--texts: unknown text(s) {unknown or value!r}; choose from {', '.join(TEXT_SOURCES)}")
    return texts


def evaluate(model, tok, texts, windows: int) -> dict:
    """text -> perplexity of ``model`` on its first ``windows`` windows of 512 tokens (BOS before each)."""
    import torch

    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.eval.perplexity import perplexity

    with torch.no_grad():
        return {t: float(perplexity(model, eval_tokens(tok, t), seq_len=512, max_windows=windows, progress=False,
                                    bos_token_id=bos_token_id(tok))["ppl"]) for t in texts}


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

    from fptq.data.calibration import calibration_ids
    from fptq.models.config import QuantConfig
    from fptq.models.loading import load_float_model
    from fptq.models.quantize import quantize_model

    texts = parse_texts(ap, a.texts)
    overrides = json.loads(a.overrides)
    cfg = QuantConfig(**overrides)
    model, tok, src = load_float_model(a.model, progress=False)
    ids = calibration_ids(tok, cfg.calib, cfg.n_samples, cfg.seq_len, cfg.seed, vocab_size=model.config.vocab_size)
    t0 = time.time()
    res = quantize_model(model, ids, cfg, backend=a.backend, mode=a.mode, progress=False, inplace=True)
    out = {"name": a.name, "overrides": overrides, "config": cfg.to_json(), "model": str(src),
           "mode": a.mode, "backend": a.backend, "windows": a.windows,
           "quantize_seconds": time.time() - t0, "policy_counts": res.plan.counts()}
    if res.scale_tuning is not None:
        out["scale_tuning"] = dict(vars(res.scale_tuning))
    if res.layer_tuning is not None:
        out["layer_tuning"] = [dict(vars(r)) for r in res.layer_tuning]
    out["ppl"] = evaluate(res.model, tok, texts, a.windows)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, f"{a.name}.json").write_text(json.dumps(out, indent=1))
    ppl = " ".join(f"{t} {v:.3f}" for t, v in out["ppl"].items())
    print(f"{a.name} {a.overrides}: {ppl} "
          f"(quantize {out['quantize_seconds']:.0f} s; {out['policy_counts']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
