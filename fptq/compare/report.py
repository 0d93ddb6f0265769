"""The ``fptq compare`` table: the machine line, the markdown table, the peers' rows.

Pure formatting and reading: :func:`format_markdown` (perplexity per text, the
increase over FP32, task accuracy), :func:`read_peer_rows` (rows of
``benchmarks/peers/run_peers.py``, checked to be on the same windows).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

__all__ = ["machine", "format_markdown", "read_peer_rows", "task_value"]


def machine() -> str:
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {threads}, {platform.system()} {platform.release()}"


#: the headline metric per task where it is not ``acc``: lm-evaluation-harness reports
#: length-normalized accuracy for these (WinoGrande and MMLU have one shared continuation
#: or one-token answers, so normalization changes nothing there)
_HEADLINE = {"piqa": "acc_norm", "hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm"}


def task_value(name: str, r: dict) -> float:
    """The headline number of task ``name``'s result ``r`` (:data:`_HEADLINE`, else ``acc``)."""
    return r[_HEADLINE.get(name, "acc")]


def format_markdown(rows: list[dict], texts, tasks=()) -> str:
    """The comparison table in markdown: ppl per text, the increase over FP32, accuracy (%) per task."""
    base = next((r for r in rows if r["key"] == "fp32"), None)
    head = ("| method | weights | activations | " + " | ".join(f"ppl {t}" for t in texts) + " | vs FP32 | "
            + "".join(f"{t} {_HEADLINE.get(t, 'acc')} | " for t in tasks) + "time (s) |")
    lines = [head, "|" + "---|" * (5 + len(texts) + len(tasks))]
    for r in rows:
        ppls = [r["ppl"].get(t) for t in texts]
        cells = " | ".join("-" if p is None else f"{p:.2f}" for p in ppls)
        if base and r is not base:
            rel = [(r["ppl"][t] / base["ppl"][t] - 1) * 100 for t in texts if t in r["ppl"] and t in base["ppl"]]
            vs = " / ".join(f"{x:+.1f}%" for x in rel) or "-"
        else:
            vs = "-"
        tcells = "".join((f"{100 * task_value(t, r['tasks'][t]):.1f} | " if t in r.get("tasks", {}) else "- | ")
                         for t in tasks)
        note = f" ({r['n_windows']} windows)" if r.get("n_windows_note") else ""
        lines.append(f"| {r['label']}{note} | {r['weights']} | {r['acts']} | {cells} | {vs} | {tcells}"
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def read_peer_rows(path, texts, max_windows: int, seq_len: int) -> list[dict]:
    """The rows of a peers JSON (``benchmarks/peers/run_peers.py``), checked to be on the same windows.

    A peer row has ``key``, ``label``, ``weights``, ``acts``, ``n_windows`` and either ``ppl`` (per
    text) or ``error`` (a configuration that failed, kept as a row that says so)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        rows = data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--peers {path}: not a peers result file ({type(e).__name__}: {e})") from e
    theirs = data.get("eval_seq_len", data.get("seq_len", seq_len))
    if theirs != seq_len:
        raise ValueError(f"--peers {path}: windows of {theirs} tokens, this table uses {seq_len}")
    out = []
    for r in rows:
        if not isinstance(r, dict) or not {"key", "label"} <= r.keys():
            raise ValueError(f"--peers {path}: a row without key/label: {r!r:.200}")
        if r["key"] == "fp32":  # the peers script's own sanity anchor; the table has fptq's
            continue
        r = {k: v for k, v in r.items() if v is not None}  # a key set to null is a key not given
        if "error" not in r:
            missing = [t for t in texts if t not in r.get("ppl", {})]
            if missing or r.get("n_windows") != max_windows:
                raise ValueError(f"--peers {path}: row {r['key']} has texts {sorted(r.get('ppl', {}))} on "
                                 f"{r.get('n_windows')} windows; this table needs {list(texts)} on {max_windows}")
        row = {"weights": "", "acts": "", "ppl": {}, "seconds": 0.0, **r, "peer": True, "fake_quant": None}
        row["label"] = (f"peer: {r['label']}" + (f" [{r['how']}]" if r.get("how") else "")
                        + (f" (fails: {r['error']})" if "error" in r else ""))
        out.append(row)
    return out
