"""Atomic directory writes: a crash never leaves a half-written directory under the real name.

:func:`atomic_directory` yields a fresh temporary directory ``.<name>.tmp-*`` *in
the same parent* as the destination (so the final rename stays on one
filesystem). On a clean exit the permissions of everything in it are set from
the umask (``0o777 & ~umask`` for directories, ``0o666 & ~umask`` for files:
``mkdtemp`` alone would leave it 0700), every file and directory is fsynced,
and it is renamed to the destination with ``os.replace``. On any exception,
``KeyboardInterrupt`` included, it is deleted.

Replacing an existing destination takes two renames (old -> ``.<name>.old-*``,
new -> name) and then deletes the old one. If the second rename fails, the
first is undone (rollback) before the error propagates, so the destination
is either the complete old directory or the complete new one. Only a crash
of the process itself (SIGKILL, power loss) between the two renames can leave
the complete old copy under the ``.old`` name and nothing under the real name;
:func:`fptq.io.outputs.check_output_dir` names such leftovers on the next run
(and refuses to write while the ``.old`` copy is all that is left).

SIGINT, SIGTERM, SIGHUP and SIGQUIT are *held* (blocked) from the first rename
until the old copy is deleted and the parent directory synced: an interruption
there can neither leave a half-deleted ``.old-*`` nor report failure for a
directory that is already in place. A signal that arrived meanwhile is consumed
and recorded (:func:`take_deferred_signals`); the caller finishes and says so.

The caller decides which destinations may be replaced (``check``):
:func:`fptq.io.outputs.check_output_dir` refuses files, symbolic links,
directories that are not of the expected kind, the working directory, its
parents and the inputs being read.

:func:`sigterm_as_interrupt` makes SIGTERM (what ``timeout``, docker and slurm
send), SIGHUP (a closed terminal) and SIGQUIT raise :class:`Terminated`, a
``KeyboardInterrupt``, so the same cleanup runs as for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

__all__ = ["Terminated", "atomic_directory", "fsync_tree", "apply_umask", "current_umask", "sigterm_as_interrupt",
           "held_signals", "take_deferred_signals", "TERMINATING_SIGNALS", "in_progress"]

#: the signals handled like SIGTERM by :func:`sigterm_as_interrupt` (those that exist on this platform)
TERMINATING_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n))
#: the signals held during a swap
_HELD = (signal.SIGINT, *TERMINATING_SIGNALS)
_DEFERRED: list[int] = []
_IN_PROGRESS: set = set()


class Terminated(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGQUIT arrived inside :func:`sigterm_as_interrupt` (cleanup runs as for
    Ctrl-C); ``signum`` is the signal, the exit status is ``128 + signum``."""

    def __init__(self, message: str = "terminated", signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


def take_deferred_signals() -> list[int]:
    """The signals held and consumed by :func:`held_signals` since the last call (and forget them)."""
    out = list(_DEFERRED)
    _DEFERRED.clear()
    return out


@contextlib.contextmanager
def held_signals():
    """Hold SIGINT, SIGTERM, SIGHUP and SIGQUIT inside the block (blocked in this thread, and handled by a
    handler that only records them); at its end, consume any that arrived (recorded for
    :func:`take_deferred_signals`) and restore the mask and the handlers. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Python runs signal handlers in the main thread whichever thread the kernel picked (worker threads of
    # numba or torch do not block them), so recording handlers catch what the mask cannot
    handlers = {sig: signal.signal(sig, _record_signal) for sig in _HELD}
    mask = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if mask else None
    try:
        yield
    finally:
        if mask:
            for sig in sorted(set(signal.sigpending()) & set(_HELD)):
                if signal.sigtimedwait([sig], 0) is not None:
                    _DEFERRED.append(int(sig))
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _record_signal(signum, frame):
    _DEFERRED.append(int(signum))


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


def current_umask() -> int:
    """The process umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """chmod ``path`` and everything under it to ``0o777 & ~umask`` (dirs) / ``0o666 & ~umask`` (files)."""
    mask = current_umask()
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def _swap(tmp: Path, dest: Path) -> None:
    """Replace the directory ``dest`` by ``tmp``, all or nothing (rollback if the second rename fails)."""
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rmdir(old)  # reserve a unique name; os.replace needs it absent (or empty)
    os.replace(dest, old)  # (signals are held by the caller from here on)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)  # rollback: the old directory is back under its name
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(dest, overwrite: bool = False, check=None, workdir=None):
    """Write a directory atomically: ``with atomic_directory(out) as tmp: ...write into tmp...``.

    Args:
        dest: the final directory path.
        overwrite: replace an existing ``dest``; otherwise an existing ``dest``
            raises FileExistsError before anything is written.
        check: optional ``check(dest)`` that raises if ``dest`` must not be
            written or replaced; called before anything is written and again
            right before the rename (the destination may have changed meanwhile).
        workdir: an existing directory (next to ``dest``, same filesystem) to fill and rename instead of a
            fresh temporary one: a resumable run's (:mod:`fptq.models.journal`); on an exception it is kept.
    Raises:
        FileExistsError: ``dest`` exists (or is a dangling symlink) and ``overwrite`` is false.
        NotADirectoryError: ``dest`` exists and is not a plain directory (a file, a symlink):
            only directories are replaced.
    """
    dest = Path(dest).absolute()

    def _check():
        if os.path.lexists(dest):
            if not overwrite:
                raise FileExistsError(f"{dest} already exists (pass overwrite/--force to replace it)")
            if dest.is_symlink() or not dest.is_dir():
                raise NotADirectoryError(f"{dest} exists and is not a directory; only a directory is replaced")
        if check is not None:
            check(dest)

    _check()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    _IN_PROGRESS.add(tmp)
    try:
        yield tmp
        apply_umask(tmp)
        fsync_tree(tmp)
        _check()
        with held_signals():  # from the first rename until the old copy is gone: all or nothing
            if os.path.lexists(dest):
                _swap(tmp, dest)
            else:
                os.replace(tmp, dest)
            _fsync_dir(dest.parent)
    except BaseException:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _IN_PROGRESS.discard(tmp)


def in_progress() -> frozenset:
    """The temporary directories this process is writing now (not leftovers of an interrupted run)."""
    return frozenset(_IN_PROGRESS)


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated by signal {signum}", signum)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside this block SIGTERM, SIGHUP and SIGQUIT raise :class:`Terminated` (main thread only;
    elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
