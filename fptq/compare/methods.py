"""The rows of ``fptq compare``: what each changes from the settings, and how the table names it.

Every row is a :class:`Method`; :func:`quant_config_of` turns it into the one
:class:`~fptq.models.config.QuantConfig` it runs. The weight quantizers, their
words and their switches come from the registry
(:data:`fptq.reference.WEIGHT_QUANTIZERS`): a new quantizer gets its
``fptq_w4a8_<name>`` row without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..defaults import CALIB_BATCH_SIZE, COMPARE_MAX_WINDOWS, EVAL_SEQ_LEN, EVAL_TEXTS, default_backend
from ..models.arch import LINEAR_GROUPS
from ..models.config import POLICY_SELECTIONS, ROTATIONS, QuantConfig
from ..reference.plan import SELECTION_TABLE
from ..reference.quantizer_registry import WEIGHT_QUANTIZERS, weight_quantizer
from ..spec import WeightFormat

__all__ = ["CompareSettings", "Method", "METHODS", "methods_of", "quant_config_of", "uses_pipeline", "plan_words",
           "selection_of"]


@dataclass
class CompareSettings:
    """What ``fptq compare`` runs: the quantization settings every method starts from
    (``quant``, the one :class:`~fptq.models.config.QuantConfig`; each method changes only
    what it names), and how the methods are evaluated."""

    model: str | None = None
    quant: QuantConfig = field(default_factory=QuantConfig)
    ppl: tuple = EVAL_TEXTS
    tasks: tuple = ()
    limit: int | None = None
    max_windows: int = COMPARE_MAX_WINDOWS
    eval_seq_len: int = EVAL_SEQ_LEN
    batch_size: int = CALIB_BATCH_SIZE
    backend: str = field(default_factory=default_backend)  # the integer row's; its label names it
    methods: tuple | None = None
    int_max_windows: int | None = None
    sq_alpha: float = 0.5
    peers: str | None = None  # JSON of benchmarks/peers/run_peers.py: its rows join the table
    progress: bool = True


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
    groups: tuple = LINEAR_GROUPS
    mode: str = "fake_quant"
    weight_quantizer: str | None = None  # None: the settings' quantizer
    weight_format: str | None = None     # None: the settings' format
    select: str | None = None            # policy selection; None: the settings' policy_select
    rotate: str | None = None            # None: the settings' rotation (QuantConfig.rotate)
    group_size: int | None = None        # None: the settings' group size
    options: tuple = ()                  # (QuantConfig field, value) pairs, e.g. a quantizer's toggle
    holdout: float | None = None         # None: the settings' held-out fraction
    sequential: bool | None = None       # None: the settings' calibration inputs


FORMATS = tuple(f.value for f in WeightFormat)
#: how the table names each rotation (QuantConfig.rotate)
ROTATION_TITLES = {"online": "norm outputs rotated online", "residual": "residual stream rotated (QuaRot)",
                   "none": "no rotation"}


def weight_words(s: CompareSettings, quantizer: str, fmt: str, rotate: str = "none", group_size: int | None = None,
                 options: tuple = ()) -> str:
    """``INT4 <fmt> G=<g> <the quantizer's words>[ + <its toggle's words>]<rotation>``."""
    q = replace(s.quant, **dict(options))
    gs = q.group_size if group_size is None else group_size
    g = f"G={gs}" if gs != -1 else "per-channel"
    e = weight_quantizer(quantizer)
    on = e.toggle is not None and getattr(q, e.toggle[0])
    return f"INT4 {fmt} {g} {e.words}" + (f" + {e.toggle[2]}" if on else "") + rotation_words(rotate)


def rotation_words(rotate: str) -> str:
    return {"none": "", "online": ", norm outputs rotated online", "residual": ", residual stream rotated"}[rotate]


def _selection_words(select: str, s: CompareSettings) -> str:
    return SELECTION_TABLE[select].label.format(v0=s.quant.v0, v1=s.quant.v1)


def _baseline_rows(s: CompareSettings) -> list[Method]:
    q = s.quant
    rtn = weight_words(s, "rtn", q.weight_format)
    no_clip = (("gptq_clip", False),)
    return [
        Method("fp32", "FP32", "float32", "float32", "float"),
        Method("rtn_w4a16", "RTN W4A16", rtn, "float32", "fake", force="dynamic", weight="int4", act=False,
               weight_quantizer="rtn", rotate="none", sequential=False),
        Method("gptq_w4a16", "GPTQ W4A16", weight_words(s, "gptq", q.weight_format, options=no_clip), "float32",
               "fake", force="dynamic", weight="int4", act=False, weight_quantizer="gptq", rotate="none",
               options=no_clip, sequential=False),
        Method("smoothquant_w8a8", f"SmoothQuant W8A8 (alpha {s.sq_alpha:g})", "INT8 per-channel, SQ-smoothed",
               "INT8 per-tensor static, SQ-smoothed", "fake", force="lae_static",
               equalize=("smoothquant", s.sq_alpha), weight="int8pc", weight_quantizer="rtn", rotate="none",
               sequential=False),
        Method("w4a8_dynamic", "naive W4A8, all per-token dynamic", rtn, "INT8 per-token dynamic", "w4a8",
               force="dynamic", weight_quantizer="rtn", rotate="none", sequential=False),
        Method("w4a8_static", "naive W4A8, all per-tensor static", rtn, "INT8 per-tensor static", "w4a8",
               force="static", weight_quantizer="rtn", rotate="none", sequential=False),
        Method("fptq_paper", "FPTQ, the paper's configuration",
               weight_words(s, "rtn", "int4_sym") + ", LAE-folded", f"paper bands v0={q.v0:g}, v1={q.v1:g}",
               "w4a8", weight_quantizer="rtn", weight_format="int4_sym", select="bands", rotate="none",
               sequential=False),
    ]


def _settings_rows(s: CompareSettings, mine: str) -> list[Method]:
    q = s.quant
    return [
        Method("fptq_w4a8_fake", "FPTQ W4A8 (fake-quant)", mine, "FPTQ plan", "w4a8"),
        Method("fptq_w4a8_int", f"FPTQ W4A8 (integer, backend {s.backend})", mine, "FPTQ plan", "w4a8",
               mode="integer"),
        Method("fptq_a8_only", "FPTQ activations only (A8, float weights)", "float32, LAE-folded"
               + rotation_words(q.rotate), "FPTQ plan", "fake", weight=None, act=True),
        Method("fptq_w4_only", "FPTQ weights only (W4, float activations)", mine, "float32", "fake",
               weight="int4", act=False),
    ]


def _selection_rows(s: CompareSettings, mine: str) -> list[Method]:
    q = s.quant
    return [Method(f"fptq_w4a8_{o}", f"FPTQ W4A8, {_selection_words(o, s)}", mine,
                   f"FPTQ plan, {_selection_words(o, s)}", "w4a8", select=o,
                   holdout=0.0 if o == "error_static" else None)
            for o in POLICY_SELECTIONS if o != q.policy_select]


def _weight_change_rows(s: CompareSettings) -> list[Method]:
    """Another quantizer (each registry entry), the other format."""
    q = s.quant
    rows = [Method(f"fptq_w4a8_{name}", f"FPTQ W4A8, {e.words} weights",
                   weight_words(s, name, q.weight_format, q.rotate) + ", LAE-folded", "FPTQ plan", "w4a8",
                   weight_quantizer=name)
            for name, e in WEIGHT_QUANTIZERS.items() if name != q.weight_quantizer]
    fmt = next(f for f in FORMATS if f != q.weight_format)
    rows.append(Method(f"fptq_w4a8_{fmt}", f"FPTQ W4A8, {fmt} weights",
                       weight_words(s, q.weight_quantizer, fmt, q.rotate) + ", LAE-folded", "FPTQ plan", "w4a8",
                       weight_format=fmt))
    return rows


def _rotation_rows(s: CompareSettings) -> list[Method]:
    q = s.quant
    return [Method(f"fptq_w4a8_rotate_{rot}", "FPTQ W4A8, " + ROTATION_TITLES[rot],
                   weight_words(s, q.weight_quantizer, q.weight_format, rot) + ", LAE-folded", "FPTQ plan", "w4a8",
                   rotate=rot) for rot in ROTATIONS if rot != q.rotate]


def _toggle_rows(s: CompareSettings) -> list[Method]:
    """Each registry entry's switch (``toggle``) the other way: ``fptq_w4a8_[no]<key>``."""
    q = s.quant
    rows = []
    for name, e in WEIGHT_QUANTIZERS.items():
        if e.toggle is not None:
            opt, key, words = e.toggle
            on, flip = getattr(q, opt), ((opt, not getattr(q, opt)),)
            rows.append(Method(f"fptq_w4a8_{'no' if on else ''}{key}",
                               f"FPTQ W4A8, {e.words} {'without' if on else 'with'} {words}",
                               weight_words(s, name, q.weight_format, q.rotate, options=flip) + ", LAE-folded",
                               "FPTQ plan", "w4a8", weight_quantizer=name, options=flip))
    return rows


