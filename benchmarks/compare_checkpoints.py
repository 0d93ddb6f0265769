"""How two fptq checkpoints of the same model differ, tensor kind by tensor kind.

    python benchmarks/compare_checkpoints.py A B [--json OUT.json]

For every tensor both hold (sharded or single-file, digests verified on open): INT4 codes (``qweight``:
two per byte) counted code by code, everything else element by element (float tensors compared by their
bits), and for float tensors the largest relative difference. Prints one row per tensor kind (the name's
last part: ``qweight``, ``wscale``, ``weight``...) and the SHA-256 verdict of the whole set; ``--json``
writes the rows. What it is for: the CPU and ``--device cuda`` paths of the same run (``docs/scale.md``),
or a change that should keep the bits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fptq.models.checkpoint_read import open_checkpoint  # noqa: E402
from fptq.models.checkpoint_shards import open_shards  # noqa: E402

PACKED_KINDS = ("qweight",)


def _open(path):
    tf, meta = open_checkpoint(path)
    return open_shards(tf, path, meta)


def _differ(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[int, int, float]:
    """(elements, differing, largest relative difference of float values; 0 for integers)."""
    if kind in PACKED_KINDS and x.dtype == np.uint8:
        d = int(((x & 15) != (y & 15)).sum() + ((x >> 4) != (y >> 4)).sum())
        return 2 * x.size, d, 0.0
    if x.dtype.kind == "f" or x.dtype.name in ("bfloat16",):
        xf, yf = x.astype(np.float64), y.astype(np.float64)
        bits = x.view(np.uint8).reshape(x.size, -1) != y.view(np.uint8).reshape(y.size, -1)
        rel = np.abs(xf - yf) / np.maximum(np.abs(xf), np.finfo(np.float32).tiny)
        return x.size, int(bits.any(axis=1).sum()), float(rel.max(initial=0.0))
    return x.size, int((x != y).sum()), 0.0


def compare(a, b) -> dict:
    """Rows by tensor kind: tensors, elements, differing, largest relative difference; and the names only one has."""
    rows: dict = {}
    with _open(a) as ta, _open(b) as tb:
        only = sorted(set(ta.names) ^ set(tb.names))
        for name in sorted(set(ta.names) & set(tb.names)):
            kind = name.rsplit(".", 1)[-1]
            r = rows.setdefault(kind, {"tensors": 0, "elements": 0, "differ": 0, "max_rel": 0.0, "same_sha": 0})
            r["tensors"] += 1
            if ta.sha256(name) == tb.sha256(name):
                r["same_sha"] += 1
                n = int(np.prod(ta.shape(name))) * (2 if kind in PACKED_KINDS else 1)
                r["elements"] += n
                continue
            x, y = ta.numpy(name), tb.numpy(name)
            if x.shape != y.shape:
                raise SystemExit(f"{name}: shapes differ {x.shape} vs {y.shape}")
            n, d, rel = _differ(kind, x, y)
            r["elements"] += n
            r["differ"] += d
            r["max_rel"] = max(r["max_rel"], rel)
    return {"a": str(a), "b": str(b), "kinds": rows, "only_in_one": only}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = compare(a.a, a.b)
    print(f"{'kind':<22} {'tensors':>7} {'same sha':>8} {'elements':>12} {'differ':>10} {'%':>8} {'max rel':>9}")
    for kind, r in sorted(out["kinds"].items()):
        pct = 100 * r["differ"] / max(r["elements"], 1)
        print(f"{kind:<22} {r['tensors']:>7} {r['same_sha']:>8} {r['elements']:>12} {r['differ']:>10} {pct:>8.4f} "
              f"{r['max_rel']:>9.2e}")
    if out["only_in_one"]:
        print(f"only in one of them: {', '.join(out['only_in_one'][:10])}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
