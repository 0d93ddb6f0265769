"""A probe, not a benchmark table: how much of a W4A8 model's loss sits at the first token (BOS), and what BOS's
rows in GPTQ's Hessian do (docs/results.md, "BOS in GPTQ's Hessian, session 23").

    python benchmarks/probe_intact_bos.py [--model GGUF_OR_DIR] [--overrides JSON] [--no-bos-rows] \
        [--texts ptb,wiki,science,fiction] [--windows 16] --out OUT.json

Quantizes the model in memory (QuantConfig defaults plus ``--overrides``; integer numba kernels) and scores each
window ``[BOS, t_1 .. t_512]`` twice: ``plain``, the quantized model alone (``fptq eval``'s number); ``intact_bos``,
BOS's key/value cache and BOS's logits taken from the float model rotated like the quantized one (IntactKV, Liu et
al. 2024: the first token's state does not depend on the text, so a float copy of it is exact), the other 511
positions from the quantized model reading that cache. ``--no-bos-rows`` keeps the calibration rows balanced
(``balanced_rows``) and never at position 0, so BOS is absent from GPTQ's Hessian and the plan's rows (a what-if:
:meth:`fptq.models.layer_pass.RowStride.offset` patched for this process only).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time


def drop_first_position() -> None:
    """Patch :meth:`RowStride.offset` (this process only) so that balanced rows skip each sample's position 0:
    a sample whose offset would be 0 starts at ``step`` instead."""
    from fptq.models.layer_pass import RowStride

    RowStride.offset = lambda self, j: j % self.step or self.step


def window_nll(qm, window, bos_cache, bos_logits) -> tuple:
    """(plain, intact) summed next-token NLL of one window [1, 1 + L] (BOS first)."""
    import torch

    ce, target = torch.nn.functional.cross_entropy, window[0, 1:]
    plain = qm(window, use_cache=False).logits[0, :-1].float()
    rest = qm(window[:, 1:-1], past_key_values=copy.deepcopy(bos_cache), use_cache=True).logits[0].float()
    intact = torch.cat([bos_logits[None], rest])
    return float(ce(plain, target, reduction="sum")), float(ce(intact, target, reduction="sum"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--overrides", default="{}", help="QuantConfig fields as JSON")
    ap.add_argument("--no-bos-rows", action="store_true", help="calibration rows never at position 0 (a what-if)")
    ap.add_argument("--texts", default="ptb,wiki,science,fiction", help="comma-separated eval texts")
    ap.add_argument("--windows", type=int, default=16, help="windows of 512 tokens per text (default 16)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args(argv)

    import torch

    from fptq.data.calibration import calibration_ids
    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.eval.runner import write_json
    from fptq.models.config import QuantConfig
    from fptq.models.loading import load_float_model
    from fptq.models.quantize import quantize_model
    from fptq.models.rotate import rotate_model

    overrides = json.loads(a.overrides)
    if a.no_bos_rows:
        drop_first_position()
        overrides["balanced_rows"] = True
    cfg = QuantConfig(**overrides)
    model, tok, src = load_float_model(a.model, progress=False)
    float_rotated = copy.deepcopy(model)
    if cfg.rotate != "none":
        rotate_model(float_rotated, cfg.rotate, seed=cfg.rotation_seed_used)
    ids = calibration_ids(tok, cfg.calib, cfg.n_samples, cfg.seq_len, cfg.seed, vocab_size=model.config.vocab_size)
    t0 = time.time()
    qm = quantize_model(model, ids, cfg, backend="numba", mode="integer", progress=False, inplace=True).model
    seconds, bos, ppl = time.time() - t0, bos_token_id(tok), {}
    with torch.no_grad():
        first = float_rotated(torch.tensor([[bos]]), use_cache=True)
        bos_cache, bos_logits = first.past_key_values, first.logits[0, 0].float()
        for text in a.texts.split(","):
            toks, sums, n = eval_tokens(tok, text), [0.0, 0.0], 0
            for i in range(a.windows):
                w = torch.cat([torch.full((1, 1), bos), toks[:, i * 512:(i + 1) * 512]], dim=1)
                sums = [s + v for s, v in zip(sums, window_nll(qm, w, bos_cache, bos_logits))]
                n += w.shape[1] - 1
            ppl[text] = {"plain": math.exp(sums[0] / n), "intact_bos": math.exp(sums[1] / n)}
            print(text, ppl[text], flush=True)
    write_json(a.out, {"model": str(src), "overrides": overrides, "no_bos_rows": a.no_bos_rows,
                       "windows": a.windows, "quantize_seconds": seconds, "ppl": ppl})


if __name__ == "__main__":
    main()
