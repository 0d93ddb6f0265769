"""``fptq conformance``: run the installed suite (``pytest --pyargs fptq.conformance``) in this process.

::

    fptq conformance --backend NAME [--profile ci|thorough|large] [--xfails FILE] [-- PYTEST_ARGS...]

is ``pytest --pyargs fptq.conformance --fptq-backend NAME --fptq-profile P
[PYTEST_ARGS...]`` with the plugin loaded by name (so it works where pytest's
plugin autoloading is disabled) and no ``.pytest_cache`` left in the working
directory. The exit status is pytest's: 0 all passed, 1 some failed, 4 a usage
error (no or unknown backend, a suite of another fptq version).
"""

from __future__ import annotations


def pytest_command(backend: str | None, profile: str = "ci", xfails: str | None = None,
                   pytest_args: list[str] | tuple[str, ...] = ()) -> list[str]:
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
    return args + extra


def run_suite(backend: str | None, profile: str = "ci", xfails: str | None = None,
              pytest_args: list[str] | tuple[str, ...] = ()) -> int:
    """Run the suite against ``backend`` (None: ``$FPTQ_BACKEND``); returns pytest's exit status."""
    try:
        import hypothesis  # noqa: F401
        import pytest
    except ImportError as e:
        raise RuntimeError(f"fptq conformance needs pytest and hypothesis ({e}); "
                           "install them with: pip install 'fptq[test]'") from e
    return int(pytest.main(pytest_command(backend, profile, xfails, pytest_args)))
