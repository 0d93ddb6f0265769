"""The installed suite's pytest plugin (conformance/plugin.py, entry point ``pytest11: fptq-conformance``).

It must run the suite from anywhere (``--pyargs fptq.conformance``, ``fptq
conformance``), refuse a suite written for another fptq, select the
``large`` profile's cases, and stay inert in every other project's run: no
option clash, no header line, no changed Hypothesis default, no error.
Each check runs pytest in a subprocess (a plugin changes global state).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "conformance"


def pytest_run(*args: str, cwd: Path, extra_path: Path | None = None, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k not in ("FPTQ_BACKEND", "PYTHONPATH")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# other projects


OTHER_CONFTEST = '''
def pytest_addoption(parser):
    parser.addoption("--backend", default="theirs", help="another project's own --backend")
    parser.addoption("--xfails", default=None)
'''

OTHER_TEST = '''
import os
from hypothesis import given, settings, strategies as st

def test_own_option(request):
    assert request.config.getoption("backend") == "gpu0"

def test_hypothesis_profile_untouched():
    # the profile Hypothesis picks by itself ("default", or its built-in "ci" where $CI is set)
    own = os.environ["HYPOTHESIS_OWN_CHOICE"]
    now = repr((settings.get_current_profile_name(), settings.default.max_examples, settings.default.derandomize))
    assert now == own, (now, own)

@given(st.integers())
def test_property(x):
    assert isinstance(x, int)

def test_no_backend_fixture_from_fptq(request):
    assert "backend" not in request.fixturenames
'''


def hypothesis_own_choice() -> str:
    """Hypothesis's profile, max_examples and derandomize in this environment with no plugin loaded."""
    code = ("from hypothesis import settings as s; "
            "print(repr((s.get_current_profile_name(), s.default.max_examples, s.default.derandomize)))")
    env = {k: v for k, v in os.environ.items() if k not in ("FPTQ_BACKEND", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_inert_in_another_project_that_owns_backend(tmp_path, monkeypatch):
    """Another project's conftest registers --backend/--xfails: its run is untouched by fptq's plugin."""
    (tmp_path / "conftest.py").write_text(OTHER_CONFTEST)
    (tmp_path / "test_other.py").write_text(OTHER_TEST)
    monkeypatch.setenv("HYPOTHESIS_OWN_CHOICE", hypothesis_own_choice())
    r = pytest_run("--backend", "gpu0", "-v", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"\b4 passed\b", out) and "fptq backend" not in out and "fptq conformance" not in out, out


def test_inert_in_a_plain_project(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    r = pytest_run(cwd=tmp_path)
    assert r.returncode == 0 and "fptq backend" not in r.stdout and "fptq conformance" not in r.stdout, r.stdout
    h = pytest_run("--help", cwd=tmp_path)
    assert "--fptq-backend" in h.stdout and "--fptq-profile" in h.stdout and "--backend" in h.stdout


def test_fptq_options_work_where_another_plugin_owns_backend(tmp_path):
    """A plugin loaded before fptq's owns --backend: the suite still runs, chosen with --fptq-backend."""
    (tmp_path / "their_plugin.py").write_text(OTHER_CONFTEST)
    r = pytest_run("-p", "their_plugin", "--backend", "gpu0", "--fptq-backend", "numpy",
                   str(SUITE / "test_policy.py"), cwd=tmp_path, extra_path=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "fptq backend: numpy [--backend]" in out and re.search(r"\b\d+ passed\b", out), out


# ---------------------------------------------------------------------------
# the suite from anywhere


def test_pyargs_from_another_directory(tmp_path):
    r = pytest_run("--pyargs", "fptq.conformance.test_policy", "--backend", "numpy", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "fptq backend: numpy [--backend]" in out and re.search(r"\b\d+ passed\b", out), out


def test_fptq_conformance_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FPTQ_BACKEND"}
    run = [sys.executable, "-m", "fptq.cli", "conformance"]
    r = subprocess.run([*run, "--backend", "numpy", "--", "-q", "-k", "select_policies"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and re.search(r"\b\d+ passed\b", r.stdout), r.stdout + r.stderr
    assert not (tmp_path / ".pytest_cache").exists()
    r = subprocess.run([*run, "--", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and "needs a backend" in r.stdout + r.stderr, r.stdout + r.stderr


def test_fptq_conformance_op_list_backends_and_no_warnings(tmp_path):
    """Issue 25: --op runs one operation's tests, --list-backends lists the registry, and a clean run prints no
    PytestAssertRewriteWarning (the suite runs in a fresh interpreter, not after fptq.cli imported it)."""
    env = {k: v for k, v in os.environ.items() if k != "FPTQ_BACKEND"}
    run = [sys.executable, "-m", "fptq.cli", "conformance"]
    r = subprocess.run([*run, "--backend", "numpy", "--op", "pack_int4", "--", "-q", "-rA"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and re.search(r"\b\d+ passed, \d+ deselected\b", out), out
    passed = re.findall(r"^PASSED (\S+)", r.stdout, re.M)
    assert passed and all("pack_int4" in p for p in passed), passed
    assert "PytestAssertRewriteWarning" not in out and "warnings summary" not in out, out
    r = subprocess.run([*run, "--backend", "numpy", "--op", "no_such_op"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and "unknown operation(s) no_such_op" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run([*run, "--list-backends"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and re.search(r"^numpy +fptq\.backends\.numpy_backend:NumpyBackend +available$",
                                           r.stdout, re.M), r.stdout + r.stderr


def test_backend_module_in_the_working_directory(tmp_path):
    """``--backend mykern:MyKern`` from the directory holding mykern.py, with pytest's own script (which does not
    put the working directory on sys.path) and through ``fptq conformance``; elsewhere the error says what to do."""
    (tmp_path / "mykern.py").write_text("from fptq.backends.numpy_backend import NumpyBackend\n\n\n"
                                        "class MyKern(NumpyBackend):\n    name = 'mykern'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FPTQ_BACKEND", "PYTHONPATH")}
    script = str(Path(sys.executable).parent / "pytest")
    args = ["-p", "no:cacheprovider", "--pyargs", "fptq.conformance", "--fptq-op", "unpack_int4", "-q"]
    r = subprocess.run([script, *args, "--backend", "mykern:MyKern"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and re.search(r"\b\d+ passed\b", r.stdout), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "fptq.cli", "conformance", "--backend", "mykern:MyKern", "--op",
                        "unpack_int4", "--", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and re.search(r"\b\d+ passed\b", r.stdout), r.stdout + r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([script, *args, "--backend", "mykern:MyKern"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 4 and "cannot import backend module 'mykern'" in out and "PYTHONPATH" in out, out


def test_pytest_command_line():
    from fptq.conformance.command import pytest_command

    assert pytest_command("numba", "large", "x.txt", ["--", "-x"]) == [
        "-p", "fptq-conformance", "-p", "no:cacheprovider", "--pyargs", "fptq.conformance",
        "--fptq-profile", "large", "--fptq-backend", "numba", "--fptq-xfails", "x.txt", "-x"]
    assert pytest_command("numpy", ops=["w4a8_matmul", "pack_int4"])[-4:] == [
        "--fptq-op", "w4a8_matmul", "--fptq-op", "pack_int4"]


def test_large_profile_selects_every_case(tmp_path):
    from fptq.conformance import large_cases

    def collected(*extra):
        r = pytest_run("--co", "-q", str(SUITE / "test_large.py"), "--backend", "numpy", *extra, cwd=REPO)
        assert r.returncode == 0, r.stdout + r.stderr
        return [line for line in r.stdout.splitlines() if "test_w4a8_matmul_large[" in line]

    cases = large_cases.all_cases()
    assert len(collected()) == sum(c.ci for c in cases) < len(cases)
    assert len(collected("--fptq-profile", "large")) == len(cases)
    assert sum(c.macs >= 2**32 for c in cases) >= 3 and not any(c.ci for c in cases if c.macs >= 2**32)


def test_bare_pytest_in_a_checkout_uses_numpy_and_says_so(tmp_path):
    """The project's own run (testpaths, no --backend, no $FPTQ_BACKEND) selects the reference, announced."""
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["conformance"]\n')
    (tmp_path / "conformance").symlink_to(SUITE, target_is_directory=True)
    r = pytest_run("--co", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "fptq backend: numpy [default of the project's own run" in out, out


# ---------------------------------------------------------------------------
# a suite of another version


def test_suite_version_matches_the_package():
    import fptq
    from fptq import conformance

    assert conformance.SUITE_VERSION == fptq.__version__, \
        "bump conformance/__init__.py SUITE_VERSION with fptq.__version__ (after checking the suite still fits)"


def test_suite_of_another_version_is_refused(tmp_path):
    copy = tmp_path / "old" / "conformance"
    shutil.copytree(SUITE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(re.sub(r'SUITE_VERSION = "[^"]*"', 'SUITE_VERSION = "0.0.1"', init.read_text()))
    r = pytest_run(str(copy / "test_policy.py"), "--backend", "numpy", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 4, out
    assert "is version 0.0.1, but the installed fptq.spec is fptq" in out and "pytest --pyargs fptq.conformance" in out


def test_wheel_ships_the_suite(tmp_path):
    """The built wheel holds the suite as fptq.conformance, its vectors, its plugin entry point."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("fptq-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    suite = {f"fptq/conformance/{p.relative_to(SUITE)}" for p in SUITE.rglob("*")
             if p.is_file() and p.suffix in (".py", ".npz") and "__pycache__" not in p.parts}
    assert suite <= names, sorted(suite - names)
    assert any(n.startswith("fptq/conformance/vectors/") and n.endswith(".npz") for n in names)
    assert "[pytest11]\nfptq-conformance = fptq.conformance.plugin" in entry_points
    assert not any(n.startswith(("conformance/", "tests/")) for n in names)


@pytest.mark.parametrize("arg,expected", [("conformance/test_x.py::t[a]", "test_x.py::t[a]"),
                                          ("/v/site-packages/fptq/conformance/test_x.py::t", "test_x.py::t"),
                                          ("test_x.py", "test_x.py")])
def test_xfail_ids_match_checkout_and_installed_paths(arg, expected):
    from fptq.conformance.plugin import _suite_relative

    assert _suite_relative(arg) == expected
