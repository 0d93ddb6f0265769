"""fptq/backends/cubin_elf.py on hand-built ELF files (no CUDA needed; the compile test checks real cubins).

The layout mirrors a cubin's: ELF header, sections, the section-header table,
then the program-header table last, so that dropping the final byte (what
CuPy's ``getCUBIN`` does) cuts the last program header.
"""

from __future__ import annotations

import struct

import pytest

from fptq.backends.cubin_elf import EM_CUDA, check_cubin, elf_extent

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
PHDR = struct.Struct("<IIQQQQQQ")


def make_elf(machine=EM_CUDA, nobits_size=0, payload=b"\x11" * 40) -> bytes:
    """Header, a PROGBITS section of ``payload``, a NOBITS section (.bss-like, no file bytes), three
    section headers (null, progbits, nobits), then two program headers at the very end."""
    data_off = EHDR.size
    shoff = data_off + len(payload)
    phoff = shoff + 3 * SHDR.size
    shdrs = (SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
             + SHDR.pack(1, 1, 0, 0, data_off, len(payload), 0, 0, 4, 0)
             + SHDR.pack(2, 8, 0, 0, shoff, nobits_size, 0, 0, 4, 0))
    phdrs = PHDR.pack(1, 5, data_off, 0, 0, len(payload), len(payload), 8) + PHDR.pack(6, 4, phoff, 0, 0, 112, 112, 8)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    hdr = EHDR.pack(ident, 2, machine, 1, 0, phoff, shoff, 0, EHDR.size, PHDR.size, 2, SHDR.size, 3, 0)
    return hdr + payload + shdrs + phdrs


def test_extent_of_a_whole_file_is_its_length():
    elf = make_elf()
    assert elf_extent(elf) == len(elf)
    check_cubin(elf)


def test_nobits_sections_take_no_file_bytes():
    elf = make_elf(nobits_size=10_000)
    assert elf_extent(elf) == len(elf)


def test_one_byte_short_is_refused():
    """What CuPy's getCUBIN returned: the last program header loses its last (zero) byte."""
    elf = make_elf()
    assert elf[-1] == 0
    assert elf_extent(elf[:-1]) == len(elf)
    with pytest.raises(ValueError, match=rf"cubin: {len(elf) - 1} bytes but its ELF headers declare {len(elf)} "
                                         r"\(truncated\)"):
        check_cubin(elf[:-1])


def test_trailing_bytes_are_refused():
    with pytest.raises(ValueError, match="trailing bytes"):
        check_cubin(make_elf() + b"\0")


def test_a_section_past_the_tables_counts():
    elf = bytearray(make_elf())
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    SHDR.pack_into(elf, shoff + SHDR.size, 1, 1, 0, 0, len(elf), 9, 0, 0, 4, 0)  # data beyond the end
    assert elf_extent(bytes(elf)) == len(elf) + 9


@pytest.mark.parametrize("bad,msg", [(b"\x7fELX" + bytes(60), "not an ELF file"), (b"\x7fELF", "shorter than"),
                                     (b"\x7fELF" + bytes([1, 1]) + bytes(58), "not a little-endian ELF64")])
def test_not_an_elf64_file(bad, msg):
    with pytest.raises(ValueError, match=msg):
        elf_extent(bad)


def test_another_machine_is_refused():
    with pytest.raises(ValueError, match=r"ELF machine 62, not EM_CUDA \(190\)"):
        check_cubin(make_elf(machine=62), "x.o")
