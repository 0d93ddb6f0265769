"""The conformance suite bites: every planted bug fails it, the honest backends pass it.

Each planted bug (``tests/planted_bugs.py``: the NumPy reference with one
operation broken the way real kernels break: ties rounded away from zero, a
reciprocal multiply, swapped nibbles, an FMA in the epilogue, groups summed
in another order, an off-by-one clamp, a per-column scale, ...) is run
through the conformance section files that should catch it, in a subprocess,
with the ``ci`` Hypothesis profile (derandomized, so the outcome is the same
on every run). The test asserts that the suite FAILS, that the expected test
is among the failures, and that the failure names the spec clause. The NumPy
reference and two legitimate variants (integer core summed in another order;
a float32 log2 within the LAE tolerance) must PASS the same files.

Also here: the suite's own command line (no backend given, an unknown
backend, an unavailable backend, ``--xfails``, the report header).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
import planted_bugs  # noqa: E402

TIMEOUT = 600


def run_conformance(*args: str, backend: str | None = None, env_backend: str | None = None, quiet: bool = True):
    """``python -m pytest <args> [--backend B]`` in the repository root; tests/ on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "FPTQ_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if env_backend:
        env["FPTQ_BACKEND"] = env_backend
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *(["-q"] if quiet else []), "-rfExs",
           "--hypothesis-profile", "ci", *args]
    if backend:
        cmd += ["--backend", backend]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def failed_ids(out: str) -> list[str]:
    return re.findall(r"^FAILED (\S+)", out, flags=re.M)


def _files(catches) -> list[str]:
    return sorted({"conformance/" + c.split("::")[0] for c in catches})


@pytest.mark.parametrize("bug", planted_bugs.PLANTED, ids=lambda c: c.__name__)
def test_planted_bug_is_caught(bug):
    r = run_conformance(*_files(bug.catches), backend=f"planted_bugs:{bug.__name__}")
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"{bug.__name__}: expected the suite to fail (exit 1), got {r.returncode}\n{out[-3000:]}"
    failed = failed_ids(out)
    for expected in bug.catches:
        nodeid = "conformance/" + expected
        assert any(f == nodeid or f.startswith(nodeid + "[") for f in failed), \
            f"{bug.__name__}: {nodeid} did not fail; failures: {failed}\n{out[-3000:]}"
    assert "docs/spec.md §" in out and "Reproduce with:" in out, \
        f"{bug.__name__}: the failure does not name the spec clause or lacks a reproducer\n{out[-3000:]}"


HONEST_FILES = sorted({f for bug in planted_bugs.PLANTED for f in _files(bug.catches)})


@pytest.mark.parametrize("backend,files", [
    ("numpy", HONEST_FILES),
    ("planted_bugs:IntegerCoreReordered", ["conformance/test_matmul.py", "conformance/test_vectors.py"]),
    ("planted_bugs:Float32Log2", ["conformance/test_lae.py", "conformance/test_vectors.py"]),
], ids=["numpy", "IntegerCoreReordered", "Float32Log2"])
def test_honest_backend_passes(backend, files):
    r = run_conformance(*files, backend=backend)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{backend} should pass {files}:\n{out[-4000:]}"
    assert re.search(r"\b\d+ passed\b", out) and not re.search(r"\b\d+ (failed|skipped|error)", out), out[-2000:]


def test_no_backend_is_a_usage_error():
    r = run_conformance("conformance/test_policy.py")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "--backend" in r.stderr and "FPTQ_BACKEND" in r.stderr and "numpy" in r.stderr


def test_unknown_backend_lists_registered_names():
    r = run_conformance("conformance/test_policy.py", backend="no-such-backend")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "no-such-backend" in r.stderr and "numpy" in r.stderr


def test_unavailable_backend_skips_with_reason():
    r = run_conformance("conformance/test_policy.py", "conformance/test_packing.py",
                        backend="planted_bugs:Unavailable")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"\b4 skipped\b", out) and "no accelerator here (planted)" in out, out


def test_env_backend_header_and_xfails(tmp_path):
    """$FPTQ_BACKEND selects; the header names backend and describe(); --xfails turns failures into xfails."""
    xf = tmp_path / "xfails.txt"
    xf.write_text("# swapped nibbles, known\nconformance/test_packing.py::test_pack_int4\n"
                  "test_packing.py::test_unpack_int4\nconformance/test_packing.py::test_no_such_test\n")
    r = run_conformance("conformance/test_packing.py", "--xfails", str(xf), env_backend="planted_bugs:SwappedNibbles",
                        quiet=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "fptq backend: planted_bugs:SwappedNibbles [$FPTQ_BACKEND]: SwappedNibbles:" in out, out
    assert re.search(r"\b2 xfailed\b", out) and re.search(r"\b1 passed\b", out), out
    assert "matched no collected test: conformance/test_packing.py::test_no_such_test" in out, out
