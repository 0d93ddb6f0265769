"""The layering rules of docs/architecture.md, checked on the imports of fptq/ and conformance/.

Every ``import`` and ``from ... import`` statement (relative ones resolved) is
parsed with :mod:`ast`, wherever it stands (top level or inside a function).
The layers, from the bottom:

* ``fptq.spec``      imports the standard library and numpy only;
* ``fptq.reference`` imports ``fptq.spec`` (+ numpy, scipy (GPTQ's LAPACK), stdlib);
* ``fptq.backends``  imports ``fptq.spec`` and its own framework, the latter
  lazily: importing ``fptq.backends`` (base, registry) or a backend module
  imports no framework it does not own, and a framework is imported at a
  module's top level only in that framework's own helper modules
  (``torch_*``, ``numba_kernels``, ``cupy_*``) or under ``try/except ImportError``;
* the pipeline (``fptq.models``, ``fptq.eval``, ``fptq.data``, ``fptq.io``,
  ``fptq.cli``, ...) imports the layers below, never the reverse;
* inside the pipeline, ``fptq.models`` imports of the rest of the pipeline only
  ``fptq.io``, ``fptq.defaults`` and ``fptq.heap`` (it sits below the commands that use it),
  and its modules form the ordered levels of :data:`MODELS_ORDER`: a module
  imports only modules of lower levels, so the package has no cycle, however
  lazy an import (``docs/architecture.md``, "Inside fptq.models");
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


#: the levels of fptq.models, lowest first (docs/architecture.md, "Inside fptq.models"); a module imports
#: only modules of lower levels, inside functions too. A new module gets a level here and in the docs.
MODELS_ORDER = (
    ("foundations", {"_torch", "arch", "checkpoint_meta", "loading", "memory_shape", "memory_time", "finite", "trace",
                     "device"}),
    ("settings", {"config", "skeleton", "sources"}),
    ("layer passes", {"layer_pass"}),
    ("model surgery", {"calibrate", "rotate", "fold", "qlinear", "int8rows", "memory"}),
    ("planning and baselines", {"plan", "fakequant", "scale_tuning"}),
    ("layer tuning", {"layer_tuning"}),
    ("the run", {"quantize", "journal"}),
    ("the streamed run", {"stream"}),
    ("checkpoint shards", {"checkpoint_shards"}),
    ("checkpoint halves", {"checkpoint_read", "checkpoint_write"}),
    ("checkpoint", {"checkpoint"}),
)
#: what fptq.models may import from the rest of the pipeline
MODELS_PIPELINE_IMPORTS = ("fptq.io", "fptq.defaults", "fptq.heap")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(source: str, mod: str, is_package: bool = False, filename: str = "<source>"):
    """``(imported module, line, top_level, guarded)`` for every import in ``source``, the text of
    module ``mod`` (a package's ``__init__`` when ``is_package``).

    ``top_level``: not inside a function; ``guarded``: inside ``try: ... except ImportError``."""
    tree = ast.parse(source, filename)
    package = mod if is_package else mod.rpartition(".")[0]
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


def _sources(*dirs):
    """``(relative path, module name, is_package, text)`` of every Python file under ``dirs``."""
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            yield str(path.relative_to(ROOT)), _module_name(path), path.name == "__init__.py", path.read_text()


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


def _models_level(mod: str) -> int | None:
    """The level (index in MODELS_ORDER) of a module of fptq.models, None for any other module."""
    parts = mod.split(".")
    if parts[:2] != ["fptq", "models"] or len(parts) < 3:
        return None
    return next((i for i, (_, names) in enumerate(MODELS_ORDER) if parts[2] in names), -1)


def _models_violation(src: str, target: str) -> str | None:
    """Why ``src`` (a module of fptq.models) may not import ``target``, or None."""
    if _layer(target) != "pipeline":
        return None
    if not target.startswith("fptq.models."):
        if target == "fptq.models" or not target.startswith(MODELS_PIPELINE_IMPORTS):
            return f"fptq.models imports of the pipeline only {list(MODELS_PIPELINE_IMPORTS)}"
        return None
    lo, hi = _models_level(src), _models_level(target)
    for name, level in ((src, lo), (target.split(".")[2], hi)):
        if level == -1:
            return f"{name} has no level in MODELS_ORDER (tests/test_layering.py, docs/architecture.md)"
    if hi >= lo:
        return (f"{MODELS_ORDER[lo][0]} (level {lo}) may import only lower levels of fptq.models, "
                f"not {MODELS_ORDER[hi][0]} (level {hi})")
    return None


def _violations(sources=None):
    """Every broken rule in ``sources`` (``_sources`` items; default: fptq/ and conformance/)."""
    allowed_external = {"spec": {"numpy"}, "reference": {"numpy", "scipy"}, "backends": {"numpy"}, "conformance": {
        "numpy", "pytest", "_pytest", "pluggy", "hypothesis"}}
    may_import = {"spec": {"spec"}, "reference": {"spec", "reference"}, "backends": {"spec", "backends"},
                  "conformance": {"spec", "backends", "conformance"},
                  "pipeline": {"spec", "reference", "backends", "pipeline"}}
    for allowed in may_import.values():
        allowed.add("root")
    bad = []
    for rel, src, is_package, text in (_sources("fptq", "conformance") if sources is None else sources):
        layer = "pipeline" if src == "fptq" else _layer(src)  # fptq/__init__.py: the top
        in_models = _models_level(src) is not None
        for target, line, top, guarded in _imports(text, src, is_package, rel):
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
            elif in_models and (why := _models_violation(src, target)):
                bad.append(f"{where}: {why}")
    return bad


def test_layering_rules_hold():
    bad = _violations()
    assert not bad, "layering rules broken (docs/architecture.md):\n" + "\n".join(bad)


def _probe(rel: str, text: str) -> list[str]:
    """The violations of one made-up file (parsed from text; nothing is written into the package)."""
    return _violations([(rel, _module_name(ROOT / rel), rel.endswith("__init__.py"), text)])


def test_the_checker_sees_relative_and_nested_imports():
    """The parser resolves ``from .. import x`` and finds imports inside functions and try blocks."""
    text = "from .. import models\n\ndef f():\n    import torch\n\ntry:\n    import numba\nexcept ImportError:\n    pass\n"
    got = {(t, top, g) for t, _, top, g in _imports(text, "fptq.reference._layering_probe")}
    assert got == {("fptq.models", True, False), ("torch", False, False), ("numba", True, True)}
    bad = _probe("fptq/reference/_layering_probe.py", text)
    assert any("_layering_probe.py:1 imports fptq.models: reference may import only" in b for b in bad)
    assert any("_layering_probe.py:4 imports torch" in b for b in bad)


def test_models_order_is_checked_inside_functions_too():
    """An upward import inside fptq.models fails even when lazy (the old config -> plan -> rotate -> config
    cycle hid behind one); an unlisted module and an import of a command fail too."""
    bad = _probe("fptq/models/arch.py", "def f():\n    from .quantize import quantize_model\n")
    assert any("arch.py:2 imports fptq.models.quantize.quantize_model: foundations (level 0) may import only "
               "lower levels" in b for b in bad), bad
    assert _probe("fptq/models/quantize.py", "from .arch import Arch\nfrom ..defaults import BACKEND\n") == []
    bad = _probe("fptq/models/config.py", "from .config import QuantConfig\n")
    assert any("may import only lower levels" in b for b in bad), bad  # the same level is not lower
    bad = _probe("fptq/models/newthing.py", "from .arch import Arch\n")
    assert any("newthing has no level in MODELS_ORDER" in b for b in bad), bad
    bad = _probe("fptq/models/plan.py", "def f():\n    from ..compare import run_compare\n")
    assert any("fptq.models imports of the pipeline only" in b for b in bad), bad


def test_every_models_module_has_a_level():
    names = {p.stem for p in (ROOT / "fptq" / "models").glob("*.py") if p.stem != "__init__"}
    listed = set().union(*(n for _, n in MODELS_ORDER))
    assert names == listed, f"unlisted: {sorted(names - listed)}, listed but gone: {sorted(listed - names)}"


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
