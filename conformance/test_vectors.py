"""Known-answer vectors: every backend reproduces the stored answers of ``conformance/vectors/*.npz``.

The vectors are the spec's outputs on named edge cases, frozen in files by
``python -m conformance.make_vectors`` (``tests/test_conformance_vectors.py``
checks that regenerating them changes no byte). Unlike the Hypothesis tests,
which compare with the spec code as it is now, these compare with answers
fixed on disk: a backend and the spec that drift together are still caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec

from .make_vectors import VECTORS_DIR, decode
from .pytest_helpers import OUTPUT_NAMES, call_backend, compare, fail_with_reproducer

FILES = sorted(VECTORS_DIR.glob("*.npz"))
CASES = [(f.stem, cid, op, case, outs) for f in FILES for cid, op, case, outs in decode(np.load(f))]


def test_vector_files_present():
    assert {f.stem for f in FILES} >= {"activation", "lae", "weights", "packing", "matmul", "policy"}, \
        f"missing known-answer files in {VECTORS_DIR}; run: python -m conformance.make_vectors"


def test_installed_spec_reproduces_the_vectors():
    """The suite matches the installed ``fptq.spec``: the spec itself gives every stored answer. If this
    fails, the suite and fptq come from different revisions (not your backend's fault): run the suite
    that ships with the installed fptq, ``pytest --pyargs fptq.conformance``."""
    for section, cid, op, case, expected in CASES:
        with np.errstate(all="ignore"):
            got = getattr(spec, op)(**case)
        got = list(got) if isinstance(got, tuple) else [got]
        max_ulp = spec.LAE_SCALE_ULP_TOLERANCE if op == "lae_scales" else 0
        errors = [m for name, a, e in zip(OUTPUT_NAMES[op], got, expected)
                  if (m := compare(name, a, e, op, {}, max_ulp))]
        assert not errors, (f"the installed fptq.spec ({spec.__file__}) does not reproduce this suite's vector "
                            f"{section}/{cid}: suite and spec are from different revisions\n" + "\n".join(errors))


@pytest.mark.parametrize("section,cid,op,case,expected", CASES,
                         ids=[f"{s}-{c}-{o}" for s, c, o, _, _ in CASES])
def test_known_answer_vectors(backend, section, cid, op, case, expected):
    actual = call_backend(backend, op, case)
    actual = list(actual) if isinstance(actual, tuple) else [actual]
    max_ulp = spec.LAE_SCALE_ULP_TOLERANCE if op == "lae_scales" else 0
    inputs = {k: v for k, v in case.items() if isinstance(v, np.ndarray)}
    errors = [m for name, a, e in zip(OUTPUT_NAMES[op], actual, expected)
              if (m := compare(name, a, e, op, inputs, max_ulp))]
    if len(actual) != len(expected):
        errors.append(f"{op} returned {len(actual)} values, expected {len(expected)}")
    if errors:
        fail_with_reproducer(f"vector {section}/{cid}: " + "\n".join(errors), backend, op, case)
