"""Perplexity against the number of scale-tuning steps, from one quantization (issue 23).

Quantizes a model once with the default QuantConfig (plus ``--overrides``), then runs
:func:`fptq.models.scale_tuning.tune_scales` in stages and evaluates the integer model after each stage:

    python benchmarks/tune_scales_curve.py NAME [--model DIR_OR_GGUF] [--stages 16,16,32,64] \
        [--lr 1e-3] [--texts ptb,wiki,fiction] [--windows 16] [--out results/variants]

The cumulative step counts are the running sums of ``--stages`` (16, 32, 64, 128 above). Each stage is one
``tune_scales`` call that starts from the scales the previous stage wrote, with a fresh Adam state and the
sample order of seed ``config.seed + stage index``; so the curve is close to, not identical with, single runs of
``--tune-scales N`` (one Adam state, one order). Stage 0 (no tuning) is evaluated too. Prints a table and
writes OUT/NAME.json (each stage's steps, KL report and perplexities, the quantize and tune seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

from quantize_variant import evaluate, parse_texts   # this folder: the same texts and windows


def _stages(text: str) -> list:
    try:
        stages = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise SystemExit(f"--stages: integers separated by commas, got {text!r}") from None
    if not stages or min(stages) < 1:
        raise SystemExit(f"--stages: positive step counts, got {text!r}")
    return stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="run name (the JSON file's stem)")
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--overrides", default="{}", help="QuantConfig fields as JSON (tune_scales_steps is ignored)")
    ap.add_argument("--stages", default="16,16,32,64", help="steps per stage, comma-separated")
    ap.add_argument("--lr", type=float, default=None, help="Adam's rate on the log-scales (default: QuantConfig's)")
    ap.add_argument("--texts", default="ptb,wiki,fiction")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--out", default="results/variants")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stages = _stages(a.stages)

    from fptq.data.calibration import calibration_ids
    from fptq.models.config import QuantConfig
    from fptq.models.loading import load_float_model
    from fptq.models.quantize import quantize_model
    from fptq.models.scale_tuning import tune_scales

    texts = parse_texts(ap, a.texts)
    overrides = {**json.loads(a.overrides), "tune_scales_steps": 0}
    cfg = QuantConfig(**overrides)
    lr = cfg.tune_scales_lr if a.lr is None else a.lr
    model, tok, src = load_float_model(a.model, progress=False)
    teacher = copy.deepcopy(model).eval()
    ids = calibration_ids(tok, cfg.calib, cfg.n_samples, cfg.seq_len, cfg.seed, vocab_size=model.config.vocab_size)
    t0 = time.time()
    res = quantize_model(model, ids, cfg, backend=a.backend, mode="integer", progress=False, inplace=True)
    out = {"name": a.name, "model": str(src), "overrides": overrides, "lr": lr, "windows": a.windows,
           "quantize_seconds": time.time() - t0, "stages": []}
    done = 0
    for i, steps in enumerate([0] + stages):
        report = None
        if steps:
            report = tune_scales(res.model, teacher, ids, steps, lr, seed=cfg.seed + i)
            done += steps
        row = {"steps": done, "ppl": evaluate(res.model, tok, texts, a.windows),
               "report": None if report is None else vars(report)}
        out["stages"].append(row)
        print(f"{a.name} steps {done:4d}: " + " ".join(f"{t} {v:.3f}" for t, v in row["ppl"].items())
              + ("" if report is None else f" (KL {report.loss_before:.5f} -> {report.loss_after:.5f}, "
                                           f"{report.seconds:.0f} s)"), flush=True)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, f"{a.name}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
