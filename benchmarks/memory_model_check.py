"""Measure the memory model's constants and check its prediction on a small streamed run (docs/scale.md).

    python benchmarks/memory_model_check.py coefficients     # ~1-2 min: baseline, BLAS, GPTQ and Hessian peaks
    python benchmarks/memory_model_check.py validate --hidden 1024 --mlp 4096 --layers 2 --samples 32 --seq-len 256
    python benchmarks/memory_model_check.py validate --hidden 512 --mlp 2048 --layers 1 --samples 16 --batch-size 16 \
        --tune-layers 2                                      # ~1 min: layer-wise scale tuning's step
    python benchmarks/memory_model_check.py projections      # the projection table of docs/scale.md

``coefficients`` runs each measurement in a fresh process and prints it beside what
``fptq.models.memory`` assumes (BASELINE_BYTES, BLAS_BYTES, GPTQ_*, HESS_*): rerun it after a change to
``fptq.reference.gptq`` and update the constants. ``validate`` writes a random LLaMA-shaped bf16 model to a
temporary directory, quantizes it with ``fptq.models.stream.quantize_streamed`` (no writer) in a child
process and compares its peak RSS (VmHWM) with the largest step of the estimate without the writer's
components. Both print a table and write JSON (``--out``). Memory, not time: a loaded machine is fine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STATUS = '''
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
'''

_BASELINE = '''
import torch
import fptq.cli, fptq.data.calibration, fptq.eval.health, fptq.models.checkpoint, fptq.models.loading
import fptq.models.quantize, fptq.report, fptq.backends.numba_backend, numba
from fptq.testing import tiny_model
with torch.no_grad():
    tiny_model("llama")(torch.zeros(1, 16, dtype=torch.long))
print(status("VmHWM"))
'''

_BLAS = '''
import numpy as np, torch, fptq.models.quantize
before = status("VmRSS")
a = np.ones((512, 512)); a @ a; np.linalg.cholesky(a @ a.T + np.eye(512)); np.linalg.inv(a + 600 * np.eye(512))
a.astype(np.float32) @ a.astype(np.float32)
print(status("VmRSS") - before)
'''

_GPTQ = '''
import numpy as np, sys
from fptq.reference.gptq import gptq_quantize, equalized_hessian
k, n, r, what = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
a = np.ones((512, 512)); a @ a; np.linalg.cholesky(a @ a.T + np.eye(512)); np.linalg.inv(a + 600 * np.eye(512))
rng = np.random.default_rng(0)
x = rng.standard_normal((r, k), dtype=np.float32)
w = rng.standard_normal((n, k), dtype=np.float32)
s = (rng.random(k) + 0.5).astype(np.float32)
if what == "gptq":
    H = equalized_hessian(x, s)
    del x
base = status("VmRSS"); reset_peak()
if what == "gptq":
    gptq_quantize(w, H, 128, "uint4_asym", clip=True)
else:
    equalized_hessian(x, s)
print(status("VmHWM") - base)
'''


def _child(code: str, *args) -> int:
    out = subprocess.run([sys.executable, "-c", _STATUS + code, *map(str, args)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def coefficients() -> dict:
    """Each constant of the memory model measured in a fresh process, beside the model's value."""
    from fptq.models import memory as M

    rows = [("baseline", _child(_BASELINE), M.BASELINE_BYTES), ("blas", _child(_BLAS), M.BLAS_BYTES)]
    for k, n in ((2048, 64), (2048, 2048), (3072, 256), (1024, 4096)):
        model = 8 * max(M.GPTQ_INV_KK * k * k + M.GPTQ_INV_NK * n * k, M.GPTQ_FB_KK * k * k + M.GPTQ_FB_NK * n * k)
        rows.append((f"gptq K={k} N={n}", _child(_GPTQ, k, n, 1, "gptq"), int(model)))
    for k, r in ((2048, 8192), (1024, 8192)):
        rows.append((f"hessian K={k} R={r}", _child(_GPTQ, k, 1, r, "hessian"),
                     int(8 * (M.HESS_RK * r * k + M.HESS_KK * k * k))))
    print(f"{'measurement':<24} {'measured MB':>12} {'model MB':>10} {'model/measured':>15}")
    for name, got, model in rows:
        print(f"{name:<24} {got / 1e6:12.1f} {model / 1e6:10.1f} {model / got:15.3f}")
    return {name: {"measured_bytes": got, "model_bytes": model} for name, got, model in rows}


_MAKE = '''
import sys, torch, transformers
d, h, f, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = transformers.LlamaConfig(hidden_size=h, intermediate_size=f, num_hidden_layers=layers,
                               num_attention_heads=h // 64, num_key_value_heads=max(1, h // 256), vocab_size=8192,
                               tie_word_embeddings=False, max_position_embeddings=4096)
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
print(0)
'''

