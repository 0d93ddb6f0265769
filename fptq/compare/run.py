"""Running ``fptq compare``: load, calibrate once for the shared rows, build and evaluate each row, write.

:func:`run_compare` prints the table and writes ``compare.md`` (command, date,
machine, table) and ``compare.json`` (settings, every row, the FPTQ plan).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .methods import CompareSettings, Method, methods_of, plan_words, selection_of, uses_pipeline
from .report import format_markdown, machine, read_peer_rows, task_value
from .variants import Variants

__all__ = ["run_compare"]


def _selected(s: CompareSettings) -> list[Method]:
    """The rows ``s.methods`` asks for, in its order (all rows when None); unknown keys are an error."""
    methods = methods_of(s)
    if not s.methods:
        return methods
    by_key = {m.key: m for m in methods}
    unknown = set(s.methods) - set(by_key)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(by_key)}")
    return [by_key[k] for k in dict.fromkeys(s.methods)]


def _sample_keeper(s: CompareSettings, methods: list[Method], model):
    """``(samples, on_layer)``: when a shared row selects its plan by error, one
    :class:`~fptq.models.layer_pass.LayerSamples` kept from the shared calibration (one row sample
    per input-sharing group: the plan reads its first linear's); else ``(None, None)``."""
    from ..models.arch import LINEAR_GROUPS, arch_of_model
    from ..models.calibrate import LayerSamples

    shared = [m for m in methods if m.kind != "float" and not uses_pipeline(m, s)]
    if not any(m.force is None and selection_of(m, s) != "bands" for m in shared):
        return None, None
    samples = LayerSamples()
    arch = arch_of_model(model)
    firsts = [arch.group_linears(g)[0] for g in LINEAR_GROUPS]

    def on_layer(i, prefix, layer, layer_stats, layer_samples):
        for rel in firsts:
            name = f"{prefix}.{rel}"
            samples[name] = layer_samples[name]
            if name in layer_samples.heldout:
                samples.heldout[name] = layer_samples.heldout[name]
        samples.fit_max.update(layer_samples.fit_max)
    return samples, on_layer


def _eval_ppl(model, tokens: dict, seq_len: int, max_windows: int, progress: bool, bos) -> dict:
    from ..eval.perplexity import perplexity

    return {name: perplexity(model, toks, seq_len=seq_len, max_windows=max_windows, progress=progress,
                             bos_token_id=bos) for name, toks in tokens.items()}


def _ppl_fields(res: dict) -> dict:
    return {"ppl": {t: float(r["ppl"]) for t, r in res.items()},
            "nll": {t: float(r["nll"]) for t, r in res.items()},
            "n_tokens": {t: int(r["n_tokens"]) for t, r in res.items()}}


def _run_row(m: Method, variants: Variants, s: CompareSettings, tokens, tok, bos) -> tuple[dict, list]:
    """Build row ``m``'s model, evaluate it, print one line; returns ``(row, plan groups)``."""
    import torch

    from ..eval.tasks import evaluate_task

    t1 = time.time()
    qm, groups = variants.get(m)
    windows = s.int_max_windows if (m.mode == "integer" and s.int_max_windows) else s.max_windows
    with torch.no_grad():
        res = _eval_ppl(qm, tokens, s.eval_seq_len, windows, s.progress, bos)
        task_res = {t: evaluate_task(qm, tok, t, limit=s.limit, progress=s.progress) for t in s.tasks}
    row = {"key": m.key, "label": m.label, "weights": m.weights, "acts": m.acts,
           "fake_quant": m.kind != "float" and m.mode != "integer", **_ppl_fields(res),
           "n_windows": windows, "n_windows_note": windows != s.max_windows,
           "tasks": task_res, "seconds": time.time() - t1}
    print(f"{m.label}: " + ", ".join([f"{t} {p:.3f}" for t, p in row["ppl"].items()]
                                     + [f"{t} {100 * task_value(t, r):.1f}" for t, r in task_res.items()])
          + f" ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return row, groups


def _fake_row_on_int_windows(s: CompareSettings, variants: Variants, tokens, bos) -> dict:
    """The fake-quant W4A8 row again on the integer row's (fewer) windows, for a like-for-like pair."""
    import torch

    m = next(x for x in methods_of(s) if x.key == "fptq_w4a8_fake")
    qm, _ = variants.get(m)
    with torch.no_grad():
        res = _eval_ppl(qm, tokens, s.eval_seq_len, s.int_max_windows, s.progress, bos)
    return {"key": "fptq_w4a8_fake_int_windows", "label": "FPTQ W4A8 (fake-quant)", "weights": m.weights,
            "acts": m.acts, "fake_quant": True, **_ppl_fields(res), "n_windows": s.int_max_windows,
            "n_windows_note": True, "seconds": 0.0}


def _header(s: CompareSettings, src, argv) -> str:
    from ..models.loading import DEFAULT_MODEL_NAME

    q = s.quant
    return (f"command: `{' '.join(argv) if argv else 'fptq compare'}`\n\n"
            f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; machine: {machine()}\n\n"
            f"model: {DEFAULT_MODEL_NAME if s.model is None else s.model} ({src}); "
            f"calibration {q.calib} {q.n_samples} x {q.seq_len} (shared by all methods); "
            f"\"FPTQ plan\" = {plan_words(q.policy_select, s)}; "
            f"perplexity on {s.max_windows} windows of {s.eval_seq_len} tokens per text; "
            + (f"tasks zero-shot, {'first ' + str(s.limit) if s.limit else 'all'} examples each "
               "(accuracy in %; acc_norm where the task has it); " if s.tasks else "") +
            "lm_head and embeddings float in every row.\n")


def _write(out: dict, header: str, table: str, out_dir) -> None:
    from ..io.outputs import check_finite_result

    check_finite_result(out, "compare")  # a NaN/Inf metric is an error, never a written result
    if out_dir:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "compare.md").write_text(header + "\n" + table + "\n")
        (d / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {d / 'compare.md'} and {d / 'compare.json'}", file=sys.stderr)


def run_compare(s: CompareSettings, out_dir="results/compare", argv=None) -> dict:
    """Run every selected method, print the table, write ``compare.md`` and ``compare.json``."""
    from ..data.calibration import calibration_ids
    from ..data.tasks import TASKS
    from ..data.text import eval_tokens
    from ..data.tokenize import bos_token_id
    from ..models.calibrate import calibrate
    from ..models.loading import load_float_model

    methods = _selected(s)
    peer_rows = read_peer_rows(s.peers, s.ppl, s.max_windows, s.eval_seq_len) if s.peers else []
    unknown_tasks = set(s.tasks) - set(TASKS)
    if unknown_tasks:
        raise ValueError(f"unknown tasks {sorted(unknown_tasks)}; choose from {', '.join(TASKS)}")
    model, tok, src = load_float_model(s.model, progress=s.progress)
    tokens = {t: eval_tokens(tok, t) for t in s.ppl}
    bos = bos_token_id(tok)  # the tokenizer's BOS, as fptq eval and calibration use (None: no BOS)
    q = s.quant
    ids = calibration_ids(tok, q.calib, q.n_samples, q.seq_len, q.seed, vocab_size=model.config.vocab_size)
    samples, on_layer = _sample_keeper(s, methods, model)
    t_cal = None

    def shared_stats():
        """The one float calibration of the rows that need no pipeline run of their own (made when
        the first such row comes, so pipeline rows asked for first are not kept waiting)."""
        nonlocal t_cal
        t1 = time.time()
        st = calibrate(model, ids, batch_size=s.batch_size, progress=s.progress, on_layer=on_layer,
                       keep_rows=q.keep_rows if samples is not None else 0,
                       holdout=q.holdout_samples(len(ids)) if samples is not None else 0)
        t_cal = time.time() - t1
        print(f"calibrated on {q.calib} {q.n_samples} x {q.seq_len} in {t_cal:.0f} s", file=sys.stderr, flush=True)
        return st

    rows, plan_json = [], None
    variants = Variants(model, shared_stats, s, samples, ids)
    for m in methods:
        row, groups = _run_row(m, variants, s, tokens, tok, bos)
        rows.append(row)
        if m.key == "fptq_w4a8_fake":
            plan_json = [g.to_json() for g in groups]
    if s.int_max_windows and s.int_max_windows != s.max_windows and any(r["key"] == "fptq_w4a8_int" for r in rows):
        rows.append(_fake_row_on_int_windows(s, variants, tokens, bos))
    table = format_markdown(rows + peer_rows, list(s.ppl), list(s.tasks))
    settings = asdict(s)
    settings["ppl"], settings["tasks"] = list(s.ppl), list(s.tasks)
    print(table)
    out = {"settings": settings, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "model_dir": str(src), "calibration_seconds": t_cal, "rows": rows + peer_rows, "fptq_plan": plan_json,
           "command": list(argv) if argv else None}
    _write(out, _header(s, src, argv), table, out_dir)
    return out
