"""How far the quantized model's hidden states drift from the float model's, layer by layer, under GPTAQ.

The diagnostic behind docs/results.md's GPTAQ section (issue 23): ``--weight-quantizer gptaq`` runs the float
model's stream beside the quantized one (:func:`fptq.models.calibrate.calibrate` with ``float_rows``), so each
layer's outputs on both streams are at hand. This script quantizes the first ``--layers`` decoder layers with
``gptaq`` at each ``--alpha`` (0 = GPTQ calibrated sequentially on the quantized stream, no correction) and prints,
per layer, ``||h~ - h|| / ||h||`` of the layer's input and output over the calibration tokens, for all tokens, the
first position (the attention sink, whose hidden state is hundreds of times larger in SmolLM2) and the others.

    python benchmarks/gptaq_drift.py [--model DIR_OR_GGUF] [--alpha 0,1] [--samples 16] [--layers 12]

It wraps two functions as :mod:`fptq.models.calibrate` calls them (its private float pass and the layer forward `run_layer`) to read the
streams; nothing else changes. Writes benchmarks/results/gptaq_drift_<model>_<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
from pathlib import Path


class _Enough(Exception):
    """Raised once ``--layers`` layers are measured (the rest of the run is not needed)."""


def _rel(a, b, sl) -> float:
    return float((a[:, sl] - b[:, sl]).norm() / b[:, sl].norm())


def _drift(q_in, f_in, q_out, f_out) -> dict:
    parts = {"all": slice(None), "pos0": slice(0, 1), "rest": slice(1, None)}
    return {f"{side}_{k}": _rel(q, f, sl) for side, (q, f) in (("in", (q_in, f_in)), ("out", (q_out, f_out)))
            for k, sl in parts.items()}


@contextlib.contextmanager
def _watching(rows: list, layers: int):
    """Record each layer's drift while ``calibrate`` runs (its float pass and its sequential pass)."""
    import torch

    import fptq.models.calibrate as cal

    float_pass, run_layer, seen = cal._float_pass, cal.run_layer, {}

    def watched_float_pass(layer, cap, i, *args, **kwargs):
        seen["in"] = torch.cat(cap.hidden)
        outs, kept = float_pass(layer, cap, i, *args, **kwargs)
        seen["out"] = torch.cat(outs)
        return outs, kept

    def watched_run_layer(layer, cap, i, hooks_on=None, *args, **kwargs):
        sequential_pass = hooks_on is None and "out" in seen
        q_in = torch.cat(cap.hidden) if sequential_pass else None
        outs = run_layer(layer, cap, i, hooks_on, *args, **kwargs)
        if sequential_pass:
            rows.append({"layer": i, **_drift(q_in, seen["in"], torch.cat(outs), seen["out"])})
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
                  flush=True)
            if i + 1 >= layers:
                raise _Enough
        return outs

    cal._float_pass, cal.run_layer = watched_float_pass, watched_run_layer
    try:
        yield
    except _Enough:
        pass
    finally:
        cal._float_pass, cal.run_layer = float_pass, run_layer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--alpha", default="0,1", help="comma-separated --gptaq-alpha values (default 0,1)")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples of 512 tokens (default 16)")
    ap.add_argument("--layers", type=int, default=12, help="decoder layers to measure (default 12)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gptaq_drift_<model>_<date>.json)")
    a = ap.parse_args(argv)

    from fptq.data.calibration import calibration_ids
    from fptq.models.config import QuantConfig
    from fptq.models.loading import load_float_model
    from fptq.models.quantize import quantize_model

    model, tok, src = load_float_model(a.model, progress=False)
    name = Path(str(src)).stem.lower()
    base = QuantConfig(weight_quantizer="gptaq", n_samples=a.samples)
    ids = calibration_ids(tok, base.calib, base.n_samples, base.seq_len, base.seed, vocab_size=model.config.vocab_size)
    runs = {}
    for alpha in (float(x) for x in a.alpha.split(",")):
        print(f"== gptaq alpha {alpha:g} ({name}, {a.samples} x 512 calibration tokens)", flush=True)
        rows = []
        with _watching(rows, a.layers):
            quantize_model(model, ids, dataclasses.replace(base, gptaq_alpha=alpha), progress=False)
        runs[f"alpha_{alpha:g}"] = rows
    stamp = datetime.date.today().isoformat()
    out = Path(a.out or Path(__file__).parent / "results" / f"gptaq_drift_{name}_{stamp}.json")
    out.write_text(json.dumps({"model": str(src), "config": base.to_json(), "samples": a.samples, "seq_len": 512, "runs": runs}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
