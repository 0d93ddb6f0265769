"""``fptq compare``: FPTQ side by side with the baselines, one calibration, one table.

One float calibration pass (per-channel input maxima of every linear) is shared
by every method; each method then builds its own copy of the model from those
statistics and is evaluated on the same perplexity windows.

=========================  ===============================  ===============================
method                     weights                          activations
=========================  ===============================  ===============================
``fp32``                   float32                          float32
``rtn_w4a16``              INT4 groupwise RTN               float32
``smoothquant_w8a8``       INT8 per-channel, after SQ       INT8 per-tensor static, after
                           smoothing (alpha 0.5)            SQ smoothing (folded like LAE)
``w4a8_dynamic``           INT4 groupwise RTN               INT8 per-token dynamic everywhere
``w4a8_static``            INT4 groupwise RTN               INT8 per-tensor static everywhere
``fptq_w4a8_fake``         INT4 groupwise RTN, LAE-folded   FPTQ plan (fake-quant)
``fptq_w4a8_int``          same, integer backend            FPTQ plan, integer W4A8 matmuls
``fptq_a8_only``           float32, LAE-folded              FPTQ plan (attribution row)
``fptq_w4_only``           INT4, LAE-folded                 float32 (attribution row)
``fptq_w4a8_bands`` or     INT4 groupwise RTN, LAE-folded   FPTQ plan made by the *other*
``fptq_w4a8_error``                                         policy selection (see below)
``fptq_w4a8_mse[_asym]``   INT4 (sym / asym) with an        FPTQ plan (fake-quant)
                           activation-aware clipping search
``fptq_only_<group>``      FPTQ W4A8 on one linear group    (per-kind ablation: which of
                           (qkv, o, gate_up, down), the     q/k/v, o, gate/up, down costs
                           rest float                       most of the W4A8 loss)
=========================  ===============================  ===============================

"FPTQ plan" follows ``policy_select`` (as ``fptq quantize --policy-select``):
``error`` (the default: v >= v1 per-token dynamic; below v1, static or LAE +
static, whichever gives the smaller output error on calibration rows) or
``bands`` (the paper's fixed v0/v1 bands). The row for the other selection is
``fptq_w4a8_bands`` (default settings) or ``fptq_w4a8_error``.

Every row except ``fptq_w4a8_int`` is fake quantization (float matmuls on
dequantized values), named as such in the table.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .models.config import QuantConfig

__all__ = ["CompareSettings", "METHODS", "run_compare", "build_variant", "format_markdown"]


@dataclass
class CompareSettings:
    """What ``fptq compare`` runs: the quantization settings every method starts from
    (``quant``, the one :class:`~fptq.models.config.QuantConfig`; each method changes only
    what it names), and how the methods are evaluated."""

    model: str | None = None
    quant: QuantConfig = field(default_factory=QuantConfig)
    ppl: tuple = ("ptb", "wiki")
    tasks: tuple = ()
    limit: int | None = None
    max_windows: int = 16
    eval_seq_len: int = 512
    batch_size: int = 8
    backend: str = "torch"
    methods: tuple | None = None
    int_max_windows: int | None = None
    sq_alpha: float = 0.5
    progress: bool = True
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    weights: str
    acts: str
    kind: str                 # "float" | "fake" | "w4a8"
    force: str | None = None  # policy forced on every group (None: FPTQ bands)
    equalize: object = "lae"
    weight: str | None = None  # "int4" | "int8pc" | None (float)
    act: bool = True
    groups: tuple = ("qkv", "o", "gate_up", "down")
    mode: str = "fake_quant"
    weight_quantizer: str = "rtn"
    weight_format: str | None = None  # None: the settings' format
    select: str | None = None          # policy selection; None: the settings' policy_select


def _methods(s: CompareSettings) -> list[Method]:
    q = s.quant
    g = f"G={q.group_size}" if q.group_size != -1 else "per-channel"
    w4 = f"INT4 {q.weight_format} {g} RTN"
    rows = [
        Method("fp32", "FP32", "float32", "float32", "float"),
        Method("rtn_w4a16", "RTN W4A16", w4, "float32", "fake", force="dynamic", weight="int4", act=False),
        Method("smoothquant_w8a8", f"SmoothQuant W8A8 (alpha {s.sq_alpha:g})", "INT8 per-channel, SQ-smoothed",
               "INT8 per-tensor static, SQ-smoothed", "fake", force="lae_static",
               equalize=("smoothquant", s.sq_alpha), weight="int8pc"),
        Method("w4a8_dynamic", "naive W4A8, all per-token dynamic", w4, "INT8 per-token dynamic", "w4a8",
               force="dynamic"),
        Method("w4a8_static", "naive W4A8, all per-tensor static", w4, "INT8 per-tensor static", "w4a8",
               force="static"),
        Method("fptq_w4a8_fake", "FPTQ W4A8 (fake-quant)", w4 + ", LAE-folded", "FPTQ plan", "w4a8"),
        Method("fptq_w4a8_int", f"FPTQ W4A8 (integer, backend {s.backend})", w4 + ", LAE-folded", "FPTQ plan",
               "w4a8", mode="integer"),
        Method("fptq_a8_only", "FPTQ activations only (A8, float weights)", "float32, LAE-folded", "FPTQ plan",
               "fake", weight=None, act=True),
        Method("fptq_w4_only", "FPTQ weights only (W4, float activations)", w4 + ", LAE-folded", "float32",
               "fake", weight="int4", act=False),
    ]
    wq = f"INT4 {{}} {g} act-aware clip search, LAE-folded"
    other = "bands" if q.policy_select == "error" else "error"
    alt_acts = (f"paper bands v0={q.v0:g}, v1={q.v1:g}" if other == "bands"
                else f"static/LAE by calibration error below v1={q.v1:g}")
    rows += [
        Method(f"fptq_w4a8_{other}", f"FPTQ W4A8, {alt_acts}", w4 + ", LAE-folded", f"FPTQ plan, {alt_acts}",
               "w4a8", select=other),
        Method("fptq_w4a8_mse", "FPTQ W4A8 + clip search (fake-quant)", wq.format(q.weight_format), "FPTQ plan",
               "w4a8", weight_quantizer="mse"),
        Method("fptq_w4a8_mse_asym", "FPTQ W4A8 + asym + clip search (fake-quant)", wq.format("uint4_asym"),
               "FPTQ plan", "w4a8", weight_quantizer="mse", weight_format="uint4_asym"),
    ]
    for grp in ("qkv", "o", "gate_up", "down"):
        rows.append(Method(f"fptq_only_{grp}", f"FPTQ W4A8 on {grp} only (rest float)", w4 + f" ({grp})",
                           f"FPTQ plan ({grp})", "w4a8", groups=(grp,)))
    return rows


METHODS = tuple(m.key for m in _methods(CompareSettings()))


def _make_linear_factory(m: Method, s: CompareSettings):
    import torch

    from . import reference as ref
    from .models.fakequant import FakeQuantLinear
    from .models.quantize import w4a8_factory

    if m.kind == "w4a8":
        return w4a8_factory(_quant_config(m, s), s.backend, m.mode)

    def make(linear, gp):
        w = linear.weight.detach().cpu().numpy().astype(np.float32)
        if m.weight == "int4":
            w = ref.fake_quant_weight(w, s.quant.group_size, s.quant.weight_format)
        elif m.weight == "int8pc":
            w = ref.fake_quant_weight_int8_per_channel(w)
        return FakeQuantLinear(torch.from_numpy(w), linear.bias, gp.policy if m.act else None,
                               gp.act_scale if m.act else None, label=m.key)
    return make


def _plan_words(select: str, s: CompareSettings) -> str:
    q = s.quant
    if select == "bands":
        return f"the paper's bands (static below v0={q.v0:g}, LAE + static below v1={q.v1:g}, else per-token dynamic)"
    return (f"per-token dynamic from v1={q.v1:g}, below it static or LAE + static, whichever gives the smaller "
            f"output error on {q.keep_rows} calibration rows")


def _select(m: Method, s: CompareSettings) -> str:
    return m.select or s.quant.policy_select


def _quant_config(m: Method, s: CompareSettings) -> QuantConfig:
    """The settings' QuantConfig with what method ``m`` changes."""
    return replace(s.quant, weight_format=m.weight_format or s.quant.weight_format,
                   weight_quantizer=m.weight_quantizer, policy_select=_select(m, s))


