"""The pytest plugin of the fptq conformance suite (entry point ``pytest11: fptq-conformance``).

pytest loads it in every run of an environment where fptq is installed, so it
is **inert** unless the run is about the suite: at import it touches nothing
but pytest and the standard library; it registers its options (``--fptq-*``
always, and the short ``--backend``/``--xfails`` only where no other plugin or
conftest owns those names); Hypothesis profiles, the report header and backend
selection happen only in a run that targets the suite (its directory or
``--pyargs fptq.conformance`` on the command line, an ``--fptq-*`` option) or
that collects one of its tests. Another project's tests see no fixture, no
header line, no changed Hypothesis default and no error from it.

Backend selection (never guessed):

* ``--backend NAME`` (= ``--fptq-backend``): a registered name (``numpy``,
  ``numba``, ``torch``, an entry point of the ``fptq.backends`` group) or
  ``package.module:Class``;
* else the environment variable ``FPTQ_BACKEND``;
* else, only for the project's own run (a bare ``pytest`` in the repository
  root, which collects ``tests/`` and ``conformance/`` through ``testpaths``),
  the NumPy reference ``numpy``, announced in the report header;
* else, when conformance tests are collected: a usage error saying how to pick one.

A backend that raises :class:`fptq.backends.BackendUnavailable` skips the
whole suite with its reason. ``--xfails FILE`` (= ``--fptq-xfails``) lists test
ids a third party expects to fail. ``--fptq-profile ci|thorough|large`` picks
the Hypothesis budget and the fixed tile-edge cases (:data:`PROFILES`); an
explicit ``--hypothesis-profile`` still wins for the Hypothesis part.

A suite whose version stamp (``SUITE_VERSION`` in its ``__init__``) differs
from the installed ``fptq.__version__`` is refused with a usage error: its
tests and vectors were written for another ``fptq.spec``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENV_VAR = "FPTQ_BACKEND"
ENTRY_POINT_NAME = "fptq-conformance"
PYARGS_NAME = "fptq.conformance"

#: ``--fptq-profile`` -> (Hypothesis profile, whether every fixed case of test_large.py runs)
PROFILES = {"ci": ("fptq-ci", False), "thorough": ("fptq-thorough", False), "large": ("fptq-ci", True)}
DEFAULT_PROFILE = "ci"

#: Examples per property in the ``ci`` profile: enough that every planted bug of
#: tests/test_conformance_bites.py is found for any seed (see conformance/README.md).
CI_EXAMPLES = 100
THOROUGH_EXAMPLES = 2000

#: short option -> (dest, help); registered only where the name is free
_ALIASES = {
    "--backend": ("fptq_backend", "backend under test (= --fptq-backend)"),
    "--xfails": ("fptq_xfails", "expected-failure ids of this backend (= --fptq-xfails)"),
}


# ---------------------------------------------------------------------------
# options


def _option_names(parser) -> set[str]:
    """Every option string registered so far (pytest keeps them per group; read defensively)."""
    groups = [*getattr(parser, "_groups", []), getattr(parser, "_anonymous", None)]
    return {name for g in groups if g is not None for opt in getattr(g, "options", []) for name in opt.names()}


def _add_aliases(parser) -> None:
    taken = _option_names(parser)
    group = parser.getgroup("fptq", "fptq conformance suite")
    for opt, (dest, text) in _ALIASES.items():
        if opt not in taken:
            group.addoption(opt, dest=dest, default=None, help=text)


def pytest_addoption(parser, pluginmanager):
    group = parser.getgroup("fptq", "fptq conformance suite")
    group.addoption("--fptq-backend", dest="fptq_backend", default=None, metavar="NAME",
                    help=f"backend under test: a registered name (numpy, numba, torch, torch-cuda, entry points of "
                         f"'fptq.backends') or package.module:Class; default: ${ENV_VAR}")
    group.addoption("--fptq-xfails", dest="fptq_xfails", default=None, metavar="FILE",
                    help="file of test ids (one per line, # comments) expected to fail for this backend")
    group.addoption("--fptq-profile", dest="fptq_profile", default=None, choices=sorted(PROFILES),
                    help="ci (default: 100 derandomized examples, reduced tile-edge cases), thorough (2000 random "
                         "examples), large (every tile-edge case, for GPU kernels)")
    group.addoption("--fptq-op", dest="fptq_op", action="append", default=None, metavar="NAME",
                    help="run only the tests of this operation (e.g. w4a8_matmul; repeatable); -k EXPR selects "
                         "by test name")
    if pluginmanager.get_name(sys.modules[__name__]) != ENTRY_POINT_NAME:
        # registered by name (-p) or by the suite's conftest: the user asked for the suite, add the short names now
        _add_aliases(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Autoloaded: add ``--backend``/``--xfails`` after the initial conftests, where still free."""
    result = yield
    if early_config.pluginmanager.get_name(sys.modules[__name__]) == ENTRY_POINT_NAME:
        _add_aliases(parser)
    return result


