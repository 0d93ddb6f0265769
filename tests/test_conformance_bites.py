"""The conformance suite bites: every planted bug fails it, the honest backends pass it.

Each planted bug (``tests/planted_bugs.py``: the NumPy reference with one
operation broken the way real kernels break: ties rounded away from zero, a
reciprocal multiply, swapped nibbles, an FMA in the epilogue, groups summed
in another order, an off-by-one clamp, a per-column scale, ...; and the
GPU-style bugs of a tiled matmul: a partial last tile skipped or computed
twice, split-K partials reordered, a ragged last group read full width, the
zero-point term using G, float32 accumulation, a stale shared-memory tile) is
run through the tests that should catch it (``bug.catches``; for the tiled
bugs, the two smallest fixed tile-edge cases the bug meets plus the
Hypothesis tile-edge test), in a subprocess, with the ``ci`` Hypothesis
profile (derandomized, so the outcome is the same on every run). The test
asserts that the suite FAILS, that every expected test is among the
failures, and that the failure names the spec clause (and, for the tiled
bugs, where the mismatches lie). The NumPy reference and the legitimate
variants (integer core summed in another order; a tiled split-K integer
core; a float32 log2 within the LAE tolerance) must PASS the same tests.

Issue 25: ``tests/fresh_backend.py`` is a backend written from docs/spec.md
alone, structured like a GPU kernel (K tiles of 64, int32 per group, exact
float32 tile products); it passes the suite (``test_fresh_backend_passes``),
and ``tests/planted_gpu_bugs.py`` breaks one hook of it at a time: the bugs
of the issue's table (subnormal scales flushed, the last group's FMA, the
zero-point term per K tile, odd-K nibbles, bfloat16 output at M >= 64, the
padding nibble used, a skipped zero bias, amax over the first 128 columns,
28- and 31-bit accumulators, flush-to-zero at M >= 64, ``x * (1/s)`` for
power-of-two s) and six more of the GPU kind; each must fail its tests.

Also here: the suite's own command line (no backend given, an unknown
backend, an unavailable backend, ``--xfails``, the report header), and that a
failing run leaves no reproducer files in ``$TMPDIR`` (issue 13, item 17).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import planted_bugs  # noqa: E402
import planted_gpu_bugs  # noqa: E402

from conformance import large_cases  # noqa: E402

TIMEOUT = 600


def run_conformance(*args: str, backend: str | None = None, env_backend: str | None = None, quiet: bool = True,
                    tmpdir: str | None = None):
    """``python -m pytest <args> [--backend B]`` in the repository root; tests/ on PYTHONPATH.

    The subprocess's ``$TMPDIR`` (where failing tests write reproducer arrays) is ``tmpdir``, else a
    temporary directory removed afterwards: a run leaves nothing behind."""
    env = {k: v for k, v in os.environ.items() if k != "FPTQ_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if env_backend:
        env["FPTQ_BACKEND"] = env_backend
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *(["-q"] if quiet else []), "-rfExs",
           "--hypothesis-profile", "fptq-ci", *args]
    if backend:
        cmd += ["--backend", backend]
    with tempfile.TemporaryDirectory(prefix="fptq-bites-") as own:
        env["TMPDIR"] = tmpdir or own
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def failed_ids(out: str) -> list[str]:
    return re.findall(r"^FAILED (\S+)", out, flags=re.M)


def large_case_ids(bug, count: int = 2) -> list[str]:
    """The ``count`` cheapest fixed tile-edge cases of the reduced set that ``bug`` meets."""
    met = sorted((c for c in large_cases.all_cases() if c.ci and bug.triggers(c)), key=lambda c: c.macs)
    assert met, f"{bug.__name__}: no fixed large case meets the bug"
    return [c.id for c in met[:count]]


def targets(bug) -> list[str]:
    """The node ids run against ``bug``: its ``catches`` (for the tiled bugs, a few fixed cases of
    ``test_w4a8_matmul_large`` rather than all of them)."""
    out = []
    for c in bug.catches:
        if c == "test_large.py::test_w4a8_matmul_large":
            out += [f"conformance/{c}[{cid}]" for cid in large_case_ids(bug)]
        else:
            out.append(f"conformance/{c}")
    return out


#: what the failure message of a tiled bug says about where the mismatches lie
WHERE = {
    planted_bugs.SkipLastPartialTileM: "only the last partial tile along M",
    planted_bugs.SkipLastPartialTileN: "only the last partial tile along N",
    planted_bugs.LastPartialTileTwice: "only the last partial tile along N",
    planted_bugs.RaggedGroupFullWidth: "the last group, which is ragged",
    planted_bugs.ZeroPointUsesG: "the last group, which is ragged",
    planted_gpu_bugs.ClampedLastTileN: "only the last partial tile along N",
}


def assert_caught(bug, module: str):
    """``bug`` (a class of ``module``) fails every one of its targeted tests, naming the clause."""
    nodes = targets(bug)
    r = run_conformance(*nodes, backend=f"{module}:{bug.__name__}")
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"{bug.__name__}: expected the suite to fail (exit 1), got {r.returncode}\n{out[-3000:]}"
    failed = failed_ids(out)
    for nodeid in nodes:
        assert any(f == nodeid or f.startswith(nodeid + "[") for f in failed), \
            f"{bug.__name__}: {nodeid} did not fail; failures: {failed}\n{out[-3000:]}"
    assert "docs/spec.md §" in out and "Reproduce with:" in out, \
        f"{bug.__name__}: the failure does not name the spec clause or lacks a reproducer\n{out[-3000:]}"
    if bug in WHERE:
        assert WHERE[bug] in out, f"{bug.__name__}: the failure does not say {WHERE[bug]!r}\n{out[-3000:]}"


@pytest.mark.parametrize("bug", planted_bugs.PLANTED, ids=lambda c: c.__name__)
def test_planted_bug_is_caught(bug):
    assert_caught(bug, "planted_bugs")


@pytest.mark.parametrize("bug", planted_gpu_bugs.PLANTED_GPU, ids=lambda c: c.__name__)
def test_planted_gpu_bug_is_caught(bug):
    """Issue 25: the fresh GPU-style backend with one hook broken (the issue's table, and six more)."""
    assert_caught(bug, "planted_gpu_bugs")


def test_fresh_backend_passes():
    """Issue 25's fresh-backend test: a NumPy backend written from docs/spec.md, structured like a GPU kernel
    (K tiles of 64, int32 per group, exact float32 tile products; tests/fresh_backend.py), passes every test
    of the operations it implements; each planted_gpu_bugs class (that backend with one bug) fails."""
    files = ["test_activation.py", "test_packing.py", "test_matmul.py", "test_large.py", "test_layouts.py",
             "test_vectors.py"]
    r = run_conformance(*[f"conformance/{f}" for f in files], backend="fresh_backend:GpuStyleBackend")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"\b\d+ passed\b", out) and not re.search(r"\b\d+ (failed|skipped|error)", out), out[-2000:]