def build_variant(model, stats: dict, m: Method, s: CompareSettings, samples: dict | None = None):
    """A deep copy of the float ``model`` quantized as method ``m`` from shared statistics
    (``samples``: calibration rows per linear input, needed by ``select="error"`` methods).

    Returns ``(model_copy, plan_groups)``."""
    from .models.arch import arch_of_model, find_decoder_layers
    from .models.plan import LayerRef
    from .models.quantize import apply_plan_layer, dequantized_weight_fn, plan_options

    model = copy.deepcopy(model)
    if m.kind == "float":
        return model, []
    arch = arch_of_model(model)
    path, layers, _ = find_decoder_layers(model)
    make = _make_linear_factory(m, s)
    qc = _quant_config(m, s)
    weight_fn = dequantized_weight_fn(qc) if m.kind == "w4a8" else None
    options = plan_options(qc, force=m.force, equalize=m.equalize, groups=tuple(m.groups))
    groups = []
    for i, layer in enumerate(layers):
        lr = LayerRef(i, f"{path}.{i}", layer, arch, model.config)
        groups += apply_plan_layer(lr, stats, make, options, samples=samples, weight_fn=weight_fn)
    return model, groups


def _machine() -> str:
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {threads}, {platform.system()} {platform.release()}"


#: the headline metric per task where it is not ``acc``: lm-evaluation-harness reports
#: length-normalized accuracy for these (WinoGrande and MMLU have one shared continuation
#: or one-token answers, so normalization changes nothing there)
_HEADLINE = {"piqa": "acc_norm", "hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm"}


