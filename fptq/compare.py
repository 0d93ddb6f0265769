"""``fptq compare``: FPTQ side by side with the baselines, one table.

Every row is evaluated on the same perplexity windows. Rows whose weights are
round-to-nearest or clip-searched share one float calibration pass (per-channel
input maxima of every linear, calibration rows for the error-selected plan) and
build their copy of the model from it; rows that need GPTQ (the layer's own
calibration inputs) or a rotated model run :func:`fptq.models.quantize.quantize_model`
itself, exactly as ``fptq quantize`` does (own calibration on the same tokens).

=========================  ===============================  ===============================
method                     weights                          activations
=========================  ===============================  ===============================
``fp32``                   float32                          float32
``rtn_w4a16``              INT4 groupwise RTN               float32
``gptq_w4a16``             INT4 groupwise GPTQ              float32
``smoothquant_w8a8``       INT8 per-channel, after SQ       INT8 per-tensor static, after
                           smoothing (alpha 0.5)            SQ smoothing (folded like LAE)
``w4a8_dynamic``           INT4 groupwise RTN               INT8 per-token dynamic everywhere
``w4a8_static``            INT4 groupwise RTN               INT8 per-tensor static everywhere
``fptq_paper``             INT4 int4_sym RTN, LAE-folded    the paper's v0/v1 bands
``fptq_w4a8_fake``         the settings' weights (default   FPTQ plan (fake-quant)
                           GPTQ uint4_asym), LAE-folded
``fptq_w4a8_int``          same, integer backend            FPTQ plan, integer W4A8 matmuls
``fptq_a8_only``           float32, LAE-folded              FPTQ plan (attribution row)
``fptq_w4_only``           the settings' INT4, LAE-folded   float32 (attribution row)
``fptq_w4a8_<change>``     one change from the settings:    another policy selection
                           another quantizer (``rtn``,      (``bands`` / ``error`` /
                           ``mse``, ``gptq``), the other    ``error_static``), or as the
                           format (``int4_sym`` /           settings
                           ``uint4_asym``), another rotation
                           (``rotate_online`` /
                           ``rotate_residual`` /
                           ``rotate_none``),
                           GPTQ's clip search (``clip`` /
                           ``noclip``), calibration inputs
                           (``sequential`` /
                           ``nosequential``), G = 64 (``g64``),
                           every group per-token dynamic
                           (``dynamic``: the plan's check)
``fptq_only_<group>``      FPTQ W4A8 on one linear group    (per-kind ablation: which of
                           (qkv, o, gate_up, down), the     q/k/v, o, gate/up, down costs
                           rest float                       most of the W4A8 loss)
=========================  ===============================  ===============================

"FPTQ plan" follows ``policy_select`` (as ``fptq quantize --policy-select``):
``error`` (the default: v >= v1 per-token dynamic; below v1, static, LAE +
static or per-token dynamic, whichever gives the smallest output error on
held-out calibration rows, INT4 weights in place), ``error_static`` (static or
LAE + static only) or ``bands`` (the paper's fixed v0/v1 bands). The
attribution rows use the W4A8 row's plan (same calibration, same candidate
errors).

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

from .models.config import POLICY_SELECTIONS, ROTATIONS, QuantConfig

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
    peers: str | None = None  # JSON of benchmarks/peers/run_peers.py: its rows join the table
    progress: bool = True
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    weights: str
    acts: str
    kind: str                 # "float" | "fake" | "w4a8"
    force: str | None = None  # policy forced on every group (None: the FPTQ plan)
    equalize: object = "lae"
    weight: str | None = None  # "int4" | "int8pc" | None (float)
    act: bool = True
    groups: tuple = ("qkv", "o", "gate_up", "down")
    mode: str = "fake_quant"
    weight_quantizer: str | None = None  # None: the settings' quantizer
    weight_format: str | None = None     # None: the settings' format
    select: str | None = None            # policy selection; None: the settings' policy_select
    rotate: str | None = None            # None: the settings' rotation (QuantConfig.rotate)
    group_size: int | None = None        # None: the settings' group size
    gptq_clip: bool | None = None        # None: the settings' GPTQ clip search
    holdout: float | None = None         # None: the settings' held-out fraction
    sequential: bool | None = None       # None: the settings' calibration inputs


#: how the table names each weight quantizer
QUANTIZER_WORDS = {"rtn": "RTN", "mse": "act-aware clip search", "gptq": "GPTQ"}
FORMATS = ("int4_sym", "uint4_asym")
#: how the table names each rotation (QuantConfig.rotate)
ROTATION_TITLES = {"online": "norm outputs rotated online", "residual": "residual stream rotated (QuaRot)",
                   "none": "no rotation"}


def _weights(s: CompareSettings, quantizer: str, fmt: str, rotate: str = "none", group_size: int | None = None,
             clip: bool | None = None) -> str:
    q = s.quant
    gs = q.group_size if group_size is None else group_size
    g = f"G={gs}" if gs != -1 else "per-channel"
    clip = q.gptq_clip if clip is None else clip
    return (f"INT4 {fmt} {g} {QUANTIZER_WORDS[quantizer]}" + (" + clip search" if quantizer == "gptq" and clip else "")
            + _rotation_words(rotate))


def _rotation_words(rotate: str) -> str:
    return {"none": "", "online": ", norm outputs rotated online", "residual": ", residual stream rotated"}[rotate]


def _selection_words(select: str, s: CompareSettings) -> str:
    q = s.quant
    return {"bands": f"paper bands v0={q.v0:g}, v1={q.v1:g}",
            "error": f"static/LAE/dynamic by held-out error below v1={q.v1:g}",
            "error_static": f"static/LAE by calibration error below v1={q.v1:g} (the default until 2026-11-30)"}[select]


def _methods(s: CompareSettings) -> list[Method]:
    q = s.quant
    rtn = _weights(s, "rtn", q.weight_format)
    mine = _weights(s, q.weight_quantizer, q.weight_format, q.rotate) + ", LAE-folded"
    rows = [
        Method("fp32", "FP32", "float32", "float32", "float"),
        Method("rtn_w4a16", "RTN W4A16", rtn, "float32", "fake", force="dynamic", weight="int4", act=False,
               weight_quantizer="rtn", rotate="none", sequential=False),
        Method("gptq_w4a16", "GPTQ W4A16", _weights(s, "gptq", q.weight_format, clip=False), "float32", "fake",
               force="dynamic", weight="int4", act=False, weight_quantizer="gptq", rotate="none", gptq_clip=False,
               sequential=False),
        Method("smoothquant_w8a8", f"SmoothQuant W8A8 (alpha {s.sq_alpha:g})", "INT8 per-channel, SQ-smoothed",
               "INT8 per-tensor static, SQ-smoothed", "fake", force="lae_static",
               equalize=("smoothquant", s.sq_alpha), weight="int8pc", weight_quantizer="rtn", rotate="none", sequential=False),
        Method("w4a8_dynamic", "naive W4A8, all per-token dynamic", rtn, "INT8 per-token dynamic", "w4a8",
               force="dynamic", weight_quantizer="rtn", rotate="none", sequential=False),
        Method("w4a8_static", "naive W4A8, all per-tensor static", rtn, "INT8 per-tensor static", "w4a8",
               force="static", weight_quantizer="rtn", rotate="none", sequential=False),
        Method("fptq_paper", "FPTQ, the paper's configuration", _weights(s, "rtn", "int4_sym") + ", LAE-folded",
               f"paper bands v0={q.v0:g}, v1={q.v1:g}", "w4a8", weight_quantizer="rtn",
               weight_format="int4_sym", select="bands", rotate="none", sequential=False),
        Method("fptq_w4a8_fake", "FPTQ W4A8 (fake-quant)", mine, "FPTQ plan", "w4a8"),
        Method("fptq_w4a8_int", f"FPTQ W4A8 (integer, backend {s.backend})", mine, "FPTQ plan", "w4a8",
               mode="integer"),
        Method("fptq_a8_only", "FPTQ activations only (A8, float weights)", "float32, LAE-folded"
               + _rotation_words(q.rotate), "FPTQ plan", "fake", weight=None, act=True),
        Method("fptq_w4_only", "FPTQ weights only (W4, float activations)", mine, "float32", "fake",
               weight="int4", act=False),
    ]
    # one change from the settings each (an ablation of the default, or an improvement on top of it)
    for other in POLICY_SELECTIONS:
        if other != q.policy_select:
            alt_acts = _selection_words(other, s)
            rows.append(Method(f"fptq_w4a8_{other}", f"FPTQ W4A8, {alt_acts}", mine, f"FPTQ plan, {alt_acts}",
                               "w4a8", select=other, holdout=0.0 if other == "error_static" else None))
    for wq in QUANTIZER_WORDS:
        if wq != q.weight_quantizer:
            rows.append(Method(f"fptq_w4a8_{wq}", f"FPTQ W4A8, {QUANTIZER_WORDS[wq]} weights",
                               _weights(s, wq, q.weight_format, q.rotate) + ", LAE-folded", "FPTQ plan", "w4a8",
                               weight_quantizer=wq))
    fmt = next(f for f in FORMATS if f != q.weight_format)
    rows.append(Method(f"fptq_w4a8_{fmt}", f"FPTQ W4A8, {fmt} weights",
                       _weights(s, q.weight_quantizer, fmt, q.rotate) + ", LAE-folded", "FPTQ plan", "w4a8",
                       weight_format=fmt))
    for rot in ROTATIONS:
        if rot != q.rotate:
            rows.append(Method(f"fptq_w4a8_rotate_{rot}", "FPTQ W4A8, " + ROTATION_TITLES[rot],
                               _weights(s, q.weight_quantizer, q.weight_format, rot) + ", LAE-folded",
                               "FPTQ plan", "w4a8", rotate=rot))
    clip = "noclip" if q.gptq_clip else "clip"
    rows.append(Method(f"fptq_w4a8_{clip}", "FPTQ W4A8, GPTQ " + ("without" if q.gptq_clip else "with")
                       + " clip search", _weights(s, "gptq", q.weight_format, q.rotate, clip=not q.gptq_clip)
                       + ", LAE-folded", "FPTQ plan", "w4a8", weight_quantizer="gptq", gptq_clip=not q.gptq_clip))
    rows.append(Method("fptq_w4a8_dynamic", "FPTQ W4A8 weights, all per-token dynamic activations", mine.replace(
        ", LAE-folded", ""), "INT8 per-token dynamic everywhere", "w4a8", force="dynamic"))
    seq = "nosequential" if q.sequential else "sequential"
    rows.append(Method(f"fptq_w4a8_{seq}", "FPTQ W4A8, calibrated on the " + ("float" if q.sequential else "quantized")
                       + " model's layer inputs", mine, "FPTQ plan", "w4a8", sequential=not q.sequential))
    if q.group_size != 64:
        rows.append(Method("fptq_w4a8_g64", "FPTQ W4A8, G=64 (twice the scale storage)",
                           _weights(s, q.weight_quantizer, q.weight_format, q.rotate, group_size=64) + ", LAE-folded",
                           "FPTQ plan", "w4a8", group_size=64))
    for grp in ("qkv", "o", "gate_up", "down"):
        rows.append(Method(f"fptq_only_{grp}", f"FPTQ W4A8 on {grp} only (rest float)", mine + f" ({grp})",
                           f"FPTQ plan ({grp})", "w4a8", groups=(grp,)))
    return rows


METHODS = tuple(m.key for m in _methods(CompareSettings()))


def _fake_linear(m: Method, weight, linear, gp):
    """The fake-quant module of row ``m`` (float compute; ``weight``: float32 [N, K] tensor)."""
    from .models.fakequant import FakeQuantLinear

    return FakeQuantLinear(weight, linear.bias, gp.policy if m.act else None, gp.act_scale if m.act else None,
                           label=m.key)


def _make_linear_factory(m: Method, s: CompareSettings):
    """``f(linear, gp)`` for the rows built from the shared calibration."""
    import torch

    from . import reference as ref
    from .models.quantize import w4a8_factory

    qc = _quant_config(m, s)
    if m.kind == "w4a8":
        return w4a8_factory(qc, s.backend, m.mode)

    def make(linear, gp):
        w = linear.weight.detach().cpu().numpy().astype(np.float32)
        if m.weight == "int4":
            w = ref.fake_quant_weight(w, qc.group_size, qc.weight_format)
        elif m.weight == "int8pc":
            w = ref.fake_quant_weight_int8_per_channel(w)
        return _fake_linear(m, torch.from_numpy(w), linear, gp)
    return make


def _pipeline_factory(m: Method, s: CompareSettings):
    """``f(linear, gp, samples)`` for :func:`fptq.models.quantize.quantize_model` (None: its W4A8 layers)."""
    if m.kind == "w4a8":
        return None
    import torch

    from . import spec
    from .models.quantize import quantize_linear_weight

    qc = _quant_config(m, s)

    def make(linear, gp, samples=None):
        if m.weight == "int4":
            qw = quantize_linear_weight(linear, gp, qc, samples)
            w = torch.from_numpy(spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt))
        elif m.weight is None:
            w = linear.weight.detach()
        else:
            raise ValueError(f"{m.key}: weights {m.weight!r} are not made by the pipeline")
        return _fake_linear(m, w, linear, gp)
    return make


def _uses_pipeline(m: Method, s: CompareSettings) -> bool:
    """Rows whose weights need the layer's own calibration inputs (GPTQ), a rotated model or the
    quantized model's inputs (``sequential``): these run :func:`fptq.models.quantize.quantize_model`
    itself (own calibration, as ``fptq quantize``)."""
    qc = _quant_config(m, s)
    return m.kind != "float" and m.equalize == "lae" and (qc.weight_quantizer == "gptq" or qc.rotate != "none"
                                                          or qc.sequential)


def _plan_words(select: str, s: CompareSettings) -> str:
    q = s.quant
    if select == "bands":
        return f"the paper's bands (static below v0={q.v0:g}, LAE + static below v1={q.v1:g}, else per-token dynamic)"
    if select == "error_static":
        return (f"per-token dynamic from v1={q.v1:g}, below it static or LAE + static, whichever gives the smaller "
                f"output error on {q.keep_rows} calibration rows")
    return (f"per-token dynamic from v1={q.v1:g}, below it static, LAE + static or per-token dynamic, whichever "
            f"gives the smallest output error on {q.keep_rows} rows of held-out calibration samples "
            f"({q.holdout:g} of them; the candidates' scales from the others)")


def _select(m: Method, s: CompareSettings) -> str:
    return m.select or s.quant.policy_select


def _quant_config(m: Method, s: CompareSettings) -> QuantConfig:
    """The settings' QuantConfig with what method ``m`` changes."""
    q = s.quant
    return replace(q, weight_format=m.weight_format or q.weight_format,
                   weight_quantizer=m.weight_quantizer or q.weight_quantizer, policy_select=_select(m, s),
                   rotate=q.rotate if m.rotate is None else m.rotate, force_policy=m.force,
                   groups=tuple(m.groups), group_size=q.group_size if m.group_size is None else m.group_size,
                   gptq_clip=q.gptq_clip if m.gptq_clip is None else m.gptq_clip,
                   holdout=q.holdout if m.holdout is None else m.holdout,
                   sequential=q.sequential if m.sequential is None else m.sequential)