# ---------------------------------------------------------------------------
# which runs are about the suite


def is_suite_dir(path: Path) -> bool:
    """A directory holding an fptq conformance suite (a checkout's ``conformance/`` or ``fptq/conformance``)."""
    return all((path / name).is_file() for name in ("__init__.py", "plugin.py", "pytest_helpers.py", "large_cases.py"))


def _suite_dir_of(path: Path) -> Path | None:
    for d in (path, *path.parents):
        if is_suite_dir(d):
            return d
    return None


def targets_suite(config) -> bool:
    """Whether the command line names the suite: an --fptq-* option, ``--pyargs fptq.conformance[...]``,
    a path inside a suite, or a directory whose ``conformance/`` is one (a checkout's root)."""
    if any(config.getoption(o, None) for o in ("fptq_backend", "fptq_xfails", "fptq_profile", "fptq_op")):
        return True
    pyargs = config.getoption("pyargs", False)
    for arg in config.args:
        arg = str(arg).split("::", 1)[0]
        if pyargs and (arg == PYARGS_NAME or arg.startswith(PYARGS_NAME + ".")):
            return True
        p = Path(config.invocation_params.dir, arg)
        if not p.exists():
            continue
        p = p.resolve()
        if _suite_dir_of(p if p.is_dir() else p.parent) or is_suite_dir(p / "conformance"):
            return True
    return False


# ---------------------------------------------------------------------------
# Hypothesis profiles (registered and loaded only for the suite's runs)


def register_profiles() -> None:
    """The suite's Hypothesis profiles, named ``fptq-*``: Hypothesis has a built-in ``ci`` profile (loaded
    by itself where ``$CI`` is set) that a same-named profile here would replace in a mixed run."""
    from hypothesis import HealthCheck, Phase, settings

    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    # no "explain" phase: it re-runs failing examples to find covering lines, slow and not needed here
    phases = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
    common = dict(deadline=None, suppress_health_check=quiet, phases=phases, print_blob=True)
    settings.register_profile("fptq-ci", max_examples=CI_EXAMPLES, derandomize=True, **common)
    settings.register_profile("fptq-ci-random", max_examples=CI_EXAMPLES, database=None, **common)
    settings.register_profile("fptq-thorough", max_examples=THOROUGH_EXAMPLES, **common)


def _activate_profiles(config) -> None:
    sel = selection(config)
    if sel.profiles_loaded:
        return
    sel.profiles_loaded = True
    register_profiles()
    if not config.getoption("hypothesis_profile", None):  # an explicit --hypothesis-profile wins
        from hypothesis import settings

        settings.load_profile(PROFILES[sel.profile][0])


# ---------------------------------------------------------------------------
# selection


@dataclass
class Selection:
    profile: str = DEFAULT_PROFILE
    targeted: bool = False
    resolved: bool = False
    profiles_loaded: bool = False
    name: str | None = None
    source: str = ""
    backend: object = None
    unavailable: str | None = None
    xfails: list[str] = field(default_factory=list)
    unmatched_xfails: list[str] = field(default_factory=list)


_ATTR = "_fptq_conformance"


def selection(config) -> Selection:
    """The run's :class:`Selection` (kept on the config object, so that every copy of the suite sees it)."""
    sel = getattr(config, _ATTR, None)
    if sel is None:
        sel = Selection(profile=config.getoption("fptq_profile", None) or DEFAULT_PROFILE)
        setattr(config, _ATTR, sel)
    return sel


def how_to_pick() -> str:
    from fptq.backends import registered_backends

    return (f"the fptq conformance suite needs a backend: pass --backend NAME (or --fptq-backend NAME) or set "
            f"{ENV_VAR}=NAME, where NAME is a registered backend ({', '.join(sorted(registered_backends()))}) "
            "or 'package.module:Class', e.g.  pytest --pyargs fptq.conformance --backend numpy")