def test_every_gpu_style_bug_is_planted():
    names = {c.__name__ for c in planted_bugs.GPU_STYLE}
    assert names == {"SkipLastPartialTileM", "SkipLastPartialTileN", "LastPartialTileTwice", "SplitKReordered",
                     "RaggedGroupFullWidth", "ZeroPointUsesG", "Float32Accumulator", "StaleTileLastK"}


def test_issue_25_table_is_planted():
    names = {c.__name__ for c in planted_gpu_bugs.ISSUE_TABLE}
    assert names == {"DazScales", "FmaLastGroup", "ZeroPointPerKTile", "SwappedNibbleOddK", "Bf16OutputBigM",
                     "PaddingNibbleUsed", "SkipZeroBias", "AmaxFirst128", "Register28Bit", "Register31Bit",
                     "FtzBigM", "ReciprocalPow2"}
    assert len(planted_gpu_bugs.MORE) >= 5


HONEST_NODES = sorted({n for bug in (*planted_bugs.PLANTED, *planted_gpu_bugs.PLANTED_GPU) for n in targets(bug)})


@pytest.mark.parametrize("backend,nodes", [
    ("numpy", HONEST_NODES),
    ("planted_bugs:IntegerCoreReordered", ["conformance/test_matmul.py", "conformance/test_vectors.py"]),
    ("planted_bugs:TiledSplitKIntegers", ["conformance/test_large.py"]),
    ("planted_bugs:Float32Log2", ["conformance/test_lae.py", "conformance/test_vectors.py"]),
], ids=["numpy", "IntegerCoreReordered", "TiledSplitKIntegers", "Float32Log2"])
def test_honest_backend_passes(backend, nodes):
    r = run_conformance(*nodes, backend=backend)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{backend} should pass {nodes}:\n{out[-4000:]}"
    assert re.search(r"\b\d+ passed\b", out) and not re.search(r"\b\d+ (failed|skipped|error)", out), out[-2000:]


def test_failing_runs_leave_no_files_behind(tmp_path):
    """Reproducer arrays too large to print go to $TMPDIR: one file per reported failure, none for the
    examples Hypothesis discards while shrinking (it used to leave a dozen per run in /tmp, issue 13)."""
    bug = "planted_bugs:NoZeroPointCorrection"
    fixed, drawn = tmp_path / "fixed", tmp_path / "drawn"
    fixed.mkdir(), drawn.mkdir()
    r = run_conformance("conformance/test_matmul.py::test_w4a8_matmul_tile_boundaries", backend=bug, tmpdir=str(fixed))
    n_failed = len(failed_ids(r.stdout))
    saved = list(fixed.glob("fptq-*.npz"))
    assert r.returncode == 1 and n_failed and len(saved) == n_failed and str(fixed) in r.stdout, r.stdout[-3000:]
    r = run_conformance("conformance/test_matmul.py::test_w4a8_group_sums", backend=bug, tmpdir=str(drawn))
    assert r.returncode == 1 and len(list(drawn.glob("fptq-*.npz"))) <= 1, (list(drawn.iterdir()), r.stdout[-2000:])


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
    n_collected = int(re.search(r"\b(\d+) skipped\b", out).group(1))
    assert n_collected >= 4 and "no accelerator here (planted)" in out, out


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
    assert re.search(r"\b2 xfailed\b", out) and re.search(r"\b\d+ passed\b", out), out
    assert "matched no collected test: conformance/test_packing.py::test_no_such_test" in out, out