def build_variant(model, stats: dict, m: Method, s: CompareSettings, samples: dict | None = None, ids=None):
    """A copy of the float ``model`` quantized as method ``m``.

    Rows from the shared calibration (``stats``; ``samples``: calibration rows per linear input,
    for ``select="error"``) are built here; rows that need GPTQ or a rotation run
    :func:`fptq.models.quantize.quantize_model` on calibration tokens ``ids``. Every quantized row's
    plan measures its candidates with the INT4 weights the W4A8 row gets, so the attribution rows
    (A8 only, W4 only) have the W4A8 row's plan.

    Returns ``(model_copy, plan_groups)``."""
    from .models.arch import arch_of_model, find_decoder_layers
    from .models.plan import LayerRef
    from .models.quantize import apply_plan_layer, dequantized_weight_fn, plan_options, quantize_model

    if m.kind == "float":
        return copy.deepcopy(model), []
    qc = _quant_config(m, s)
    if _uses_pipeline(m, s):
        if ids is None:
            raise ValueError(f"method {m.key} runs the quantization pipeline: it needs the calibration ids")
        r = quantize_model(model, ids, qc, backend=s.backend, mode=m.mode, batch_size=s.batch_size,
                           progress=s.progress, make_linear=_pipeline_factory(m, s))
        return r.model, r.plan.groups
    model = copy.deepcopy(model)
    arch = arch_of_model(model)
    path, layers, _ = find_decoder_layers(model)
    make = _make_linear_factory(m, s)
    if samples is not None and not qc.holdout:
        from .models.calibrate import LayerSamples

        samples = LayerSamples(samples)  # the same rows without the held-out ones: judged on every sample
    options = plan_options(qc, equalize=m.equalize)
    weight_fn = dequantized_weight_fn(qc)
    groups = []
    for i, layer in enumerate(layers):
        lr = LayerRef(i, f"{path}.{i}", layer, arch, model.config)
        groups += apply_plan_layer(lr, stats, make, options, samples=samples, weight_fn=weight_fn)
    return model, groups