def _task_value(name: str, r: dict) -> float:
    """The headline number of task ``name``'s result ``r`` (:data:`_HEADLINE`, else ``acc``)."""
    return r[_HEADLINE.get(name, "acc")]


def format_markdown(rows: list[dict], texts, tasks=()) -> str:
    """The comparison table in markdown: ppl per text, the increase over FP32, accuracy (%) per task."""
    base = next((r for r in rows if r["key"] == "fp32"), None)
    head = ("| method | weights | activations | " + " | ".join(f"ppl {t}" for t in texts) + " | vs FP32 | "
            + "".join(f"{t} {_HEADLINE.get(t, 'acc')} | " for t in tasks) + "time (s) |")
    lines = [head, "|" + "---|" * (5 + len(texts) + len(tasks))]
    for r in rows:
        ppls = [r["ppl"].get(t) for t in texts]
        cells = " | ".join("-" if p is None else f"{p:.2f}" for p in ppls)
        if base and r is not base:
            rel = [(r["ppl"][t] / base["ppl"][t] - 1) * 100 for t in texts if t in r["ppl"] and t in base["ppl"]]
            vs = " / ".join(f"{x:+.1f}%" for x in rel)
        else:
            vs = "-"
        tcells = "".join((f"{100 * _task_value(t, r['tasks'][t]):.1f} | " if t in r.get("tasks", {}) else "- | ")
                         for t in tasks)
        note = f" ({r['n_windows']} windows)" if r.get("n_windows_note") else ""
        lines.append(f"| {r['label']}{note} | {r['weights']} | {r['acts']} | {cells} | {vs} | {tcells}"
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def _eval_ppl(model, tokens: dict, seq_len: int, max_windows: int, progress: bool, bos) -> dict:
    from .eval.perplexity import perplexity

    out = {}
    for name, toks in tokens.items():
        r = perplexity(model, toks, seq_len=seq_len, max_windows=max_windows, progress=progress, bos_token_id=bos)
        out[name] = r
    return out


def run_compare(s: CompareSettings, out_dir="results/compare", argv=None) -> dict:
    """Run every selected method, print the table, write ``compare.md`` and ``compare.json``."""
    import torch

    from .data.tasks import TASKS
    from .data.text import eval_tokens
    from .data.tokenize import bos_token_id
    from .eval.tasks import evaluate_task
    from .models.arch import LINEAR_GROUPS, arch_of_model
    from .data.calibration import calibration_ids
    from .models.calibrate import calibrate
    from .models.loading import DEFAULT_MODEL_NAME, load_float_model

    methods = _methods(s)
    if s.methods:
        unknown = set(s.methods) - {m.key for m in methods}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(m.key for m in methods)}")
        methods = [m for m in methods if m.key in s.methods]
    unknown_tasks = set(s.tasks) - set(TASKS)
    if unknown_tasks:
        raise ValueError(f"unknown tasks {sorted(unknown_tasks)}; choose from {', '.join(TASKS)}")
    t0 = time.time()
    model, tok, src = load_float_model(s.model, progress=s.progress)
    tokens = {t: eval_tokens(tok, t) for t in s.ppl}
    bos = bos_token_id(tok)  # the tokenizer's BOS, as fptq eval and calibration use (None: no BOS)
    q = s.quant
    ids = calibration_ids(tok, q.calib, q.n_samples, q.seq_len, q.seed, vocab_size=model.config.vocab_size)
    samples = None
    on_layer = None
    if any(m.kind != "float" and m.force is None and _select(m, s) == "error" for m in methods):
        samples = {}

        arch = arch_of_model(model)
        firsts = [arch.group_linears(g)[0] for g in LINEAR_GROUPS]

        def on_layer(i, prefix, layer, layer_stats, layer_samples):
            # one row sample per input-sharing group (the plan reads its first linear's)
            for rel in firsts:
                samples[f"{prefix}.{rel}"] = layer_samples[f"{prefix}.{rel}"]

    stats = calibrate(model, ids, batch_size=s.batch_size, progress=s.progress, on_layer=on_layer,
                      keep_rows=q.keep_rows if samples is not None else 0)
    t_cal = time.time() - t0
    print(f"calibrated on {q.calib} {q.n_samples} x {q.seq_len} in {t_cal:.0f} s", flush=True)
    rows, plan_json = [], None
    for m in methods:
        t1 = time.time()
        qm, groups = build_variant(model, stats, m, s, samples)
        if m.key == "fptq_w4a8_fake":
            plan_json = [g.to_json() for g in groups]
        windows = s.int_max_windows if (m.mode == "integer" and s.int_max_windows) else s.max_windows
        with torch.no_grad():
            res = _eval_ppl(qm, tokens, s.eval_seq_len, windows, s.progress, bos)
            task_res = {t: evaluate_task(qm, tok, t, limit=s.limit, progress=s.progress) for t in s.tasks}
        del qm
        row = {"key": m.key, "label": m.label, "weights": m.weights, "acts": m.acts,
               "fake_quant": m.kind != "float" and m.mode != "integer",
               "ppl": {t: float(r["ppl"]) for t, r in res.items()},
               "nll": {t: float(r["nll"]) for t, r in res.items()},
               "n_tokens": {t: int(r["n_tokens"]) for t, r in res.items()},
               "n_windows": windows, "n_windows_note": windows != s.max_windows,
               "tasks": task_res, "seconds": time.time() - t1}
        rows.append(row)
        print(f"{m.label}: " + ", ".join([f"{t} {p:.3f}" for t, p in row["ppl"].items()]
                                         + [f"{t} {100 * _task_value(t, r):.1f}" for t, r in task_res.items()])
              + f" ({row['seconds']:.0f} s)", flush=True)
    if s.int_max_windows and s.int_max_windows != s.max_windows and any(r["key"] == "fptq_w4a8_int" for r in rows):
        m = next(x for x in methods if x.key == "fptq_w4a8_fake")
        qm, _ = build_variant(model, stats, m, s, samples)
        with torch.no_grad():
            res = _eval_ppl(qm, tokens, s.eval_seq_len, s.int_max_windows, s.progress, bos)
        rows.append({"key": "fptq_w4a8_fake_int_windows", "label": "FPTQ W4A8 (fake-quant)",
                     "weights": m.weights, "acts": m.acts, "fake_quant": True,
                     "ppl": {t: float(r["ppl"]) for t, r in res.items()},
                     "nll": {t: float(r["nll"]) for t, r in res.items()},
                     "n_tokens": {t: int(r["n_tokens"]) for t, r in res.items()},
                     "n_windows": s.int_max_windows, "n_windows_note": True, "seconds": 0.0})
    table = format_markdown(rows, list(s.ppl), list(s.tasks))
    settings = asdict(s)
    settings["ppl"], settings["tasks"] = list(s.ppl), list(s.tasks)
    header = (f"command: `{' '.join(argv) if argv else 'fptq compare'}`\n\n"
              f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; machine: {_machine()}\n\n"
              f"model: {DEFAULT_MODEL_NAME if s.model is None else s.model} ({src}); "
              f"calibration {q.calib} {q.n_samples} x {q.seq_len} (shared by all methods); "
              f"\"FPTQ plan\" = {_plan_words(q.policy_select, s)}; "
              f"perplexity on {s.max_windows} windows of {s.eval_seq_len} tokens per text; "
              + (f"tasks zero-shot, {'first ' + str(s.limit) if s.limit else 'all'} examples each "
                 "(accuracy in %; acc_norm where the task has it); " if s.tasks else "") +
              f"lm_head and embeddings float in every row.\n")
    print(table)
    out = {"settings": settings, "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "model_dir": str(src), "calibration_seconds": t_cal, "rows": rows, "fptq_plan": plan_json,
           "command": list(argv) if argv else None}
    from .io.outputs import check_finite_result

    check_finite_result(out, "compare")  # a NaN/Inf metric is an error, never a written result
    if out_dir:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "compare.md").write_text(header + "\n" + table + "\n")
        (d / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {d / 'compare.md'} and {d / 'compare.json'}")
    return out
