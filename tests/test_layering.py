"""The layering rules of docs/architecture.md, checked on the imports of fptq/ and conformance/.

Every ``import`` and ``from ... import`` statement (relative ones resolved) is
parsed with :mod:`ast`, wherever it stands (top level or inside a function).
The layers, from the bottom:

* ``fptq.spec``      imports the standard library and numpy only;
* ``fptq.reference`` imports ``fptq.spec`` (+ numpy, stdlib);
* ``fptq.backends``  imports ``fptq.spec`` and its own framework, the latter
  lazily: importing ``fptq.backends`` (base, registry) or a backend module
  imports no framework it does not own, and a framework is imported at a
  module's top level only in that framework's own helper modules
  (``torch_*``, ``numba_kernels``, ``cupy_*``) or under ``try/except ImportError``;
* the pipeline (``fptq.models``, ``fptq.eval``, ``fptq.data``, ``fptq.io``,
  ``fptq.cli``, ...) imports the layers below, never the reverse;
* nothing in ``fptq`` imports ``conformance`` or ``tests`` (one exception:
  the ``fptq conformance`` command runs the installed suite);
* ``conformance/`` (the suite any backend is run against) imports
  ``fptq.spec`` and ``fptq.backends`` only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STDLIB = set(sys.stdlib_module_names)
FRAMEWORKS = {"torch": "torch", "numba": "numba", "llvmlite": "numba", "cupy": "cupy", "cupyx": "cupy",
              "cupy_backends": "cupy"}

#: (importing file, imported module prefix, why it is allowed)
EXCEPTIONS = [
    ("fptq/cli.py", "fptq.conformance", "the `fptq conformance` command runs the installed suite"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """``(imported module, line, top_level, guarded)`` for every import in ``path``.

    ``top_level``: not inside a function; ``guarded``: inside ``try: ... except ImportError``."""
    tree = ast.parse(path.read_text(), str(path))
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []

    def _visit(node, in_func=False, guarded=False):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Try):
                g = guarded or any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                                                  "ModuleNotFoundError")
                                   for h in child.handlers)
                for stmt in child.body:
                    _visit(ast.Module(body=[stmt], type_ignores=[]), in_func, g)
                for part in (child.handlers, child.orelse, child.finalbody):
                    for stmt in part:
                        _visit(ast.Module(body=[stmt], type_ignores=[]), in_func, guarded)
                continue
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, not in_func, guarded) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - (child.level - 1)] + ([child.module] if child.module else []))
                else:
                    base = child.module
                # each name may be a submodule (from fptq import spec) or an attribute: either way
                # base.name lies in the layer of the module it names or of its package
                out.extend((f"{base}.{a.name}", child.lineno, not in_func, guarded) for a in child.names)
            _visit(child, f, guarded)

    _visit(tree)
    return out


def _files(*dirs):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def _layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "conformance":
        return "conformance"
    if parts[0] == "tests":
        return "tests"
    if parts[0] != "fptq":
        return "external"
    if mod in ("fptq", "fptq.__version__"):
        return "root"  # the package itself (its version), light by test_importing_..._loads_no_framework
    if len(parts) > 1 and parts[1] in ("spec", "reference", "backends", "conformance"):
        return parts[1]
    return "pipeline"


def _framework_of_module(mod: str) -> str | None:
    """The framework a backends helper module belongs to (by its name), if any."""
    last = mod.split(".")[2] if mod.count(".") >= 2 else ""
    for fw in ("torch", "numba", "cupy"):
        if last.startswith(fw):
            return fw
    return None


def _violations():
    allowed_external = {"spec": {"numpy"}, "reference": {"numpy"}, "backends": {"numpy"}, "conformance": {
        "numpy", "pytest", "_pytest", "pluggy", "hypothesis"}}
    may_import = {"spec": {"spec"}, "reference": {"spec", "reference"}, "backends": {"spec", "backends"},
                  "conformance": {"spec", "backends", "conformance"},
                  "pipeline": {"spec", "reference", "backends", "pipeline"}}
    for allowed in may_import.values():
        allowed.add("root")
    bad = []
    for path in _files("fptq", "conformance"):
        src = _module_name(path)
        layer = "pipeline" if src == "fptq" else _layer(src)  # fptq/__init__.py: the top
        rel = str(path.relative_to(ROOT))
        for target, line, top, guarded in _imports(path):
            root = target.split(".")[0]
            where = f"{rel}:{line} imports {target}"
            if any(rel == f and target.startswith(p) for f, p, _ in EXCEPTIONS):
                continue
            if root in STDLIB or root == "__future__":
                continue
            t_layer = _layer(target)
            if root not in ("fptq", "conformance", "tests"):
                if layer == "pipeline":
                    continue
                if layer == "backends" and root in FRAMEWORKS:
                    own = _framework_of_module(src) or ("numba" if ".numba_kernels" in src else None)
                    if not top:
                        continue  # lazy: inside a function
                    if own == FRAMEWORKS[root] or guarded:
                        continue  # a framework's own helper module, or a guarded import
                    bad.append(f"{where}: a backend imports its framework lazily (in a function or under "
                               "try/except ImportError), or only in that framework's own helper module")
                    continue
                if root not in allowed_external.get(layer, set()):
                    bad.append(f"{where}: {layer} may import only {sorted(allowed_external[layer])} from outside fptq")
                continue
            if t_layer in ("conformance", "tests") and layer != "conformance":
                bad.append(f"{where}: nothing in fptq imports conformance or tests")
                continue
            if t_layer not in may_import[layer]:
                bad.append(f"{where}: {layer} may import only {sorted(may_import[layer])} of fptq")
    return bad


def test_layering_rules_hold():
    bad = _violations()
    assert not bad, "layering rules broken (docs/architecture.md):\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The parser resolves ``from .. import x`` and finds imports inside functions and try blocks."""
    src = ROOT / "fptq" / "reference" / "_layering_probe.py"
    src.write_text("from .. import models\n\ndef f():\n    import torch\n\ntry:\n    import numba\n"
                   "except ImportError:\n    pass\n")
    try:
        got = {(t, top, g) for t, _, top, g in _imports(src)}
        assert got == {("fptq.models", True, False), ("torch", False, False), ("numba", True, True)}
        bad = _violations()
        assert any("_layering_probe.py:1 imports fptq.models: reference may import only" in b for b in bad)
        assert any("_layering_probe.py:4 imports torch" in b for b in bad)
    finally:
        src.unlink()


@pytest.mark.parametrize("modules,forbidden", [
    (["fptq", "fptq.spec", "fptq.reference", "fptq.backends", "fptq.backends.registry",
      "fptq.backends.numpy_backend", "fptq.backends.numba_backend"],
     ["torch", "numba", "cupy", "transformers", "fptq.models", "fptq.conformance", "conformance"]),
    (["fptq.cli"], ["torch", "numba", "transformers"]),
])
def test_importing_the_lower_layers_loads_no_framework(modules, forbidden):
    """Laziness measured, not parsed: a fresh interpreter imports the modules and lists sys.modules."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print([m for m in {forbidden!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"importing {modules} loaded {out.stdout.strip()}"
