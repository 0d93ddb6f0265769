"""Bounded reads of the small files fptq reads whole (config.json, tokenizer files, text).

:func:`read_bounded` reads a *regular* file of at most ``limit`` bytes and refuses
anything else before reading a byte: a FIFO (which would block), a device such
as ``/dev/zero`` reached through a symbolic link (which never ends), a directory,
or a file larger than the limit. The file is opened non-blocking and checked
again on the open descriptor, so a path swapped for a FIFO in between cannot
hang the reader, and at most ``limit + 1`` bytes are ever read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["InputFileError", "file_sha256", "read_bounded", "read_text_bounded", "check_regular_file", "CONFIG_LIMIT", "SIDE_FILE_LIMIT", "TEXT_LIMIT"]

#: config.json and other small JSON files
CONFIG_LIMIT = 16 * 1024 * 1024
#: files written beside a model's weights (tokenizer.json, vocabularies, the plan)
SIDE_FILE_LIMIT = 256 * 1024 * 1024
#: one text file (--ppl, --calib); the largest built-in text (wiki) is 5 MB
TEXT_LIMIT = 512 * 1024 * 1024


class InputFileError(ValueError):
    """An input file is not a regular file, is too large, or cannot be read."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular_file(path, limit: int, what: str = "") -> int:
    """The size of ``path`` if it is (or links to) a regular file of at most ``limit`` bytes;
    else InputFileError naming it (and ``what`` it is for)."""
    label = f"{what}: " if what else ""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputFileError(f"{label}{path}: missing or unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{label}{path} is {_kind(st.st_mode)}; fptq reads regular files only")
    if st.st_size > limit:
        raise InputFileError(f"{label}{path} has {st.st_size} bytes, more than the {limit} this file may have")
    return st.st_size


def read_bounded(path, limit: int, what: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (see the module docstring)."""
    label = f"{what}: " if what else ""
    check_regular_file(path, limit, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputFileError(f"{label}{path}: cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"{label}{path} is {_kind(st.st_mode)}; fptq reads regular files only")
        chunks, n = [], 0
        while n <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - n))
            if not block:
                break
            chunks.append(block)
            n += len(block)
    except OSError as e:
        raise InputFileError(f"{label}{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if n > limit:
        raise InputFileError(f"{label}{path} grew past the {limit} bytes this file may have while being read")
    return b"".join(chunks)


def read_text_bounded(path, limit: int = TEXT_LIMIT, what: str = "") -> str:
    """:func:`read_bounded` decoded as UTF-8 (ValueError naming the file and the byte otherwise)."""
    data = read_bounded(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{Path(path)}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 4 MiB blocks (never whole into memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
