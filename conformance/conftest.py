"""pytest setup of the conformance suite: which backend, Hypothesis profiles, xfails, report header.

Backend selection (never guessed):

* ``--backend NAME``: a registered name (``numpy``, ``numba``, ``torch``, an
  entry point of the ``fptq.backends`` group) or ``package.module:Class``;
* else the environment variable ``FPTQ_BACKEND``;
* else, only for the project's own run (a bare ``pytest`` in the repository
  root, which collects ``tests/`` and ``conformance/`` through ``testpaths``),
  the NumPy reference ``numpy``, announced in the report header;
* else, when conformance tests are collected: a usage error saying how to pick one.

A backend that raises :class:`fptq.backends.BackendUnavailable` skips the
whole suite with its reason. ``--xfails FILE`` lists test ids a third party
expects to fail. Hypothesis profiles: ``ci`` (default) and ``thorough``,
chosen with ``--hypothesis-profile``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from fptq.backends import BackendUnavailable, UnknownBackend, get_backend, registered_backends

from .pytest_helpers import remember_backend_name

HERE = Path(__file__).resolve().parent
ENV_VAR = "FPTQ_BACKEND"

# ---------------------------------------------------------------------------
# Hypothesis profiles (registered at import, before the Hypothesis plugin reads --hypothesis-profile)

#: Examples per property in the ``ci`` profile: enough that every planted bug of
#: tests/test_conformance_bites.py is found for any seed (see conformance/README.md).
CI_EXAMPLES = 100
THOROUGH_EXAMPLES = 2000
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
#: no "explain" phase: it re-runs failing examples to find covering lines, slow and not needed here
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
                          suppress_health_check=_QUIET, phases=_PHASES, print_blob=True)
settings.register_profile("ci-random", max_examples=CI_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=_QUIET, phases=_PHASES, print_blob=True)
settings.register_profile("thorough", max_examples=THOROUGH_EXAMPLES, deadline=None,
                          suppress_health_check=_QUIET, phases=_PHASES, print_blob=True)
settings.load_profile("ci")


# ---------------------------------------------------------------------------
# options and backend selection


def pytest_addoption(parser):
    group = parser.getgroup("fptq", "fptq conformance suite")
    group.addoption("--backend", action="store", default=None, metavar="NAME",
                    help=f"backend under test: a registered name ({', '.join(sorted(registered_backends()))}) "
                         f"or package.module:Class; default: ${ENV_VAR}")
    group.addoption("--xfails", action="store", default=None, metavar="FILE",
                    help="file of test ids (one per line, # comments) expected to fail for this backend")


@dataclass
class Selection:
    name: str | None = None
    source: str = ""
    backend: object = None
    unavailable: str | None = None
    xfails: list[str] = field(default_factory=list)
    unmatched_xfails: list[str] = field(default_factory=list)


_KEY = pytest.StashKey[Selection]()


def _how_to_pick() -> str:
    return (f"the fptq conformance suite needs a backend: pass --backend NAME or set {ENV_VAR}=NAME, "
            f"where NAME is a registered backend ({', '.join(sorted(registered_backends()))}) "
            "or 'package.module:Class', e.g.  pytest conformance/ --backend numpy")


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


def pytest_configure(config):
    sel = Selection()
    opt = config.getoption("backend")
    if opt:
        sel.name, sel.source = opt, "--backend"
    elif os.environ.get(ENV_VAR):
        sel.name, sel.source = os.environ[ENV_VAR], f"${ENV_VAR}"
    elif config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        sel.name, sel.source = "numpy", "default of the project's own run (no --backend, no $FPTQ_BACKEND)"
    if sel.name:
        try:
            sel.backend = get_backend(sel.name)
            remember_backend_name(sel.backend, sel.name)
        except BackendUnavailable as e:
            sel.unavailable = str(e) or type(e).__name__
        except UnknownBackend as e:
            raise pytest.UsageError(f"{sel.source}: {e}") from e
        except Exception as e:  # a backend that fails to construct is a usage problem, said clearly
            raise pytest.UsageError(f"{sel.source}: backend {sel.name!r} failed to start: "
                                    f"{type(e).__name__}: {e}") from e
    if config.getoption("xfails"):
        sel.xfails = _read_xfails(config.getoption("xfails"))
    config.stash[_KEY] = sel


def pytest_report_header(config):
    sel = config.stash.get(_KEY, None)
    if sel is None or not sel.name:
        return [f"fptq backend: none selected (--backend / ${ENV_VAR})"]
    if sel.unavailable:
        return [f"fptq backend: {sel.name} [{sel.source}] UNAVAILABLE: {sel.unavailable}"]
    describe = getattr(sel.backend, "describe", None)
    cur = settings.default
    return [f"fptq backend: {sel.name} [{sel.source}]: {describe() if describe else '(no describe())'}",
            f"fptq conformance: Hypothesis {cur.max_examples} examples per property, "
            f"{'derandomized' if cur.derandomize else 'random'} (--hypothesis-profile ci|thorough)"]


def _is_conformance(item) -> bool:
    try:
        return Path(item.path).resolve().is_relative_to(HERE)
    except (AttributeError, ValueError):
        return False


def _xfail_matches(nodeid: str, pattern: str) -> bool:
    rel = nodeid.split("conformance/", 1)[-1]
    for nid in (nodeid, rel):
        if nid == pattern or nid.startswith(pattern + "[") or nid.startswith(pattern + "::"):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    sel = config.stash[_KEY]
    ours = [it for it in items if _is_conformance(it)]
    if not ours:
        return
    if not sel.name:
        raise pytest.UsageError(_how_to_pick())
    if sel.unavailable:
        skip = pytest.mark.skip(reason=f"backend {sel.name!r} unavailable: {sel.unavailable}")
        for it in ours:
            it.add_marker(skip)
        return
    used = set()
    for it in ours:
        for pat in sel.xfails:
            if _xfail_matches(it.nodeid, pat):
                it.add_marker(pytest.mark.xfail(reason=f"listed in --xfails {config.getoption('xfails')}",
                                                strict=False))
                used.add(pat)
    sel.unmatched_xfails = [p for p in sel.xfails if p not in used]


def pytest_terminal_summary(terminalreporter, config):
    sel = config.stash.get(_KEY, None)
    if sel is None:
        return
    if sel.unmatched_xfails:
        terminalreporter.write_line(f"fptq conformance: {len(sel.unmatched_xfails)} --xfails id(s) matched no "
                                    f"collected test: {', '.join(sel.unmatched_xfails)}", yellow=True)


@pytest.fixture(scope="session")
def backend(request):
    """The backend under test (selected by --backend / $FPTQ_BACKEND)."""
    sel = request.config.stash[_KEY]
    if sel.backend is None:  # unreachable through collection: modifyitems errors or skips first
        pytest.skip(sel.unavailable or _how_to_pick())
    return sel.backend
