"""One evaluation run (perplexities + tasks), its table and its JSON file.

``run_eval`` returns::

    {"perplexity": {source: perplexity(...) dict + "seconds"},
     "tasks":      {task:   evaluate_task(...) dict},
     "settings":   {seq_len, max_windows, limit, bos_token_id}}

``result_row`` flattens one result into a table row (``ptb_ppl``,
``piqa_acc``, ``piqa_acc_norm``, ...); ``format_table`` renders rows (one per
method/model) as a markdown table; ``write_json`` writes atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..defaults import EVAL_SEQ_LEN, EVAL_TEXTS

__all__ = ["run_eval", "result_row", "format_table", "write_json"]


def _names(x, what: str) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        x = [s for s in x.split(",") if s.strip()]
    names = [s.strip() for s in x]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {what} in {names}")
    return names


def run_eval(model, tokenizer, ppl: Sequence[str] = EVAL_TEXTS, tasks: Sequence[str] = (),
             limit: int | None = None, seq_len: int = EVAL_SEQ_LEN, max_windows: int | None = None,
             batch_size: int = 16, add_bos: bool | None = None, progress: bool = True) -> dict:
    """Perplexity on each text source in ``ppl`` and accuracy on each task in ``tasks``.

    Args:
        ppl: text sources (:func:`fptq.data.text.load_text`), evaluation split; a
            comma-separated string is accepted too.
        tasks: task names (:data:`fptq.data.tasks.TASKS`); ``limit`` = first N examples.
        seq_len, max_windows: perplexity windows (:func:`fptq.eval.perplexity.perplexity`).
        add_bos: BOS before every window and task prompt; default: iff the tokenizer has one.
    """
    from ..data.tasks import TASKS
    from ..data.text import eval_tokens
    from ..data.tokenize import resolve_add_bos
    from .health import overflow_guard
    from .perplexity import perplexity
    from .tasks import evaluate_task

    sources, task_names = _names(ppl, "perplexity sources"), _names(tasks, "tasks")
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:  # fail before spending minutes on perplexity
        raise ValueError(f"unknown tasks {unknown}; known tasks: {', '.join(TASKS)}")
    add_bos, bos = resolve_add_bos(tokenizer, add_bos)
    out = {"perplexity": {}, "tasks": {},
           "settings": {"seq_len": seq_len, "max_windows": max_windows, "limit": limit,
                        "bos_token_id": bos if add_bos else None}}
    with overflow_guard(model, "eval"):  # an overflow inside the model is an error, not a perplexity
        for src in sources:
            t0 = time.time()
            r = perplexity(model, eval_tokens(tokenizer, src), seq_len=seq_len, max_windows=max_windows,
                           progress=progress, bos_token_id=bos if add_bos else None)
            r["seconds"] = time.time() - t0
            out["perplexity"][src] = r
        for name in task_names:
            out["tasks"][name] = evaluate_task(model, tokenizer, name, limit=limit, batch_size=batch_size,
                                               add_bos=add_bos, progress=progress)
    return out


def result_row(result: dict, **labels) -> dict:
    """One table row from a ``run_eval`` result: ``labels`` first (e.g. ``method="fptq"``), then
    ``<source>_ppl`` per perplexity and ``<task>_acc`` / ``_acc_norm`` / ``_ppl`` per task."""
    row = dict(labels)
    for src, r in result.get("perplexity", {}).items():
        row[f"{src}_ppl"] = r["ppl"]
    for name, r in result.get("tasks", {}).items():
        for k in ("acc", "acc_norm", "ppl"):
            if k in r:
                row[f"{name}_{k}"] = r[k]
    return row


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if key.endswith(("_acc", "_acc_norm")) or key in ("acc", "acc_norm"):
        return f"{100 * v:.1f}"  # accuracy in percent
    if isinstance(v, int):
        return str(v)
    return f"{v:.2f}"


def format_table(rows) -> str:
    """A markdown table: one row per dict, columns = the union of keys in first-seen order.

    Accuracies (keys ending in ``acc`` / ``acc_norm``) print in percent with one
    decimal; other floats with two; missing cells as ``-``. A ``run_eval``
    result (a dict with ``"perplexity"``/``"tasks"``) is accepted and flattened
    by :func:`result_row`.
    """
    if isinstance(rows, dict):
        rows = [result_row(rows) if ("perplexity" in rows or "tasks" in rows) else rows]
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to format")
    cols = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _jsonable(x):
    if hasattr(x, "tolist"):  # numpy / torch scalars and arrays
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically: a temporary file in the same
    directory, flushed and fsynced, then ``os.replace`` (a crash never leaves a partial file
    under ``path``). Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        from ..io.atomic import current_umask

        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
