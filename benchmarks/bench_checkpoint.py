"""What verifying a checkpoint costs: SHA-256 of every tensor vs the whole ``load_quantized``.

For ``--repeats`` rounds: the tensor digests alone (read-only memory map, page
cache warm after the first round), then a full ``load_quantized`` (header
checks, every digest, config, the meta-device shape check, values, the model
build, the tokenizer). Prints medians and the digests' share of the load,
and writes JSON.

    python benchmarks/bench_checkpoint.py CKPT --out bench_checkpoint.json

A version-1 checkpoint has no digests: load it and save it again with fptq
to get a version-2 copy (``docs/checkpoint.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)

    from pathlib import Path

    from fptq.models import checkpoint as C
    from fptq.models.checkpoint_read import open_checkpoint, verify_tensor_digests
    from fptq.models.checkpoint_shards import open_shards

    size = sum(f.stat().st_size for f in Path(a.checkpoint).iterdir() if f.suffix == ".safetensors")
    digests, loads = [], []
    for _ in range(a.repeats):
        tf, meta = open_checkpoint(a.checkpoint)
        if "digests" not in meta:
            tf.close()
            raise SystemExit(f"{a.checkpoint}: a version-1 checkpoint has no digests to time")
        with open_shards(tf, a.checkpoint, meta) as tf:   # opening verifies each shard file's digest too
            t = time.perf_counter()
            verify_tensor_digests(tf, meta)
            digests.append(time.perf_counter() - t)
        t = time.perf_counter()
        C.load_quantized(a.checkpoint, backend=a.backend)
        loads.append(time.perf_counter() - t)
    md, ml = statistics.median(digests), statistics.median(loads)
    res = {"checkpoint": a.checkpoint, "tensor_bytes": size, "repeats": a.repeats,
           "digest_seconds_median": md, "digest_gb_per_s": size / md / 1e9,
           "load_seconds_median": ml, "load_seconds_min": min(loads), "digest_share_of_load": md / ml,
           "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "machine": platform.processor(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    print("| tensors | digests (median) | throughput | load_quantized (median / min) | digest share |")
    print("|---|---|---|---|---|")
    print(f"| {size / 1e6:.1f} MB | {md:.3f} s | {res['digest_gb_per_s']:.2f} GB/s | {ml:.2f} s / {min(loads):.2f} s "
          f"| {100 * md / ml:.0f}% |")
    print(f"(load average {res['load_average_1min']:.1f} on {res['cpus']} CPUs)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
