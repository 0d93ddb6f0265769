"""Peak RSS of ``fptq report`` on one checkpoint: verified streamed (``verify_checkpoint``) vs loaded whole.

    python benchmarks/report_memory.py CHECKPOINT_DIR --name llama3-8b-shape

Runs ``fptq report CHECKPOINT_DIR`` twice, each in a process of its own under ``/usr/bin/time -v``:
``streamed``, the command as it is (``fptq.models.checkpoint.verify_checkpoint``: one layer's tensors at a time,
BF16 never widened), and ``load_quantized``, the same command with ``verify_checkpoint`` replaced by what it called
before (``load_quantized(..., backend="numpy", mode="fake_quant")``: the whole model, float parts in float32).
Prints each one's maximum RSS and wall time, checks that both printed the same report, and writes JSON (``--out``,
default ``benchmarks/results/report_memory_<name>_<date>.json``). Memory, not time: a loaded machine is fine.
Linux only (``/usr/bin/time`` of GNU time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_info import git_state, machine_info  # noqa: E402

#: the child: ``fptq report DIR``, with ``verify_checkpoint`` swapped for the whole load when argv[2] == "load"
_CHILD = """import sys
import fptq.models.checkpoint as C
if sys.argv[2] == "load":
    C.verify_checkpoint = lambda d: C.load_quantized(d, backend="numpy", mode="fake_quant")[2]
from fptq.cli import main
sys.exit(main(["report", sys.argv[1]]))
"""
WAYS = {"streamed": "verify", "load_quantized": "load"}


def run_report(ckpt: Path, way: str) -> dict:
    """One ``fptq report`` under ``/usr/bin/time -v``: ``{"way", "rc", "max_rss_bytes", "wall_s", "stdout"}``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", _CHILD, str(ckpt), WAYS[way]],
                       capture_output=True, text=True, env=env)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    if p.returncode or rss is None or wall is None:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"report_memory: the {way} run failed (exit {p.returncode})")
    h, m, s = wall.groups()
    return {"way": way, "rc": p.returncode, "max_rss_bytes": int(rss.group(1)) * 1024,
            "wall_s": int(h or 0) * 3600 + int(m) * 60 + float(s), "stdout": p.stdout}


def _out_path(name: str) -> Path:
    """``results/report_memory_<name>_<date>.json``; ``-2``, ``-3``... when it exists already."""
    base = ROOT / "benchmarks" / "results" / f"report_memory_{name}_{time.strftime('%Y-%m-%d')}"
    path, i = base.with_suffix(".json"), 2
    while path.exists():
        path, i = Path(f"{base}-{i}.json"), i + 1
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="an fptq checkpoint directory")
    ap.add_argument("--name", required=True, help="the checkpoint's name in the JSON file name")
    ap.add_argument("--out", type=Path, default=None, help="the JSON path (default: see the module docstring)")
    a = ap.parse_args(argv)
    git0 = git_state()
    files = {p.name: p.stat().st_size for p in sorted(a.checkpoint.iterdir()) if p.is_file()}
    runs = [run_report(a.checkpoint, way) for way in WAYS]
    same = runs[0]["stdout"] == runs[1]["stdout"]
    print(f"{a.checkpoint}: {sum(files.values()) / 2**30:.3f} GiB of files; the same report from both: {same}")
    for r in runs:
        print(f"  {r['way']:15s} max RSS {r['max_rss_bytes'] / 2**20:9.1f} MiB   wall {r['wall_s']:7.1f} s")
    rec = {"checkpoint": str(a.checkpoint), "name": a.name, "file_bytes": files, "same_output": same,
           "runs": [{k: v for k, v in r.items() if k != "stdout"} for r in runs],
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(), "git": git0,
           "command": "python benchmarks/report_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = a.out or _out_path(a.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
