"""The known-answer vectors in conformance/vectors/ are exactly what the spec generates now.

Regenerating them (``python -m conformance.make_vectors``) must give byte-identical
files: if this fails, either the spec changed (a contract change: regenerate
deliberately, and say so) or the generator stopped being deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from conformance import make_vectors  # noqa: E402
from fptq import spec  # noqa: E402


def test_vectors_regenerate_byte_identical():
    fresh = make_vectors.generate()
    stored = {p.name: p.read_bytes() for p in make_vectors.VECTORS_DIR.glob("*.npz")}
    assert set(fresh) == set(stored), f"vector files {sorted(stored)} != generated {sorted(fresh)}"
    drifted = [name for name in fresh if fresh[name] != stored[name]]
    assert not drifted, (f"{drifted} differ from what the spec generates now; if the spec change is intended, "
                         "run: python -m conformance.make_vectors")


def test_vectors_small_and_complete():
    files = list(make_vectors.VECTORS_DIR.glob("*.npz"))
    assert sum(p.stat().st_size for p in files) < 400_000
    ops = {op for p in files for _, op, _, _ in make_vectors.decode(np.load(p))}
    from fptq.backends import OPERATIONS
    missing = set(OPERATIONS) - ops
    assert not missing, f"operations without known-answer vectors: {sorted(missing)}"


def test_npz_is_deterministic_and_loadable(tmp_path):
    arrays = {"a": np.arange(3, dtype=np.int8), "b": np.array(1.5, np.float32), "c": np.array("int4_sym")}
    blob = make_vectors.npz_bytes(arrays)
    assert blob == make_vectors.npz_bytes(arrays)
    (tmp_path / "x.npz").write_bytes(blob)
    with np.load(tmp_path / "x.npz") as z:
        assert z["a"].dtype == np.int8 and z["b"].shape == () and str(z["c"]) == "int4_sym"


def test_stored_answers_are_the_specs():
    """Decoded stored outputs equal a fresh spec call (guards the decoder, not only the bytes)."""
    for p in make_vectors.VECTORS_DIR.glob("*.npz"):
        for cid, op, case, expected in make_vectors.decode(np.load(p)):
            with np.errstate(all="ignore"):
                got = getattr(spec, op)(**case)
            got = list(got) if isinstance(got, tuple) else [got]
            for g, e in zip(got, expected):
                if isinstance(e, np.ndarray):
                    assert g.dtype == e.dtype and g.shape == e.shape, (p.name, cid)
                    assert g.tobytes() == e.tobytes(), (p.name, cid, op)
                else:
                    assert g == e, (p.name, cid, op)
