"""The kernels' nibble constants against the formats table (fptq/spec/formats.py).

The CUDA kernels get their integer ranges as -D macros from the table; the nibble layout is written
by hand once, in ``cuda/common.cu``, and the numba kernels read it from the table at import into
``numba_kernels/packing.py``. This file fails when

* a ``#define`` of common.cu differs from the table, or a new numeric ``#define`` appears there
  without an entry here;
* a numba constant differs from the table;
* a bare nibble literal (``0xF``, ``0x0F``, ``0xF0``, ``0x88``, ``<< 4``, ``>> 4``, ``^ 8``,
  ``- 16``, ``[15]``...) appears in a .cu file or a numba kernel's code (comments and docstrings
  are not code), i.e. a constant written by hand instead of taken from the one place;
* the one sign-extension rule ``(u ^ 8) - 8`` disagrees with the spec on any of the 16 patterns.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from fptq import spec
from fptq.spec.formats import INT4_SIGN_OFFSET, NIBBLE_BITS, NIBBLE_MASK

PKG = Path(spec.__file__).resolve().parent.parent / "backends"
CUDA = PKG / "cuda"
NUMBA = PKG / "numba_kernels"

#: Every numeric #define of common.cu and the value the table gives it.
COMMON_DEFINES = {
    "FPTQ_NIBBLE_BITS": NIBBLE_BITS,
    "FPTQ_NIBBLE": NIBBLE_MASK,
    "FPTQ_INT4_SIGN_OFFSET": INT4_SIGN_OFFSET,
    "FPTQ_NIBBLE_MASK": NIBBLE_MASK * 0x01010101,                                       # 0x0F0F0F0F
    "FPTQ_SIGN_FLIP": (INT4_SIGN_OFFSET | INT4_SIGN_OFFSET << NIBBLE_BITS) * 0x01010101,  # 0x88888888
}

#: Literals that spell the nibble layout by hand (what the named constants are for).
BARE = re.compile(r"\b0x0*[fF]u?\b|\b0x[fF]0u?\b|\b0x88u?\b|<<\s*4\b|>>\s*4\b|\^\s*8\b|-\s*16\b|\[\s*15\s*\]"
                  r"|\b(?:np\.)?u?int8\(\s*15\s*\)")


def _c_code(text: str) -> str:
    """C source without comments and string literals."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def _py_code(text: str) -> list[tuple[int, str]]:
    """(line number, code) of a Python source without comments and strings (docstrings included)."""
    lines: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE):
            continue
        lines.setdefault(tok.start[0], []).append(tok.string)
    return [(n, " ".join(t)) for n, t in sorted(lines.items())]


def _defines(text: str) -> dict[str, int]:
    out = {}
    for name, value in re.findall(r"^\s*#define\s+(FPTQ_\w+)\s+(\S+)\s*$", _c_code(text), flags=re.M):
        if re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)[uU]?", value):
            out[name] = int(value.rstrip("uU"), 0)
    return out


def test_common_cu_defines_match_the_formats_table():
    got = _defines((CUDA / "common.cu").read_text())
    assert got == COMMON_DEFINES, {k: (got.get(k), COMMON_DEFINES.get(k)) for k in set(got) | set(COMMON_DEFINES)
                                   if got.get(k) != COMMON_DEFINES.get(k)}


def test_the_define_parser_catches_a_planted_difference():
    text = (CUDA / "common.cu").read_text().replace("#define FPTQ_SIGN_FLIP 0x88888888u",
                                                    "#define FPTQ_SIGN_FLIP 0x88888880u")
    assert _defines(text)["FPTQ_SIGN_FLIP"] != COMMON_DEFINES["FPTQ_SIGN_FLIP"]
    assert BARE.search(_c_code("int v = (b >> 4) & 0xFu;")) and not BARE.search(_c_code("// b >> 4"))


@pytest.mark.parametrize("path", sorted(CUDA.glob("*.cu")), ids=lambda p: p.name)
def test_no_bare_nibble_literal_in_cuda(path):
    code = _c_code(path.read_text())
    code = re.sub(r"^\s*#define\s+FPTQ_\w+\s+\S+\s*$", "", code, flags=re.M)   # the one place they are written
    hits = [m.group(0) for m in BARE.finditer(code)]
    assert not hits, f"{path.name}: {hits}: use FPTQ_NIBBLE_BITS / FPTQ_NIBBLE / fptq_sext4 (common.cu)"


def test_numba_constants_come_from_the_formats_table():
    from fptq.backends.numba_kernels import packing as P

    assert (int(P.NIBBLE), P.SHIFT, P.SIGN) == (NIBBLE_MASK, NIBBLE_BITS, INT4_SIGN_OFFSET)
    assert int(P.SIGN_FLIP) == COMMON_DEFINES["FPTQ_SIGN_FLIP"] & 0xFF
    assert int(P.HIGH_NIBBLE) == NIBBLE_MASK << NIBBLE_BITS


@pytest.mark.parametrize("path", sorted(NUMBA.glob("*.py")), ids=lambda p: p.name)
def test_no_bare_nibble_literal_in_numba(path):
    hits = [(n, code) for n, code in _py_code(path.read_text()) if BARE.search(code)]
    assert not hits, f"{path.name}: {hits}: use numba_kernels.packing's NIBBLE / SHIFT / SIGN_FLIP / sign_extend"


def test_one_sign_extension_rule_matches_the_spec():
    pytest.importorskip("numba")
    from fptq.backends.numba_kernels import packing as P

    u = np.arange(16, dtype=np.uint8)
    want = spec.unpack_int4(u[:, None], 1, signed=True)[:, 0]         # the low nibble of byte u
    assert [int(P.sign_extend(v)) for v in u] == want.tolist()
    assert [(int(v) ^ INT4_SIGN_OFFSET) - INT4_SIGN_OFFSET for v in u] == want.tolist()   # fptq_sext4
