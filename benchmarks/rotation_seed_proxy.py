"""Which rotation seed? A calibration-only proxy for the INT4 weight error each seed's rotation leaves.

For every seed: the float model rotated as ``fptq quantize`` rotates it (``fptq.models.rotate.rotate_model``,
``online``: the pre-norm outputs by ``Q``, the value heads, the down projection's input by ``Q_f``), its
decoder linears' inputs taken on ``--samples`` calibration samples (wiki, 512 tokens, seed 0: the head of
fptq's own calibration set) and, per linear, ``H = X^T X``. The proxy of a linear is the relative output
error of round-to-nearest INT4 (asymmetric, G = 128) of its rotated weight::

    e = tr(E H E^T) / tr(W H W^T),   E = W - RTN(W)

and a seed's score is the mean of ``e`` over the linears (also given per group kind). Nothing of the
evaluation texts is read: a rotation chosen by this score is chosen by calibration data alone.

    python benchmarks/rotation_seed_proxy.py [--model GGUF_OR_DIR] [--seeds 0,1,2,3] [--samples 16]

Prints one line per seed and writes benchmarks/results/rotation_seed_proxy_<name>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _kind(name: str) -> str:
    for key, kind in (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"), ("o_proj", "o"),
                      ("gate_proj", "gate_up"), ("up_proj", "gate_up"), ("down_proj", "down")):
        if name.endswith(key):
            return kind
    return "other"


def input_hessians(model, ids, batch: int = 4) -> dict:
    """Full linear name -> float64 ``X^T X`` of its input rows over ``ids`` (the decoder layers' linears)."""
    import torch

    from fptq.models.arch import find_decoder_layers

    path, layers, _ = find_decoder_layers(model)
    hess, handles = {}, []

    def hook(mod, inputs, output, name):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
        h = x.T @ x
        hess[name] = hess[name] + h if name in hess else h

    for i, layer in enumerate(layers):
        for rel, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                handles.append(mod.register_forward_hook(
                    lambda m, a, o, n=f"{path}.{i}.{rel}": hook(m, a, o, n)))
    try:
        with torch.no_grad():
            for b in range(0, ids.shape[0], batch):
                model(ids[b:b + batch])
    finally:
        for h in handles:
            h.remove()
    return hess


def relative_errors(model, hess: dict, group_size: int = 128) -> dict:
    """Linear name -> ``tr(E H E^T) / tr(W H W^T)`` for round-to-nearest asymmetric INT4 of its weight."""
    from fptq.reference import fake_quant_weight
    from fptq.spec import WeightFormat

    out = {}
    for name, h in hess.items():
        w = model.get_submodule(name).weight.detach().float().numpy()
        e = (w - fake_quant_weight(w, group_size, WeightFormat.ASYMMETRIC, "rtn")).astype(np.float64)
        hn = h.numpy()
        w64 = w.astype(np.float64)
        out[name] = float(np.sum((e @ hn) * e) / np.sum((w64 @ hn) * w64))
    return out


def score(model_arg, seed: int, ids) -> dict:
    from fptq.models.loading import load_float_model
    from fptq.models.rotate import rotate_model

    model, _, _ = load_float_model(model_arg, progress=False)
    rotate_model(model, "online", seed)
    errs = relative_errors(model, input_hessians(model, ids))
    kinds = {}
    for name, e in errs.items():
        kinds.setdefault(_kind(name), []).append(e)
    return {"seed": seed, "mean": float(np.mean(list(errs.values()))),
            "by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file or model dir (default: the embedded SmolLM2-135M)")
    ap.add_argument("--name", default=None, help="name in the JSON file's name (default: from the model)")
    ap.add_argument("--seeds", default="0,1,2,3", help="comma-separated rotation seeds")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples of 512 tokens")
    a = ap.parse_args(argv)
    import torch

    from fptq.data.calibration import calibration_ids
    from fptq.models.loading import load_float_model

    torch.manual_seed(0)
    model, tok, src = load_float_model(a.model, progress=False)
    ids = calibration_ids(tok, "wiki", a.samples, 512, 0, vocab_size=model.config.vocab_size)
    del model
    name = a.name or Path(str(src)).stem.split(".")[0].lower()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rotation_seed_proxy_{name}_{dt.date.today().isoformat()}.json"
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        t0 = time.time()
        r = score(a.model, seed, ids)
        r["seconds"] = time.time() - t0
        rows.append(r)
        kinds = " ".join(f"{k} {v:.5f}" for k, v in r["by_kind"].items())
        print(f"seed {seed}: mean {r['mean']:.5f} ({kinds}) {r['seconds']:.0f} s", flush=True)
        out.write_text(json.dumps({"model": str(src), "samples": a.samples, "seq_len": 512, "calib": "wiki",
                                   "group_size": 128, "rows": rows, "command": "python benchmarks/"
                                   "rotation_seed_proxy.py " + " ".join(argv or [])}, indent=1))  # after each seed
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