def _read_xfails(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise pytest.UsageError(f"--xfails: no such file: {path}")
    ids = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids


def _resolve(config) -> Selection:
    """Pick and start the backend (once): option, environment, or the project's own run."""
    sel = selection(config)
    if sel.resolved:
        return sel
    sel.resolved = True
    opt = config.getoption("fptq_backend", None)
    if opt:
        sel.name, sel.source = opt, "--backend"
    elif os.environ.get(ENV_VAR):
        sel.name, sel.source = os.environ[ENV_VAR], f"${ENV_VAR}"
    elif config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        sel.name, sel.source = "numpy", "default of the project's own run (no --backend, no $FPTQ_BACKEND)"
    if sel.name:
        from fptq.backends import BackendUnavailable, UnknownBackend, get_backend

        searched = _search_invocation_dir(config, sel.name)
        try:
            sel.backend = get_backend(sel.name)
        except BackendUnavailable as e:
            sel.unavailable = str(e) or type(e).__name__
        except UnknownBackend as e:
            hint = ""
            if ":" in sel.name:
                hint = (f" (searched the installed packages{' and ' + searched if searched else ''}: run from the "
                        "directory that holds the module, put that directory on PYTHONPATH, or install its package)")
            raise pytest.UsageError(f"{sel.source}: {e}{hint}") from e
        except Exception as e:  # a backend that fails to construct is a usage problem, said clearly
            raise pytest.UsageError(f"{sel.source}: backend {sel.name!r} failed to start: "
                                    f"{type(e).__name__}: {e}") from e
    if config.getoption("fptq_xfails", None):
        sel.xfails = _read_xfails(config.getoption("fptq_xfails"))
    return sel


def _search_invocation_dir(config, name: str) -> str | None:
    """For a ``module:Class`` backend whose module is not importable: put the directory pytest was started
    in at the end of ``sys.path`` (``pytest`` itself does not, ``python -m pytest`` does), so that
    ``--backend mykern:MyKern`` finds ``./mykern.py``. Returns that directory, or None if not needed."""
    import importlib.util

    module, sep, _ = name.partition(":")
    if not sep or not module:
        return None
    top = module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        return None
    cwd = str(Path(config.invocation_params.dir).resolve())
    if cwd not in sys.path:
        sys.path.append(cwd)
    return cwd


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    sel = selection(config)
    sel.targeted = targets_suite(config)
    if sel.targeted:
        _activate_profiles(config)
        _resolve(config)


def pytest_collectstart(collector):
    """A run that did not name the suite but reaches it: profiles before its modules are imported."""
    sel = selection(collector.config)
    if sel.profiles_loaded or not isinstance(collector, (pytest.Package, pytest.Module)):
        return
    path = Path(collector.path)
    if is_suite_dir(path if path.is_dir() else path.parent):
        _activate_profiles(collector.config)


def pytest_report_header(config):
    sel = selection(config)
    if not sel.targeted:
        return None
    if not sel.name:
        return [f"fptq backend: none selected (--backend / ${ENV_VAR})"]
    if sel.unavailable:
        return [f"fptq backend: {sel.name} [{sel.source}] UNAVAILABLE: {sel.unavailable}"]
    from hypothesis import settings

    describe = getattr(sel.backend, "describe", None)
    cur = settings.default
    hyp, full = PROFILES[sel.profile]
    return [f"fptq backend: {sel.name} [{sel.source}]: {describe() if describe else '(no describe())'}",
            f"fptq conformance: profile {sel.profile} (--fptq-profile ci|thorough|large): Hypothesis "
            f"{cur.max_examples} examples per property, {'derandomized' if cur.derandomize else 'random'}; "
            f"{'every' if full else 'the reduced set of'} fixed tile-edge cases"]


# ---------------------------------------------------------------------------
# collection


def suite_version_of(item) -> str | None:
    """The ``SUITE_VERSION`` of the suite ``item`` belongs to, or None if it is not a conformance test."""
    module = getattr(item, "module", None)
    package = sys.modules.get(getattr(module, "__package__", None) or "")
    return getattr(package, "SUITE_VERSION", None) if package is not None else None


def check_suite_version(version: str, where) -> None:
    """Refuse a suite written for another fptq (its tests and vectors encode that version's spec)."""
    import fptq

    if version != fptq.__version__:
        raise pytest.UsageError(
            f"this fptq conformance suite ({where}) is version {version}, but the installed fptq.spec is fptq "
            f"{fptq.__version__} ({Path(fptq.__file__).parent}): the suite's tests and known-answer vectors are "
            f"written for another spec. Run the suite that ships with the installed fptq "
            f"(pytest --pyargs fptq.conformance --backend NAME), or install fptq {version}.")


def _suite_relative(nodeid: str) -> str:
    """``.../conformance/test_x.py::test_y[p]`` -> ``test_x.py::test_y[p]`` (checkout or installed suite)."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("conformance/", 1)[-1] + sep + rest


def _xfail_matches(nodeid: str, pattern: str) -> bool:
    rel, pattern = _suite_relative(nodeid), _suite_relative(pattern)
    return rel == pattern or rel.startswith(pattern + "[") or rel.startswith(pattern + "::")


def pytest_collection_modifyitems(config, items):
    ours = [(it, v) for it in items if (v := suite_version_of(it)) is not None]
    if not ours:
        return
    for version, where in {(v, Path(it.path).parent) for it, v in ours}:
        check_suite_version(version, where)
    ours = [it for it, _ in ours]
    sel = _resolve(config)
    if not sel.name:
        raise pytest.UsageError(how_to_pick())
    if sel.unavailable:
        skip = pytest.mark.skip(reason=f"backend {sel.name!r} unavailable: {sel.unavailable}")
        for it in ours:
            it.add_marker(skip)
        return
    ours = _select_ops(config, items, ours)
    used = set()
    for it in ours:
        for pat in sel.xfails:
            if _xfail_matches(it.nodeid, pat):
                it.add_marker(pytest.mark.xfail(reason=f"listed in --xfails {config.getoption('fptq_xfails')}",
                                                strict=False))
                used.add(pat)
    sel.unmatched_xfails = [p for p in sel.xfails if p not in used]


def op_of(item) -> str | None:
    """The operation a conformance test checks: its ``op`` parameter, else the longest operation name that
    its function name (after ``test_``) starts with."""
    from fptq.backends import OPERATIONS

    callspec = getattr(item, "callspec", None)
    if callspec is not None and isinstance(callspec.params.get("op"), str):
        return callspec.params["op"]
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    name = name[len("test_"):] if name.startswith("test_") else name
    found = [op for op in OPERATIONS if name == op or name.startswith(op + "_")]
    return max(found, key=len) if found else None


def _select_ops(config, items, ours):
    """``--fptq-op NAME``: deselect the conformance tests of other operations (and those of none)."""
    wanted = [o for v in (config.getoption("fptq_op", None) or []) for o in v.split(",") if o]
    if not wanted:
        return ours
    from fptq.backends import OPERATIONS

    unknown = [o for o in wanted if o not in OPERATIONS]
    if unknown:
        raise pytest.UsageError(f"--fptq-op: unknown operation(s) {', '.join(unknown)}; the operations are "
                                f"{', '.join(OPERATIONS)}")
    drop = [it for it in ours if op_of(it) not in wanted]
    if drop:
        gone = set(map(id, drop))
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if id(it) not in gone]
    return [it for it in ours if op_of(it) in wanted]


def pytest_terminal_summary(terminalreporter, config):
    sel = getattr(config, _ATTR, None)
    for name in ("conformance.layouts", f"{PYARGS_NAME}.layouts"):
        fallbacks = getattr(sys.modules.get(name), "FALLBACKS", None)
        if sel is not None and sel.targeted and fallbacks:
            terminalreporter.write_line(f"fptq conformance: the backend's arrays could not be sliced into these "
                                        f"layouts, which were tested contiguous: {fallbacks}", yellow=True)
    if sel is not None and sel.unmatched_xfails:
        terminalreporter.write_line(f"fptq conformance: {len(sel.unmatched_xfails)} --xfails id(s) matched no "
                                    f"collected test: {', '.join(sel.unmatched_xfails)}", yellow=True)


def selected_backend(config):
    """The backend under test, for the suite's ``backend`` fixture (skips if none could start)."""
    sel = _resolve(config)
    if sel.backend is None:  # unreachable through collection: modifyitems errors or skips first
        pytest.skip(sel.unavailable or how_to_pick())
    return sel.backend, sel.name
