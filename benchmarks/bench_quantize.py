"""End-to-end ``fptq quantize`` time and peak memory, measured with ``/usr/bin/time -v``.

    python benchmarks/bench_quantize.py [--model DIR] [--samples 128] [--seq-len 512]
                                        [--sequential] [--json PATH] [-- QUANTIZE FLAGS...]

Flags after ``--`` go to ``fptq quantize`` as they are (e.g. ``-- --weight-quantizer rtn
--weight-format int4_sym --policy-select bands`` for the paper's configuration); with none
it measures fptq's default configuration.

Runs the real CLI in a subprocess (so the peak resident set size is the whole
job's: model load, calibration text, calibration, quantization, save), prints
a table and writes JSON. The default model is the embedded SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time_v(text: str) -> dict:
    def grab(pattern, cast=float):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None

    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    secs = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"wall_s": secs, "user_s": grab(r"User time \(seconds\): ([\d.]+)"),
            "sys_s": grab(r"System time \(seconds\): ([\d.]+)"),
            "max_rss_mb": (grab(r"Maximum resident set size \(kbytes\): (\d+)", int) or 0) / 1024,
            "cpu_percent": grab(r"Percent of CPU this job got: (\d+)%", int)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib", default="wiki")
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--json", default="results/bench_quantize.json")
    ap.add_argument("--keep", default=None, help="write the checkpoint here and keep it (default: a temporary "
                    "directory, removed)")
    ap.add_argument("quantize_flags", nargs=argparse.REMAINDER, help="-- then flags for fptq quantize")
    a = ap.parse_args(argv)
    extra = a.quantize_flags[1:] if a.quantize_flags[:1] == ["--"] else a.quantize_flags
    if not Path("/usr/bin/time").exists():
        print("needs /usr/bin/time (GNU time) for the peak memory", file=sys.stderr)
        return 2
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fptq-bench-")) / "ckpt"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "fptq.cli", "quantize", "--out", str(out),
           "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--calib", a.calib, "--quiet",
           *extra]
    if a.model:
        cmd.insert(5, a.model)
    if a.sequential:
        cmd.append("--sequential")
    t0, load0 = time.time(), os.getloadavg()
    p = subprocess.run(cmd, capture_output=True, text=True)
    size = sum(f.stat().st_size for f in out.glob("*")) / 2**20 if out.exists() else None
    if not a.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr, file=sys.stderr)
        return p.returncode
    r = _time_v(p.stderr)
    r.update({"command": " ".join(cmd[2:]), "samples": a.samples, "seq_len": a.seq_len,
              "sequential": a.sequential, "quantize_flags": extra, "checkpoint_mb": size, "stdout": p.stdout.strip().splitlines()[-2:],
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "loadavg_at_start": load0, "loadavg_at_end": os.getloadavg(), "outer_wall_s": time.time() - t0})
    print("| flags | calibration | wall (s) | user (s) | peak RSS (MB) | CPU % | checkpoint (MiB) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {' '.join(extra) or '(defaults)'} | {a.calib} {a.samples} x {a.seq_len}"
          f"{' sequential' if a.sequential else ''} | {r['wall_s']:.0f} | "
          f"{r['user_s']:.0f} | {r['max_rss_mb']:.0f} | {r['cpu_percent']} | {size:.1f} |")
    for line in r["stdout"]:
        print(line)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
