"""``fptq conformance``: run the installed suite (``pytest --pyargs fptq.conformance``) against a backend.

::

    fptq conformance --backend NAME [--profile ci|thorough|large] [--op OP ...] [--xfails FILE] [-- PYTEST_ARGS...]
    fptq conformance --list-backends

is ``python -m pytest -p fptq-conformance --pyargs fptq.conformance --fptq-backend
NAME --fptq-profile P [--fptq-op OP] [PYTEST_ARGS...]`` in a fresh interpreter (so
that pytest rewrites the suite's assertions without warnings, and the current
directory is on ``sys.path``: ``--backend mykern:MyKern`` finds ``./mykern.py``),
with the plugin loaded by name (so it works where pytest's plugin autoloading
is disabled) and no ``.pytest_cache`` left in the working directory. The exit
status is pytest's: 0 all passed, 1 some failed, 4 a usage error (no or
unknown backend, an unknown operation, a suite of another fptq version).

``--op NAME`` runs the tests of one operation (repeatable; ``w4a8_matmul`` also
runs its tile-edge, big-tile, layout and rejection tests); pytest's own
``-k EXPR`` after ``--`` selects by test name. ``fptq.cli`` builds its parser
with :func:`add_arguments` and runs :func:`main_from_args`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

EPILOG = """\
selecting tests:
  --op w4a8_matmul            the tests of one operation (repeat --op for more; see --op help)
  -- -k "per_token and not large"   pytest's own selection by test name, after --
  -- -x --lf                  any further pytest arguments, after --

a backend module in the current directory (./mykern.py holding class MyKern):
  fptq conformance --backend mykern:MyKern
  (the current directory is searched; elsewhere, put the module's directory on PYTHONPATH
  or install its package and register it under the entry-point group 'fptq.backends')
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fptq conformance`` (``fptq.cli`` calls this on its subparser)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--backend", default=None, help="backend under test: a registered name (see "
                        "--list-backends) or package.module:Class (default: $FPTQ_BACKEND)")
    parser.add_argument("--profile", default="ci", choices=["ci", "thorough", "large"],
                        help="ci = 100 derandomized examples per property and the reduced tile-edge cases (default); "
                        "thorough = 2000 random examples; large = every tile-edge case (GPU kernels)")
    parser.add_argument("--op", action="append", default=None, metavar="NAME",
                        help="run only the tests of this operation (e.g. w4a8_matmul, quantize_act_per_token); "
                        "repeatable")
    parser.add_argument("--xfails", default=None, metavar="FILE", help="test ids expected to fail, one per line")
    parser.add_argument("--list-backends", action="store_true",
                        help="list the registered backends and whether each starts here, then exit")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="further pytest arguments, after --")


def pytest_command(backend: str | None, profile: str = "ci", xfails: str | None = None,
                   pytest_args: list[str] | tuple[str, ...] = (), ops: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The pytest argument list of ``fptq conformance`` (a leading ``--`` of ``pytest_args`` dropped)."""
    extra = list(pytest_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    args = ["-p", "fptq-conformance", "-p", "no:cacheprovider", "--pyargs", "fptq.conformance",
            "--fptq-profile", profile]
    if backend:
        args += ["--fptq-backend", backend]
    if xfails:
        args += ["--fptq-xfails", xfails]
    for op in ops or ():
        args += ["--fptq-op", op]
    return args + extra


def run_suite(backend: str | None, profile: str = "ci", xfails: str | None = None,
              pytest_args: list[str] | tuple[str, ...] = (), ops: list[str] | tuple[str, ...] = ()) -> int:
    """Run the suite against ``backend`` (None: ``$FPTQ_BACKEND``) in a fresh interpreter; pytest's exit status."""
    try:
        import hypothesis  # noqa: F401
        import pytest  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"fptq conformance needs pytest and hypothesis ({e}); "
                           "install them with: pip install 'fptq[test]'") from e
    cmd = [sys.executable, "-m", "pytest", *pytest_command(backend, profile, xfails, pytest_args, ops)]
    return subprocess.run(cmd, check=False).returncode


def list_backends() -> str:
    """One line per registered backend: its name, its ``module:Class``, and whether it starts here (or why not)."""
    from fptq.backends import available_backends, registered_backends

    status = available_backends()
    lines = []
    for name, target in sorted(registered_backends().items()):
        why = status.get(name)
        lines.append(f"{name:12s} {target:55s} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines + ["(or --backend package.module:Class for a backend that is not registered)"])


def main_from_args(a: argparse.Namespace) -> int:
    """Run ``fptq conformance`` from its parsed arguments (:func:`add_arguments`)."""
    if a.list_backends:
        print(list_backends())
        return 0
    return run_suite(a.backend, a.profile, a.xfails, a.pytest_args, a.op or ())
