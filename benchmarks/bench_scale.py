"""One model quantized end to end by ``fptq quantize``: peak RSS, time per layer, and the memory model's prediction.

    python benchmarks/bench_scale.py [--model DIR_OR_GGUF] [--name NAME] [--samples 16 --seq-len 512]
                                     [--out CKPT] [--keep] [--json PATH] [-- QUANTIZE FLAGS...]

Runs ``python -m fptq.cli quantize MODEL --out OUT [--samples N --seq-len L] [FLAGS]`` as a child
process (the default pipeline unless flags after ``--`` say otherwise) and, while it runs:

* samples the child's ``VmRSS`` from ``/proc/PID/status`` every ``--interval`` seconds (0.2) and its
  ``VmHWM`` (the kernel's own high-water mark) with it; after it exits,
  ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` too. ``peak_rss_bytes`` is the largest of the
  three (``ru_maxrss`` counted only when it rose during this run: it is a maximum over all children);
* reads the child's stderr line by line, echoes it, and parses the per-layer progress lines of the
  streamed loop, ``fptq: layer {i}/{n} quantized in {sec} s``, into ``layer_seconds`` (with the RSS
  when each line arrived). A run without them (the whole-model path before issue 22) gives an empty
  list and a note.

The memory model's prediction (``fptq.models.memory.estimate``, issue 22) is printed beside the
measured peak with their ratio when that module is importable; otherwise the column is empty and a
note says why. Prints a table and writes JSON (default
``benchmarks/results/bench_scale_<name>_<date>.json``) with ``peak_rss_bytes``, ``layer_seconds``,
``total_seconds``, the command, the load averages at start and end, and the machine (nproc, MemTotal).

The checkpoint goes to ``--out`` (default: a temporary directory) and is removed afterwards unless
``--keep`` is given; a ``--out`` that existed before the run is never removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_info import git_state, machine_info, model_facts, predict_peak  # noqa: E402

LAYER_LINE = re.compile(r"fptq: layer (\d+)/(\d+) quantized in ([0-9.]+) s")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, DEFAULT_BATCH = 128, 512, 8


def proc_status_kb(pid: int, keys=("VmRSS", "VmHWM")) -> dict:
    """The ``keys`` of ``/proc/PID/status`` in kB (absent ones left out; {} once the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def parse_layer_line(line: str):
    """(layer 1-based, n layers, seconds) of a progress line, else None."""
    m = LAYER_LINE.search(line)
    return (int(m.group(1)), int(m.group(2)), float(m.group(3))) if m else None


class Watch:
    """The state a run's reader threads and RSS sampler fill in."""

    def __init__(self, echo: bool):
        self.echo, self.t0 = echo, time.time()
        self.rss_kb = self.hwm_kb = 0
        self.layers: list[dict] = []
        self.stderr_tail: list[str] = []
        self.stdout: list[str] = []

    def on_stderr(self, line: str) -> None:
        if self.echo:
            sys.stderr.write(line)
            sys.stderr.flush()
        self.stderr_tail = (self.stderr_tail + [line.rstrip("\n")])[-40:]
        hit = parse_layer_line(line)
        if hit:
            self.layers.append({"layer": hit[0], "of": hit[1], "seconds": hit[2],
                                "at_s": round(time.time() - self.t0, 2), "rss_bytes": self.rss_kb * 1024})

    def sample(self, pid: int) -> None:
        st = proc_status_kb(pid)
        self.rss_kb = st.get("VmRSS", self.rss_kb)
        self.rss_peak_kb = max(getattr(self, "rss_peak_kb", 0), self.rss_kb)
        self.hwm_kb = max(self.hwm_kb, st.get("VmHWM", 0))


def _pump(stream, handle) -> None:
    for line in iter(stream.readline, ""):
        handle(line)
    stream.close()


def run_watched(cmd: list[str], interval: float, echo: bool) -> tuple[int, Watch, float, int]:
    """Run CMD, sampling its memory every INTERVAL s; (exit status, the Watch, wall seconds, ru_maxrss kB rise)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    w = Watch(echo)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    readers = [threading.Thread(target=_pump, args=(p.stderr, w.on_stderr), daemon=True),
               threading.Thread(target=_pump, args=(p.stdout, w.stdout.append), daemon=True)]
    for t in readers:
        t.start()
    try:
        while p.poll() is None:
            w.sample(p.pid)
            time.sleep(interval)
    except BaseException:  # interrupted: the child must not run on unwatched
        p.kill()
        p.wait()
        raise
    wall = time.time() - w.t0
    for t in readers:
        t.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return p.returncode, w, wall, (after if after > before else 0)


def quantize_command(a, out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "fptq.cli", "quantize"] + ([a.model] if a.model else []) + ["--out", str(out)]
    if a.samples is not None:
        cmd += ["--samples", str(a.samples)]
    if a.seq_len is not None:
        cmd += ["--seq-len", str(a.seq_len)]
    return cmd + extra


def flag_value(extra: list[str], flag: str, default):
    """The value of ``flag`` in the pass-through flags (``--flag V`` or ``--flag=V``), else DEFAULT."""
    for i, x in enumerate(extra):
        if x == flag and i + 1 < len(extra):
            return extra[i + 1]
        if x.startswith(flag + "="):
            return x.split("=", 1)[1]
    return default


def memory_model_options(extra: list[str]) -> dict:
    """The memory model's keywords that pass-through flags set (--float-dtype, --device)."""
    out = {}
    fd = flag_value(extra, "--float-dtype", None)
    if fd:
        out["float_dtype_bytes"] = 4 if fd == "float32" else 2
    dev = flag_value(extra, "--device", None)
    if dev:
        out["device"] = dev
    return out


def layer_stats(layers: list[dict]) -> dict:
    secs = [r["seconds"] for r in layers]
    if not secs:
        return {"layer_seconds": [], "median_layer_s": None, "min_layer_s": None, "max_layer_s": None}
    return {"layer_seconds": secs, "median_layer_s": statistics.median(secs), "min_layer_s": min(secs),
            "max_layer_s": max(secs)}


def summarize(a, cmd, rc, w: Watch, wall, ru_kb, facts, pred, load0) -> dict:
    """The JSON record of one run."""
    peak = max(getattr(w, "rss_peak_kb", 0), w.hwm_kb, ru_kb) * 1024
    samples = a.samples or DEFAULT_SAMPLES
    seq_len = a.seq_len or DEFAULT_SEQ_LEN
    notes = [] if w.layers else ["no per-layer progress lines ('fptq: layer i/n quantized in s s') on stderr: "
                                 "the run used the whole-model path, layer_seconds is empty"]
    notes += [n for n in (facts.get("facts_note"), pred.get("note")) if n]
    rec = {"model": a.model or "(embedded SmolLM2-135M)", "name": a.name, "exit_status": rc,
           "command": " ".join(cmd), "calibration": {"samples": samples, "seq_len": seq_len,
                                                    "calib": flag_value(a.extra, "--calib", "wiki")},
           **facts, "peak_rss_bytes": peak, "vmrss_max_sampled_bytes": getattr(w, "rss_peak_kb", 0) * 1024,
           "vmhwm_bytes": w.hwm_kb * 1024, "ru_maxrss_bytes": ru_kb * 1024, "total_seconds": round(wall, 2),
           **layer_stats(w.layers), "layers_progress": w.layers, "predicted_peak_bytes": pred.get("peak_bytes"),
           "predicted_over_measured": (pred["peak_bytes"] / peak) if pred.get("peak_bytes") and peak else None,
           "predicted_peak_step": pred.get("peak_step"), "predicted_time": pred.get("time"),
           "memory_model_kwargs": pred.get("kwargs"), "memory_model": pred.get("describe"), "interval_s": a.interval,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "uptime_start": load0, "uptime_end": _uptime(),
           "machine": machine_info(), "stdout_tail": [x.rstrip("\n") for x in w.stdout[-5:]], "notes": notes}
    if rc != 0:
        rec["stderr_tail"] = w.stderr_tail
    return rec


def _uptime() -> dict:
    try:
        text = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        text = None
    return {"loadavg": list(os.getloadavg()), "uptime": text}


def _fmt(x, spec, scale=1.0) -> str:
    return "" if x is None else format(x / scale, spec)


def print_table(r: dict) -> None:
    cal = r["calibration"]
    print("| model | params | layers | calibration | peak RSS (GB) | predicted (GB) | predicted / measured "
          "| total (s) | median s/layer | min / max s/layer | predicted s/layer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    n = r.get("params")
    params = "" if n is None else f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    minmax = "" if r["min_layer_s"] is None else f"{r['min_layer_s']:.1f} / {r['max_layer_s']:.1f}"
    print(f"| {r['name']} | {params} | {r.get('layers') or ''} | {cal['calib']} {cal['samples']} x {cal['seq_len']} "
          f"| {_fmt(r['peak_rss_bytes'], '.2f', 1e9)} | {_fmt(r['predicted_peak_bytes'], '.2f', 1e9)} "
          f"| {_fmt(r['predicted_over_measured'], '.3f')} | {r['total_seconds']:.1f} "
          f"| {_fmt(r['median_layer_s'], '.1f')} | {minmax} | {_fmt((r['predicted_time'] or {}).get('per_layer_s'), '.1f')} |")
    for n in r["notes"]:
        print(f"note: {n}")


def default_name(model) -> str:
    if not model:
        return "smollm2-135m"
    p = Path(model)
    base = p.stem if p.suffix.lower() == ".gguf" else p.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "model"


def json_path(name: str) -> Path:
    """``results/bench_scale_<name>_<date>.json``; ``-2``, ``-3``... when it exists already."""
    stem = f"bench_scale_{name}_{time.strftime('%Y-%m-%d')}"
    p, k = RESULTS / f"{stem}.json", 2
    while p.exists():
        p, k = RESULTS / f"{stem}-{k}.json", k + 1
    return p


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory or .gguf (default: the embedded SmolLM2-135M)")
    ap.add_argument("--name", default=None, help="model name in the table and the JSON file name")
    ap.add_argument("--samples", type=int, default=None, help=f"calibration samples (default fptq's, {DEFAULT_SAMPLES})")
    ap.add_argument("--seq-len", type=int, default=None, help=f"tokens per sample (default fptq's, {DEFAULT_SEQ_LEN})")
    ap.add_argument("--out", default=None, help="checkpoint directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (default: removed after the run)")
    ap.add_argument("--json", default=None, help="JSON path (default results/bench_scale_<name>_<date>.json)")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval in seconds")
    ap.add_argument("--no-echo", action="store_true", help="do not echo the child's stderr")
    ap.add_argument("--no-time", action="store_true", help="skip the memory model's time estimate (it measures "
                    "this machine's FLOP rates after the run)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags for fptq quantize")
    a = ap.parse_args(argv)
    a.extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    a.name = a.name or default_name(a.model)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    tmp = None if a.out else Path(tempfile.mkdtemp(prefix="fptq-bench-scale-"))
    out = Path(a.out) if a.out else tmp / "ckpt"
    existed = out.exists()
    load0, git0 = _uptime(), git_state()
    cmd = quantize_command(a, out, a.extra)
    try:
        rc, w, wall, ru_kb = run_watched(cmd, a.interval, not a.no_echo)
    finally:
        if not a.keep and not existed:
            shutil.rmtree(tmp or out, ignore_errors=True)
    # after the run, so that reading the model's shapes (tens of seconds for a GGUF with a large
    # vocabulary) neither delays nor shares the machine with the measured child
    facts = model_facts(a.model)
    batch = int(flag_value(a.extra, "--batch-size", DEFAULT_BATCH))
    pred = predict_peak(facts.pop("config", None), a.samples or DEFAULT_SAMPLES, a.seq_len or DEFAULT_SEQ_LEN,
                        batch, facts.get("source_dtype_bytes"), memory_model_options(a.extra), timed=not a.no_time)
    rec = summarize(a, cmd, rc, w, wall, ru_kb, facts, pred, load0)
    rec["git"] = git0  # at the start: the code that ran
    print_table(rec)
    path = Path(a.json) if a.json else json_path(a.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path}")
    if rc != 0:
        print(f"fptq quantize exited with status {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
