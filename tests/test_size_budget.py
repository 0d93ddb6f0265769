"""The size budget of fptq/: no function over 60 lines, no module over 500 (STYLE.md; issue 21).

Every module of ``fptq/`` is parsed with :mod:`ast`. A function's size is its
source span (``def`` line, decorators excluded, to its last line, docstring and
comments included: what a reader has to read); a module's is its line count. Nested
functions and methods are measured on their own and inside their parent. The
allow-list below is for generated kernel code only, each entry with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_LINES = 60
MODULE_LINES = 500

#: (path relative to the repository, function name or None for the module) -> why it may be larger.
#: Generated kernel code only; keep it empty unless a kernel generator truly needs one long body.
ALLOWED: dict[tuple[str, str | None], str] = {}


def _function_sizes(path: Path):
    """``(qualified name, lines, first line)`` of every function and method in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, child.end_lineno - child.lineno + 1, child.lineno))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def over_budget(root: Path = ROOT / "fptq") -> list[str]:
    """Every function and module of ``root`` over its budget and not allowed, as readable lines."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        n = len(path.read_text().splitlines())
        if n > MODULE_LINES and (rel, None) not in ALLOWED:
            bad.append(f"{rel}: {n} lines (module budget {MODULE_LINES})")
        for name, lines, first in _function_sizes(path):
            if lines > FUNCTION_LINES and (rel, name) not in ALLOWED:
                bad.append(f"{rel}:{first} {name}: {lines} lines (function budget {FUNCTION_LINES})")
    return bad


def test_fptq_is_within_its_size_budget():
    bad = over_budget()
    assert not bad, "over the size budget (split it, see STYLE.md):\n" + "\n".join(bad)


def test_allow_list_names_existing_code():
    """A stale allow-list entry would silently allow whatever later takes its name."""
    for (rel, name), why in ALLOWED.items():
        assert why.strip(), f"{rel} {name}: an allowed entry needs its reason"
        path = ROOT / rel
        assert path.is_file(), f"allow-list names a missing file {rel}"
        if name is not None:
            assert name in {n for n, _, _ in _function_sizes(path)}, f"allow-list names a missing function {rel} {name}"


def test_the_budget_sees_long_functions_methods_and_modules(tmp_path):
    """Planted: a 61-line method and a 501-line module are reported; a 60-line function is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (pkg / "ok.py").write_text("def fits():\n" + body)                       # 60 lines
    (pkg / "long.py").write_text("class C:\n    def m(self):\n" + "    " + body.replace("\n", "\n    ").rstrip()
                                 + "\n        y = 0\n")                         # m: 61 lines
    (pkg / "big.py").write_text("x = 0\n" * 501)
    got = over_budget(pkg)
    assert any("long.py:2 C.m: 61 lines" in b for b in got), got
    assert any("big.py: 501 lines" in b for b in got), got
    assert not any("ok.py" in b for b in got), got
