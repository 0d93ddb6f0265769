"""Output paths checked before the expensive work starts.

Every command that writes something (``quantize --out``, ``eval --json``,
``compare --out``, ``report --plot``) calls one of these first, so a typo, a
file in the way, a dangling symbolic link or a read-only directory is an error
in the first second, not after minutes of calibration.

Writability is tested by creating (and removing) a probe file in the nearest
existing directory, so read-only mounts are caught even when running as root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["OutputPathError", "NonFiniteResult", "check_output_file", "check_output_dir", "check_finite_result",
           "is_within"]


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


def _check_creatable_dir(d: Path, what: str) -> None:
    """``d`` is a writable directory, or can be created (its nearest existing ancestor is one)."""
    a = Path(os.path.abspath(d))
    while not os.path.lexists(a):
        a = a.parent
    if a.is_symlink() and not a.exists():
        raise OutputPathError(f"{what}: {a} is a dangling symbolic link")
    if not a.is_dir():
        raise OutputPathError(f"{what}: {a} is not a directory, so {d} cannot be created")
    _probe_writable(a, what)


def check_output_file(path, what: str) -> Path:
    """Check that the file ``path`` can be (over)written; returns it as a Path.

    Refused: a directory, a dangling symbolic link, a path through a file, a read-only place.
    """
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise OutputPathError(f"{what}: {p} is a directory, not a file")
    if p.is_symlink() and not p.exists():
        raise OutputPathError(f"{what}: {p} is a dangling symbolic link")
    _check_creatable_dir(p.parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what}: {p} is not writable")
    return p


def check_output_dir(path, what: str, force: bool | None = None, replaceable=None, kind: str = "",
                     protect=()) -> Path:
    """Check an output directory before the work starts; returns it as a Path.

    Args:
        what: the argument's name for messages (``"--out"``).
        force: None = an existing directory is written into (files in it replaced);
            False = an existing path is an error; True = an existing path is replaced whole,
            but only if it is an empty directory or ``replaceable(path)`` is true.
        kind: what ``replaceable`` recognises, for the message (``"an fptq checkpoint"``).
        protect: paths being read (the input model, calibration text): the output may be
            neither one of them nor a directory holding one. The working directory and its
            parents are always protected from replacement.
    Raises:
        FileExistsError: it exists and ``force`` is False.
        OutputPathError: anything else that would fail or destroy data.
    """
    p = Path(path)
    if p.is_symlink():
        if not p.exists():
            raise OutputPathError(f"{what}: {p} is a dangling symbolic link")
        if force:
            raise OutputPathError(f"{what}: {p} is a symbolic link; --force replaces only a real directory "
                                  f"(give {p.resolve()} itself)")
    if os.path.lexists(p) and not p.is_dir():
        raise OutputPathError(f"{what}: {p} exists and is not a directory")
    for src in protect:
        if src is None or not os.path.lexists(src):
            continue
        if is_within(src, p):  # writing (or replacing) it would destroy the input; a new directory inside is fine
            raise OutputPathError(f"{what}: {p} would overlap the input {src} (it is the input or holds it); "
                                  "write somewhere else")
    if p.is_dir():
        if force is False:
            raise FileExistsError(f"{p} exists; pass --force to replace it")
        if force:
            if is_within(os.getcwd(), p):
                raise OutputPathError(f"{what}: {p} is the working directory or one of its parents; "
                                      "--force will not replace it")
            empty = not any(os.scandir(p))
            if not empty and not (replaceable is not None and replaceable(p)):
                raise OutputPathError(f"{what}: {p} is not empty and not {kind or 'replaceable'}; "
                                      "--force replaces only that (or an empty directory)")
            _probe_writable(p.parent, what)
        else:
            _probe_writable(p, what)
    else:
        _check_creatable_dir(p.parent if force is not None else p, what)
    return p
