"""Reading the ELF headers of a CUDA cubin (pure Python, no CUDA): its extent and a validity check.

Why this exists: CuPy's ``nvrtc.getCUBIN`` drops the last byte of NVRTC's
binary output (it treats it as a C string's trailing NUL), so a cubin saved
from it is one byte short of its program-header table, which ``nvdisasm``
rejects and ``cuModuleLoad`` may refuse or read past.
:mod:`fptq.backends.cupy_compile` takes the bytes from NVRTC itself and checks
them here: a complete cubin's length equals its ELF extent, the end of the
furthest header table, section or segment it declares.

Only what a cubin uses is read: ELF64, little endian (``EI_CLASS`` 2,
``EI_DATA`` 1), machine ``EM_CUDA`` (190).
"""

from __future__ import annotations

import struct

__all__ = ["EM_CUDA", "elf_extent", "check_cubin"]

EM_CUDA = 190
_SHT_NOBITS = 8
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr, 64 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")         # Elf64_Shdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr, 56 bytes


def _header(data: bytes, what: str) -> tuple:
    if len(data) < _EHDR.size:
        raise ValueError(f"{what}: {len(data)} bytes is shorter than an ELF64 header ({_EHDR.size})")
    h = _EHDR.unpack_from(data)
    ident = h[0]
    if ident[:4] != b"\x7fELF":
        raise ValueError(f"{what}: not an ELF file (magic {ident[:4]!r})")
    if ident[4] != 2 or ident[5] != 1:
        raise ValueError(f"{what}: not a little-endian ELF64 file (class {ident[4]}, data {ident[5]})")
    return h


def elf_extent(data: bytes, what: str = "cubin") -> int:
    """The number of bytes the ELF file ``data`` declares: the furthest end of its ELF header,
    program-header table, section-header table, file-backed sections and segments.

    Tables and entries that lie past ``len(data)`` still count (that is how a short file shows:
    its extent is larger than its length); entries are only read where they are present.
    """
    h = _header(data, what)
    phoff, shoff, ehsize, phentsize, phnum, shentsize, shnum = h[5], h[6], h[8], h[9], h[10], h[11], h[12]
    end = max(ehsize, phoff + phnum * phentsize if phnum else 0, shoff + shnum * shentsize if shnum else 0)
    for i in range(shnum):
        off = shoff + i * shentsize
        if off + _SHDR.size <= len(data):
            sh_type, sh_offset, sh_size = (lambda s: (s[1], s[4], s[5]))(_SHDR.unpack_from(data, off))
            if sh_type != _SHT_NOBITS:
                end = max(end, sh_offset + sh_size)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + _PHDR.size <= len(data):
            p = _PHDR.unpack_from(data, off)
            end = max(end, p[2] + p[5])   # p_offset + p_filesz
    return end


def check_cubin(data: bytes, what: str = "cubin") -> None:
    """ValueError naming ``what`` unless ``data`` is a whole CUDA ELF file (machine EM_CUDA, length == extent)."""
    h = _header(data, what)
    if h[2] != EM_CUDA:
        raise ValueError(f"{what}: ELF machine {h[2]}, not EM_CUDA ({EM_CUDA})")
    n = elf_extent(data, what)
    if n != len(data):
        raise ValueError(f"{what}: {len(data)} bytes but its ELF headers declare {n} "
                         f"({'truncated' if n > len(data) else 'trailing bytes'})")
