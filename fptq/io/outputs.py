"""Output paths checked before the expensive work starts.

Every command that writes something (``quantize --out``, ``eval --json``,
``compare --out``, ``report --plot``) calls one of these first, so a typo, a
file in the way, a dangling symbolic link or a read-only directory is an error
in the first second, not after minutes of calibration.

Writability is tested by creating (and removing) a probe file in the nearest
existing directory, so read-only mounts are caught even when running as root.

Nothing is lost: an output is never one of the command's inputs nor inside an
input directory; an existing file is replaced only when fptq wrote it (an eval
result, a compare table, a report plot: ``is_eval_json``, ``is_compare_json``,
``is_compare_md``, ``is_fptq_png``); ``--force`` replaces only an empty directory
or one its caller recognises whole (``refusal``: an fptq checkpoint holding
nothing but its own files), never a mount point or the working directory. Names
too long for the temporary names fptq writes through are refused first, and the
leftovers of an interrupted run are named.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["OutputPathError", "NonFiniteResult", "check_output_file", "check_output_dir", "check_finite_result",
           "is_within", "leftovers", "TEMP_NAME_EXTRA", "is_eval_json", "is_compare_json", "is_compare_md",
           "is_fptq_png", "PNG_SOFTWARE"]

#: the bytes a name must leave free for the temporary names fptq writes it through (``.NAME.tmp-XXXXXXXX``
#: adds 14; one more in reserve): on a 255-byte filesystem an output's name has at most 240 bytes
TEMP_NAME_EXTRA = 15


class OutputPathError(ValueError):
    """An output path cannot be written, or must not be replaced."""


class NonFiniteResult(ArithmeticError):
    """A result to be reported holds NaN or Inf: an error, never a result."""


def _first_non_finite(obj, path=""):
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "result"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_non_finite(v, f"{path}.{k}" if path else str(k))
        if bad:
            return bad
    return None


def check_finite_result(obj, what: str) -> None:
    """Raise NonFiniteResult naming the first NaN/Inf number in a nested dict/list result
    (its key path, e.g. ``rows.2.wiki``); call it before printing or writing the result."""
    bad = _first_non_finite(obj)
    if bad:
        raise NonFiniteResult(f"{what}: {bad} is not finite (NaN/Inf): the model's output is unusable; "
                              "nothing written")


#: what an fptq report plot carries in its PNG ``Software`` text chunk (:func:`is_fptq_png`)
PNG_SOFTWARE = "fptq report"


def _json_object(path: Path, limit: int = 64 * 1024 * 1024):
    from .reading import InputFileError, read_bounded

    try:
        obj = json.loads(read_bounded(path, limit).decode("utf-8"))
    except (InputFileError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def is_eval_json(path) -> bool:
    """True when ``path`` is a result ``fptq eval --json`` wrote (a JSON object with its keys)."""
    obj = _json_object(Path(path))
    return obj is not None and {"perplexity", "tasks", "settings", "model_kind"} <= set(obj)


def is_compare_json(path) -> bool:
    """True when ``path`` is a ``compare.json`` that ``fptq compare`` wrote."""
    obj = _json_object(Path(path))
    return obj is not None and {"settings", "rows", "machine", "fptq_plan"} <= set(obj)


def is_compare_md(path) -> bool:
    """True when ``path`` is a ``compare.md`` that ``fptq compare`` wrote (its first line names the command)."""
    from .reading import InputFileError, read_bounded

    try:
        return read_bounded(path, 64 * 1024 * 1024).startswith(b"command: `")
    except InputFileError:
        return False


def is_fptq_png(path) -> bool:
    """True when ``path`` is a PNG that ``fptq report --plot`` wrote (its ``Software`` text chunk)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096) if os.path.isfile(path) else b""
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Software\x00" + PNG_SOFTWARE.encode() in head


