"""A probe, not a benchmark table: how much of each linear input's Hessian trace the first token (BOS) carries,
with every calibration token (the peers' Hessian), with fptq's strided rows and with balanced rows
(docs/results.md, "BOS in GPTQ's Hessian, session 23").

    python benchmarks/probe_bos_rows.py --model GGUF_OR_DIR --samples 8 --out OUT.json

The float model (unrotated: the rotation is orthogonal, so each row's squared norm, and so these shares, are the
same after it) runs over the first ``--samples`` of ``--calib``'s calibration samples (512 tokens, BOS first);
hooks on every q/o/up/down projection add up each input row's squared norm ``e_t = ||x_t||^2`` (``trace(X^T X)``
is their sum). Per linear it reports the BOS rows' share of the trace over all tokens (``share_all``) and over the
rows fptq keeps at stride ``--stride`` (positions 0, stride, ... of every sample: ``share_strided``); balanced
rows keep BOS at its share of the tokens, so their expected share is ``share_all``. Also the BOS row's and the
largest other row's ``e`` over the mean row's. Prints the linears sorted by ``share_strided`` and writes all of
them to ``--out``.
"""

from __future__ import annotations

import argparse


def observe(model, ids, stride: int) -> dict:
    """name -> [BOS energy, all energy, strided energy, sum over samples of the largest non-BOS energy,
    non-BOS energy] summed over the samples of ``ids`` [n, L] (one forward per sample)."""
    import torch

    acc, handles = {}, []

    def hook(name):
        def f(mod, inp, out):
            e = inp[0].detach().float().pow(2).sum(-1)   # [1, L]
            a = acc.setdefault(name, [0.0] * 5)
            for k, v in enumerate((e[:, 0].sum(), e.sum(), e[:, ::stride].sum(), e[:, 1:].max(), e[:, 1:].sum())):
                a[k] += float(v)
        return f

    for name, mod in model.named_modules():
        if name.endswith(("q_proj", "o_proj", "up_proj", "down_proj")):
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            for i in range(len(ids)):
                model(input_ids=ids[i:i + 1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return acc


def shares(acc: dict, n: int, length: int) -> dict:
    """Per linear: the BOS share of the trace (all tokens, strided rows) and the BOS / largest other row's energy
    over the mean non-BOS row's."""
    out = {}
    for name, (bos, total, strided, top, rest) in acc.items():
        mean = rest / (n * (length - 1))
        out[name] = dict(share_all=bos / total, share_strided=bos / strided, bos_over_mean=bos / n / mean,
                         max_other_over_mean=top / n / mean)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--calib", default="mix", help="calibration source (default mix, fptq's default)")
    ap.add_argument("--samples", type=int, default=8, help="calibration samples of 512 tokens (default 8)")
    ap.add_argument("--stride", type=int, default=8, help="fptq's row stride (default 8: 8192 of 128 x 512)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args(argv)

    from fptq.data.calibration import calibration_ids
    from fptq.eval.runner import write_json
    from fptq.models.loading import load_float_model

    model, tok, model_dir = load_float_model(a.model, progress=False)
    ids = calibration_ids(tok, source=a.calib, n_samples=a.samples, seq_len=512, seed=0)
    rows = shares(observe(model, ids, a.stride), a.samples, ids.shape[1])
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["share_strided"])[:12]:
        print(f"{name:40s} BOS share: all tokens {r['share_all']:.4f}, stride {a.stride} {r['share_strided']:.4f}; "
              f"BOS / mean row {r['bos_over_mean']:10.1f}, largest other / mean {r['max_other_over_mean']:6.1f}")
    write_json(a.out, {"model": str(model_dir), "calib": a.calib, "samples": a.samples, "stride": a.stride,
                       "linears": rows})


if __name__ == "__main__":
    main()