_RUN = '''
import sys, torch
from fptq.models.config import QuantConfig
from fptq.models.sources import open_source
from fptq.models.stream import open_streamed, quantize_streamed
d, n, L, B, tune = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with open_source(d) as src:
    model = open_streamed(src)
    ids = torch.randint(0, 8192, (n, L), generator=torch.Generator().manual_seed(0))
    quantize_streamed(model, src, ids, QuantConfig(n_samples=n, seq_len=L, tune_layers_steps=tune), None,
                      batch_size=B, progress=False)
print(status("VmHWM"))
'''

#: components a run without a checkpoint writer, tokenizer or calibration text does not have
WRITER_PARTS = ("shard_buffer", "shard_flush", "write_buffer", "nonlayer_stored", "tokenizer", "calibration_text")


def validate(a) -> dict:
    """Quantize a random bf16 LLaMA of the given shape streamed (no writer); measured peak vs predicted."""
    from fptq.models import memory as M
    from fptq.models.config import QuantConfig

    with tempfile.TemporaryDirectory() as tmp:
        _child(_MAKE, tmp, a.hidden, a.mlp, a.layers)
        cfg = json.loads((Path(tmp) / "config.json").read_text())
        measured = _child(_RUN, tmp, a.samples, a.seq_len, a.batch_size, a.tune_layers)
    est = M.estimate(cfg, n_samples=a.samples, seq_len=a.seq_len, batch_size=a.batch_size, source_dtype_bytes=2,
                     quant=QuantConfig(tune_layers_steps=a.tune_layers))
    steps = {s: sum(b for c, b in est.components.items() if c in M.STEPS[s] and c not in WRITER_PARTS)
             for s in est.steps}
    step = max(steps, key=steps.get)
    print(f"measured peak {measured / 1e9:.3f} GB, predicted {steps[step] / 1e9:.3f} GB ('{step}', no writer): "
          f"{100 * (steps[step] / measured - 1):+.1f}%")
    return {"config": cfg, "args": vars(a), "measured_peak_bytes": measured, "predicted_bytes": steps[step],
            "predicted_step": step, "error": steps[step] / measured - 1}


#: the shapes of docs/scale.md's projection table: (name, config, source bytes, samples)
SHAPES = [
    ("SmolLM2-135M", {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                      "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                      "tie_word_embeddings": True}, 4, 128),
    ("Qwen2.5-1.5B (GGUF, float32 tensors)", {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                                               "num_hidden_layers": 28, "num_attention_heads": 12,
                                               "num_key_value_heads": 2, "vocab_size": 151936,
                                               "tie_word_embeddings": False}, 4, 128),
    ("8B shape, bf16", {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                        "tie_word_embeddings": False}, 2, 16),
    ("8B shape, bf16", None, 2, 128),
    ("70B (LLaMA-2 shape), bf16", "70b", 2, 128),
]


def projections() -> list[str]:
    """docs/scale.md's projection table (markdown rows), default calibration, CPU; the 70B on one GPU too."""
    from fptq.models import memory as M

    rows, last = [], None
    for name, cfg, sb, n in SHAPES:
        cfg = M.LLAMA2_70B if cfg == "70b" else (cfg or last)
        last = cfg
        for device in ("cpu", "cuda") if cfg is M.LLAMA2_70B else ("cpu",):
            e = M.estimate(cfg, n_samples=n, seq_len=512, batch_size=8, source_dtype_bytes=sb, device=device)
            ph, gib = e.phases, lambda b: f"{b / 2**30:.2f}"  # noqa: E731
            gpu = gib(e.device_peak_bytes) + f" ({max(e.device_steps, key=e.device_steps.get)[7:]})" \
                if device == "cuda" else "-"
            rows.append(f"| {name} | {n} x 512 | {'one 80 GB GPU' if device == 'cuda' else 'cpu'} | "
                        f"{gib(ph['capture'])} | {gib(ph['per-layer quantization'])} | {gib(ph['final write'])} | "
                        f"**{gib(e.peak_bytes)}** ({e.peak_step.replace('layer: ', '')}) | {gpu} | "
                        + ", ".join(f"{c} {gib(b)}" for c, b in e.biggest(count=3)) + " |")
    print("\n".join(rows))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("coefficients").add_argument("--out", type=Path)
    sub.add_parser("projections").add_argument("--out", type=Path)
    v = sub.add_parser("validate")
    for name, default in (("hidden", 1024), ("mlp", 4096), ("layers", 2), ("samples", 32), ("seq-len", 256),
                          ("batch-size", 8), ("tune-layers", 0)):
        v.add_argument(f"--{name}", type=int, default=default)
    v.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    result = {"coefficients": coefficients, "projections": projections}.get(a.cmd, lambda: validate(a))()
    if a.out:
        a.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
