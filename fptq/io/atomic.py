"""Atomic directory writes: a crash never leaves a half-written directory under the real name.

:func:`atomic_directory` yields a fresh temporary directory *in the same parent*
as the destination (so the final rename stays on one filesystem). On a clean
exit every file in it is fsynced, the directory is fsynced, and it is renamed
to the destination with ``os.replace``. On an exception it is deleted.

Replacing an existing destination takes two renames (old -> ``.<name>.old-*``,
new -> name) and then deletes the old one; a crash between the two renames
leaves the complete old copy under the ``.old`` name and nothing under the
real name, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_directory", "fsync_tree"]


def fsync_tree(path: Path) -> None:
    """fsync every regular file under ``path``, then every directory (bottom-up)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(dest, overwrite: bool = False):
    """Write a directory atomically: ``with atomic_directory(out) as tmp: ...write into tmp...``.

    Args:
        dest: the final directory path.
        overwrite: replace an existing ``dest``; otherwise an existing ``dest``
            raises FileExistsError before anything is written.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists (pass overwrite/--force to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rmdir(old)  # reserve a unique name; os.replace needs it absent (or empty)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
