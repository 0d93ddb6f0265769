"""Peak RSS of a streamed run's final write outside the layers, alone on a model's real files (docs/scale.md).

    python benchmarks/final_write_peak.py /work/models/synthetic-llama3-8b-bf16 --name llama3-8b-shape

Builds the skeleton of MODEL (``fptq.models.stream.open_streamed``; no layer is read), reads the small modules
outside the layers (the final norm), then runs the checkpoint writer's own step for each group of
``stream.DeferredModules`` (the embeddings, ``lm_head``: read float32, converted to the stored dtype, digested,
spilled to a file, released) in a temporary directory, and prints each group's peak RSS above the process
before it (VmHWM after resetting it through ``/proc/self/clear_refs``) beside the memory model's ``write``
and ``write: read`` steps minus the process. Writes JSON (``--out``, default
``benchmarks/results/final_write_peak_<name>.json``). Memory, not time: a loaded machine is fine. Linux only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a safetensors directory or a .gguf file")
    p.add_argument("--name", required=True, help="the model's name in the JSON file name")
    p.add_argument("--float-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fptq.models import memory
    from fptq.models.layer_pass import release_freed_memory
    from fptq.models.checkpoint_write import CheckpointWriter
    from fptq.models.skeleton import materialize
    from fptq.models.sources import open_source
    from fptq.models.arch import find_decoder_layers
    from fptq.models.stream import DeferredModules, open_streamed, outside_layer_paths
    from fptq.models.trace import read_status

    rows = []
    with open_source(a.model) as src, tempfile.TemporaryDirectory() as d:
        model = open_streamed(src)
        outside = outside_layer_paths(model)
        deferred = DeferredModules(model, src, outside)
        materialize(model, [q for q in outside if not deferred.holds(q)], src)
        writer = CheckpointWriter(d, float_dtype=a.float_dtype, int8_embeddings=False, shard_bytes=1 << 27)
        writer.defer(deferred)
        layers = (find_decoder_layers(model)[0],)
        for group in deferred.groups:
            release_freed_memory()
            base = read_status()["VmRSS"]
            _reset_peak()
            writer._store_deferred(model, group, skip=layers)
            rows.append({"group": list(group), "peak_above_process_bytes": read_status()["VmHWM"] - base})
        name = next(n for n in src.names() if n.endswith("embed_tokens.weight"))
        est = memory.estimate(src.config_dict(), n_samples=1, seq_len=1, batch_size=1, quant=None,
                              source_dtype_bytes=src.dtype(name).itemsize,
                              float_dtype_bytes={"bfloat16": 2, "float16": 2, "float32": 4}[a.float_dtype])
    c = est.components
    model_bytes = max(c.get("embeddings_read", 0), c.get("nonlayer_stored", 0)) + c["embeddings_f32"]
    print(f"{'group':<32} {'peak above the process GiB':>28}")
    for r in rows:
        print(f"{', '.join(r['group']):<32} {r['peak_above_process_bytes'] / 2**30:>28.3f}")
    print(f"memory model (write step minus the process): {model_bytes / 2**30:.3f} GiB")
    out = a.out or ROOT / "benchmarks" / "results" / f"final_write_peak_{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": a.model, "float_dtype": a.float_dtype, "groups": rows,
                               "model_bytes": model_bytes}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