class _Variants:
    """Builds each row's model; two rows that differ only in compute mode (``fptq_w4a8_fake`` /
    ``fptq_w4a8_int``) share one quantization (the model is switched, not rebuilt)."""

    def __init__(self, model, stats, s: CompareSettings, samples, ids):
        """``stats``: the shared calibration statistics, or a function that makes them (called once,
        when the first row that needs them comes)."""
        self.model, self.stats, self.s, self.samples, self.ids = model, stats, s, samples, ids
        self.last = None  # (key, model, groups)

    def _stats(self, m: Method):
        if callable(self.stats) and m.kind != "float" and not _uses_pipeline(m, self.s):
            self.stats = self.stats()
        return None if callable(self.stats) else self.stats

    def _key(self, m: Method):
        if m.kind != "w4a8":
            return None
        return json.dumps(_quant_config(m, self.s).to_json(), sort_keys=True) + repr(m.equalize)

    def get(self, m: Method):
        from .models.qlinear import set_quantized_mode

        key = self._key(m)
        if key is not None and self.last is not None and self.last[0] == key:
            set_quantized_mode(self.last[1], m.mode, self.s.backend)
            return self.last[1], self.last[2]
        self.last = None
        qm, groups = build_variant(self.model, self._stats(m), m, self.s, self.samples, self.ids)
        if key is not None:
            self.last = (key, qm, groups)
        return qm, groups


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
            vs = " / ".join(f"{x:+.1f}%" for x in rel) or "-"
        else:
            vs = "-"
        tcells = "".join((f"{100 * _task_value(t, r['tasks'][t]):.1f} | " if t in r.get("tasks", {}) else "- | ")
                         for t in tasks)
        note = f" ({r['n_windows']} windows)" if r.get("n_windows_note") else ""
        lines.append(f"| {r['label']}{note} | {r['weights']} | {r['acts']} | {cells} | {vs} | {tcells}"
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def read_peer_rows(path, texts, max_windows: int, seq_len: int) -> list[dict]:
    """The rows of a peers JSON (``benchmarks/peers/run_peers.py``), checked to be on the same windows.

    A peer row has ``key``, ``label``, ``weights``, ``acts``, ``n_windows`` and either ``ppl`` (per
    text) or ``error`` (a configuration that failed, kept as a row that says so)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        rows = data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--peers {path}: not a peers result file ({type(e).__name__}: {e})") from e
    theirs = data.get("eval_seq_len", data.get("seq_len", seq_len))
    if theirs != seq_len:
        raise ValueError(f"--peers {path}: windows of {theirs} tokens, this table uses {seq_len}")
    out = []
    for r in rows:
        if not isinstance(r, dict) or not {"key", "label"} <= r.keys():
            raise ValueError(f"--peers {path}: a row without key/label: {r!r:.200}")
        if r["key"] == "fp32":  # the peers script's own sanity anchor; the table has fptq's
            continue
        r = {k: v for k, v in r.items() if v is not None}  # a key set to null is a key not given
        if "error" not in r:
            missing = [t for t in texts if t not in r.get("ppl", {})]
            if missing or r.get("n_windows") != max_windows:
                raise ValueError(f"--peers {path}: row {r['key']} has texts {sorted(r.get('ppl', {}))} on "
                                 f"{r.get('n_windows')} windows; this table needs {list(texts)} on {max_windows}")
        row = {"weights": "", "acts": "", "ppl": {}, "seconds": 0.0, **r, "peer": True, "fake_quant": None}
        row["label"] = (f"peer: {r['label']}" + (f" [{r['how']}]" if r.get("how") else "")
                        + (f" (fails: {r['error']})" if "error" in r else ""))
        out.append(row)
    return out


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
    from .models.calibrate import LayerSamples, calibrate
    from .models.loading import DEFAULT_MODEL_NAME, load_float_model

    methods = _methods(s)
    if s.methods:
        unknown = set(s.methods) - {m.key for m in methods}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(m.key for m in methods)}")
        by_key = {m.key: m for m in methods}
        methods = [by_key[k] for k in dict.fromkeys(s.methods)]  # in the order asked for
    peer_rows = read_peer_rows(s.peers, s.ppl, s.max_windows, s.eval_seq_len) if s.peers else []
    unknown_tasks = set(s.tasks) - set(TASKS)
    if unknown_tasks:
        raise ValueError(f"unknown tasks {sorted(unknown_tasks)}; choose from {', '.join(TASKS)}")
    model, tok, src = load_float_model(s.model, progress=s.progress)
    tokens = {t: eval_tokens(tok, t) for t in s.ppl}
    bos = bos_token_id(tok)  # the tokenizer's BOS, as fptq eval and calibration use (None: no BOS)
    q = s.quant
    ids = calibration_ids(tok, q.calib, q.n_samples, q.seq_len, q.seed, vocab_size=model.config.vocab_size)
    samples = None
    on_layer = None
    shared = [m for m in methods if m.kind != "float" and not _uses_pipeline(m, s)]
    if any(m.force is None and _select(m, s) != "bands" for m in shared):
        samples = LayerSamples()

        arch = arch_of_model(model)
        firsts = [arch.group_linears(g)[0] for g in LINEAR_GROUPS]

        def on_layer(i, prefix, layer, layer_stats, layer_samples):
            # one row sample per input-sharing group (the plan reads its first linear's)
            for rel in firsts:
                name = f"{prefix}.{rel}"
                samples[name] = layer_samples[name]
                if name in layer_samples.heldout:
                    samples.heldout[name] = layer_samples.heldout[name]
            samples.fit_max.update(layer_samples.fit_max)

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
        print(f"calibrated on {q.calib} {q.n_samples} x {q.seq_len} in {t_cal:.0f} s", flush=True)
        return st

    rows, plan_json = [], None
    variants = _Variants(model, shared_stats, s, samples, ids)
    for m in methods:
        t1 = time.time()
        qm, groups = variants.get(m)
        if m.key == "fptq_w4a8_fake":
            plan_json = [g.to_json() for g in groups]
        windows = s.int_max_windows if (m.mode == "integer" and s.int_max_windows) else s.max_windows
        with torch.no_grad():
            res = _eval_ppl(qm, tokens, s.eval_seq_len, windows, s.progress, bos)
            task_res = {t: evaluate_task(qm, tok, t, limit=s.limit, progress=s.progress) for t in s.tasks}
        qm = None
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
        m = next(x for x in _methods(s) if x.key == "fptq_w4a8_fake")
        qm, _ = variants.get(m)
        with torch.no_grad():
            res = _eval_ppl(qm, tokens, s.eval_seq_len, s.int_max_windows, s.progress, bos)
        rows.append({"key": "fptq_w4a8_fake_int_windows", "label": "FPTQ W4A8 (fake-quant)",
                     "weights": m.weights, "acts": m.acts, "fake_quant": True,
                     "ppl": {t: float(r["ppl"]) for t, r in res.items()},
                     "nll": {t: float(r["nll"]) for t, r in res.items()},
                     "n_tokens": {t: int(r["n_tokens"]) for t, r in res.items()},
                     "n_windows": s.int_max_windows, "n_windows_note": True, "seconds": 0.0})
    rows += peer_rows
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
              "lm_head and embeddings float in every row.\n")
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