def _ablation_rows(s: CompareSettings, mine: str) -> list[Method]:
    q = s.quant
    rows = [Method("fptq_w4a8_dynamic", "FPTQ W4A8 weights, all per-token dynamic activations",
                   mine.replace(", LAE-folded", ""), "INT8 per-token dynamic everywhere", "w4a8", force="dynamic")]
    seq = "nosequential" if q.sequential else "sequential"
    rows.append(Method(f"fptq_w4a8_{seq}", "FPTQ W4A8, calibrated on the " + ("float" if q.sequential else "quantized")
                       + " model's layer inputs", mine, "FPTQ plan", "w4a8", sequential=not q.sequential))
    if q.group_size != 64:
        rows.append(Method("fptq_w4a8_g64", "FPTQ W4A8, G=64 (twice the scale storage)",
                           weight_words(s, q.weight_quantizer, q.weight_format, q.rotate, group_size=64)
                           + ", LAE-folded", "FPTQ plan", "w4a8", group_size=64))
    rows += [Method(f"fptq_only_{grp}", f"FPTQ W4A8 on {grp} only (rest float)", mine + f" ({grp})",
                    f"FPTQ plan ({grp})", "w4a8", groups=(grp,)) for grp in LINEAR_GROUPS]
    return rows


def methods_of(s: CompareSettings) -> list[Method]:
    """Every row for settings ``s``: the baselines, the settings' own rows, one change from the
    settings each (an ablation of the default, or an improvement on top of it), the per-group rows."""
    q = s.quant
    mine = weight_words(s, q.weight_quantizer, q.weight_format, q.rotate) + ", LAE-folded"
    return (_baseline_rows(s) + _settings_rows(s, mine) + _selection_rows(s, mine) + _weight_change_rows(s)
            + _rotation_rows(s) + _toggle_rows(s) + _ablation_rows(s, mine))