def is_within(path, root) -> bool:
    """True when ``path`` is ``root`` or lies below it (both resolved)."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or r in p.parents


def _probe_writable(d: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".fptq-probe-", dir=d)
    except OSError as e:
        raise OutputPathError(f"{what}: cannot write in {d} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def _nearest_existing(d: Path) -> Path:
    a = Path(os.path.abspath(d))
    while not os.path.lexists(a):
        a = a.parent
    return a


def _check_creatable_dir(d: Path, what: str) -> None:
    """``d`` is a writable directory, or can be created (its nearest existing ancestor is one)."""
    a = _nearest_existing(d)
    if a.is_symlink() and not a.exists():
        raise OutputPathError(f"{what}: {a} is a dangling symbolic link")
    if not a.is_dir():
        raise OutputPathError(f"{what}: {a} is not a directory, so {d} cannot be created")
    _probe_writable(a, what)


def _check_name_length(p: Path, what: str) -> None:
    """Every component of ``p`` fits the filesystem, the last one also inside the temporary names fptq
    writes it through (``.NAME.tmp-XXXXXXXX``, ``.NAME.old-XXXXXXXX``, ``.NAME.XXXXXXXX.tmp``)."""
    try:
        limit = os.pathconf(_nearest_existing(p.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in p.parts[:-1]:
        if len(os.fsencode(part)) > limit:
            raise OutputPathError(f"{what}: the component {part[:40]}... of {p} is longer than this "
                                  f"filesystem's {limit} bytes")
    n = len(os.fsencode(p.name))
    if n + TEMP_NAME_EXTRA > limit:
        raise OutputPathError(f"{what}: the name {p.name[:40]}... is {n} bytes; fptq writes it through a "
                              f"temporary name {TEMP_NAME_EXTRA} bytes longer, over this filesystem's limit of "
                              f"{limit}: use a name of at most {limit - TEMP_NAME_EXTRA} bytes")


def _check_not_input(p: Path, protect, what: str) -> None:
    """A file output is none of the inputs and lies inside none of the input directories."""
    for src in protect:
        if src is None or str(src) == "" or not os.path.lexists(src):
            continue
        if is_within(p, src):
            kind = "the input" if Path(src).resolve() == p.resolve() else "inside the input"
            raise OutputPathError(f"{what}: {p} is {kind} {src}; fptq never writes over or into what it reads: "
                                  "write somewhere else")


def check_output_file(path, what: str, protect=(), owned=None, kind: str = "") -> Path:
    """Check that the file ``path`` can be written, before any work; returns it as a Path.

    Refused: a directory, a dangling symbolic link, a path through a file, a read-only place, a name
    too long for the temporary name, one of the inputs in ``protect`` or a path inside an input
    directory, and an existing file that fptq did not write (``owned(path)`` false; ``kind`` names
    what ``owned`` recognises, e.g. ``"an fptq eval result"``). Without ``owned`` nothing existing is
    replaced.
    """
    p = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: the empty string is not a path")
    if str(path).endswith(os.sep) or p.is_dir():
        raise OutputPathError(f"{what}: {p} is a directory, not a file")
    if p.is_symlink() and not p.exists():
        raise OutputPathError(f"{what}: {p} is a dangling symbolic link")
    _check_name_length(p, what)
    _check_not_input(p, protect, what)
    _check_creatable_dir(p.parent, what)
    if os.path.lexists(p):
        if p.is_symlink() or not p.is_file():
            raise OutputPathError(f"{what}: {p} exists and is not a regular file; fptq replaces only its own files")
        if owned is None or not owned(p):
            raise OutputPathError(f"{what}: {p} exists and is not {kind or 'a file fptq wrote'}; fptq will not "
                                  "replace it (delete it or choose another name)")
        if not os.access(p, os.W_OK):
            raise OutputPathError(f"{what}: {p} is not writable")
    return p


def leftovers(dest) -> list[Path]:
    """``.NAME.tmp-*`` and ``.NAME.old-*`` next to ``dest``: what an interrupted atomic write left."""
    dest = Path(os.path.abspath(dest))
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return []
    pre = (f".{dest.name}.tmp-", f".{dest.name}.old-")
    from .atomic import in_progress

    return [dest.parent / n for n in sorted(names) if n.startswith(pre) and dest.parent / n not in in_progress()]


_NOTED: set = set()


def _check_leftovers(p: Path, what: str) -> None:
    """Name the leftovers of an interrupted run on stderr; refuse when the destination is gone and an
    ``.old`` copy (the previous directory, moved aside) is all that is left of it."""
    left = leftovers(p)
    if not left:
        return
    olds = [x for x in left if ".old-" in x.name]
    if olds and not os.path.lexists(p):
        raise OutputPathError(f"{what}: {p} is missing but {olds[0]} holds its previous contents (a run was "
                              f"interrupted between its two renames): move it back to {p} or delete it first")
    if tuple(left) in _NOTED:
        return
    _NOTED.add(tuple(left))
    print(f"fptq: note: {what}: left by an interrupted run (not deleted, another fptq may be writing them): "
          + ", ".join(str(x) for x in left), file=sys.stderr)


def check_output_dir(path, what: str, force: bool | None = None, refusal=None, protect=(), owned=None) -> Path:
    """Check an output directory before the work starts; returns it as a Path.

    Args:
        what: the argument's name for messages (``"--out"``).
        force: None = an existing directory is written into (only the files of ``owned`` replaced);
            False = an existing path is an error; True = an existing path is replaced whole, but only
            if it is an empty directory or ``refusal(path)`` returns None (else its reason is the error).
        protect: paths being read (the input model, calibration text): the output may be
            neither one of them nor a directory holding one. The working directory and its
            parents are always protected from replacement, and so are mount points.
        owned: for ``force=None``: file name -> ``predicate(path)``; an existing file of that name must
            be one fptq wrote (the predicate), else it is not overwritten.
    Raises:
        FileExistsError: it exists and ``force`` is False.
        OutputPathError: anything else that would fail or destroy data.
    """
    p = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: the empty string is not a path")
    if p.is_symlink():
        if not p.exists():
            raise OutputPathError(f"{what}: {p} is a dangling symbolic link")
        if force:
            raise OutputPathError(f"{what}: {p} is a symbolic link; --force replaces only a real directory "
                                  f"(give {p.resolve()} itself)")
    if os.path.lexists(p) and not p.is_dir():
        raise OutputPathError(f"{what}: {p} exists and is not a directory")
    _check_name_length(Path(os.path.abspath(p)), what)
    for src in protect:
        if src is None or str(src) == "" or not os.path.lexists(src):
            continue
        if is_within(src, p):  # writing (or replacing) it would destroy the input; a new directory inside is fine
            raise OutputPathError(f"{what}: {p} would overlap the input {src} (it is the input or holds it); "
                                  "write somewhere else")
    if force is not None:
        _check_leftovers(p, what)
    if p.is_dir():
        if force is False:
            raise FileExistsError(f"{p} exists; pass --force to replace it")
        if force:
            _check_replaceable(p, what, refusal)
        else:
            _check_owned_files(p, what, owned or {})
            _probe_writable(p, what)
    else:
        _check_creatable_dir(p.parent if force is not None else p, what)
    return p


def _check_replaceable(p: Path, what: str, refusal) -> None:
    if is_within(os.getcwd(), p):
        raise OutputPathError(f"{what}: {p} is the working directory or one of its parents; "
                              "--force will not replace it")
    if os.path.ismount(p):
        raise OutputPathError(f"{what}: {p} is a mount point; --force cannot replace it (it cannot be renamed): "
                              "give a directory inside it")
    entries = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in os.scandir(p))
    if entries:
        why = "not empty" if refusal is None else refusal(p)
        if why:
            listing = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
            raise OutputPathError(f"{what}: --force will not replace {p}: it is {why}; it would have deleted "
                                  f"{listing}. --force replaces only an fptq checkpoint holding nothing else, "
                                  "or an empty directory")
    _probe_writable(p.parent, what)


def _check_owned_files(p: Path, what: str, owned: dict) -> None:
    for name, mine in owned.items():
        f = p / name
        if os.path.lexists(f) and (f.is_symlink() or not f.is_file() or not mine(f)):
            raise OutputPathError(f"{what}: {f} exists and is not a file fptq wrote; it would be overwritten "
                                  "(delete it or choose another directory)")