METHODS = tuple(m.key for m in methods_of(CompareSettings()))


def selection_of(m: Method, s: CompareSettings) -> str:
    return m.select or s.quant.policy_select


def quant_config_of(m: Method, s: CompareSettings) -> QuantConfig:
    """The settings' QuantConfig with what method ``m`` changes."""
    q = s.quant
    return replace(q, weight_format=m.weight_format or q.weight_format,
                   weight_quantizer=m.weight_quantizer or q.weight_quantizer, policy_select=selection_of(m, s),
                   rotate=q.rotate if m.rotate is None else m.rotate, force_policy=m.force,
                   groups=tuple(m.groups), group_size=q.group_size if m.group_size is None else m.group_size,
                   holdout=q.holdout if m.holdout is None else m.holdout,
                   sequential=q.sequential if m.sequential is None else m.sequential, **dict(m.options))


def uses_pipeline(m: Method, s: CompareSettings) -> bool:
    """Rows whose weights need the layer's own calibration rows (a registry entry with a ``rows_option``:
    GPTQ's Hessian, a scale search), a rotated model or the quantized model's inputs (``sequential``):
    these run :func:`fptq.models.quantize.quantize_model` itself (own calibration, as ``fptq quantize``)."""
    qc = quant_config_of(m, s)
    needs_rows = weight_quantizer(qc.weight_quantizer).rows_option is not None
    return m.kind != "float" and m.equalize == "lae" and (needs_rows or qc.rotate != "none" or qc.sequential)


def plan_words(select: str, s: CompareSettings) -> str:
    q = s.quant
    return SELECTION_TABLE[select].rule.format(v0=q.v0, v1=q.v1, keep_rows=q.keep_rows, holdout=q.holdout)
