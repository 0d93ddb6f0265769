"""Calling a backend across the NumPy boundary and comparing it with the spec, exactly.

:func:`check_op` is the one assertion of the suite: it computes the spec's
answer, converts the inputs with ``backend.from_numpy``, calls the backend's
operation of the same name (positionally, in the spec's parameter order),
converts every output with ``backend.to_numpy`` and compares

* the dtype and the shape exactly;
* integers with ``==``; floats by their **bit patterns** (``view(uint32)``),
  so -0.0 vs +0.0 and one-ulp differences are caught. NaN compares equal to
  NaN at the same position whatever its payload (IEEE 754 leaves payloads
  unspecified); the spec only produces NaN from overflowed scales anyway;
* ``lae_scales`` only: within ``fptq.spec.LAE_SCALE_ULP_TOLERANCE`` ulps
  (the one transcendental of the spec).

If the spec rejects the input (ValueError/TypeError), the backend must raise
the same kind of error. A failure names the first bad element and the spec
clause, e.g. ``q[3, 5] = -8, but should be -7 [quantize_act_per_token,
docs/spec.md §2.3 per-token dynamic]``, then how many elements differ, where
they lie in a matrix output (``mismatches in rows (M) 48..49 of 0..49; all
columns (N) -- only the last (partial?) tile along M``), the §1.4 rules the
kind of mismatch points to (``hint: off by one: round half to even (§1.4 rule
2) ...``), and carries a snippet that reproduces it (``add_note``).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fptq import spec
from fptq.spec import WeightFormat

from .layouts import backend_view
from .reproducers import (  # noqa: F401 - part of this module's interface
    fail_with_reproducer, remember_backend_name, reproducer, selected_name, spec_args,
)

#: op -> the docs/spec.md clause its results must satisfy (section and title)
CLAUSES = {
    "act_scale_from_amax": "§2.1 act_scale_from_amax", "quantize_act_per_tensor": "§2.2 per-tensor static",
    "quantize_act_per_token": "§2.3 per-token dynamic", "dequantize_act": "§2.4 dequantize_act",
    "lae_scales": "§3.2 lae_scales, tolerance §3.3", "lae_apply_activation": "§3.4 lae_apply_activation",
    "lae_apply_weight": "§3.4 lae_apply_weight",
    "weight_scales": "§4.2 symmetric / §4.3 asymmetric scales", "quantize_weight_with_scales": "§4.2 / §4.3 q",
    "quantize_weight": "§4.4 quantize_weight", "dequantize_weight": "§4.2 / §4.3 w_hat",
    "pack_int4": "§5 INT4 packing", "unpack_int4": "§5 INT4 packing",
    "w4a8_group_sums": "§6.1 integer core", "w4a8_epilogue": "§6.2 pinned epilogue",
    "w4a8_matmul": "§6.1 integer core + §6.2 pinned epilogue", "select_policies": "§7 layerwise policy",
}

#: op -> names of its outputs (for messages: ``q[3, 5] = ...``)
OUTPUT_NAMES = {
    "act_scale_from_amax": ("scale",), "quantize_act_per_tensor": ("q",),
    "quantize_act_per_token": ("q", "scale"), "dequantize_act": ("x_hat",),
    "lae_scales": ("s",), "lae_apply_activation": ("x_eq",), "lae_apply_weight": ("w_eq",),
    "weight_scales": ("scale", "zero"), "quantize_weight_with_scales": ("q",),
    "quantize_weight": ("q", "scale", "zero", "group_size", "fmt"), "dequantize_weight": ("w_hat",),
    "pack_int4": ("packed",), "unpack_int4": ("q",), "w4a8_group_sums": ("acc",),
    "w4a8_epilogue": ("y",), "w4a8_matmul": ("y",), "select_policies": ("policy",),
}

def clause(op: str) -> str:
    """``"op, docs/spec.md §N.M title"``: the clause a result of ``op`` must satisfy."""
    return f"{op}, docs/spec.md {CLAUSES.get(op, '(no clause: not a spec operation)')}"


def to_backend(backend, value, layout: str | None = None):
    """NumPy arrays cross via ``from_numpy`` (as a strided view of ``layout``, :mod:`.layouts`); None,
    ints, bools, floats, formats pass as they are."""
    if isinstance(value, np.ndarray):
        return backend_view(backend, value, layout) if layout else backend.from_numpy(value)
    return value


def from_backend(backend, value):
    """Backend outputs back to NumPy (tuples and QuantizedWeight element-wise; None stays None)."""
    if value is None:
        return None
    if isinstance(value, spec.QuantizedWeight):
        return spec.QuantizedWeight(from_backend(backend, value.q), from_backend(backend, value.scale),
                                    from_backend(backend, value.zero), value.group_size, value.fmt)
    if isinstance(value, (tuple, list)):
        return tuple(from_backend(backend, v) for v in value)
    if isinstance(value, (int, str, WeightFormat)) and not isinstance(value, bool):
        return value
    return backend.to_numpy(value)


def call_backend(backend, op: str, case: dict, layouts: dict | None = None):
    """``backend.op(*inputs)`` with NumPy inputs converted in (``layouts``: argument name -> a layout of
    :mod:`.layouts`) and outputs converted out."""
    fn = getattr(backend, op, None)
    if fn is None:
        raise AssertionError(f"backend {backend.name!r} lacks the operation {op!r} [{clause(op)}]")
    names = list(inspect.signature(getattr(spec, op)).parameters)
    args = [to_backend(backend, a, (layouts or {}).get(n)) for n, a in zip(names, spec_args(op, case))]
    with np.errstate(all="ignore"):  # overflow to inf is part of the spec; NumPy would only warn
        return from_backend(backend, fn(*args))


def _outputs(op: str, result) -> list[tuple[str, Any]]:
    names = OUTPUT_NAMES[op]
    if len(names) == 1:
        return [(names[0], result)]
    if not isinstance(result, tuple) or len(result) != len(names):
        raise AssertionError(f"{op} must return {len(names)} values {names}, got {type(result).__name__} "
                             f"[{clause(op)}]")
    return list(zip(names, result))


# ---------------------------------------------------------------------------
# comparisons


def _fmt_value(a: np.ndarray, idx) -> str:
    v = a[idx]
    if a.dtype.kind == "f":
        bits = np.asarray(v).view(f"uint{8 * a.dtype.itemsize}")  # float16/32/64 alike
        return f"{v} ({int(bits):#0{2 + 2 * a.dtype.itemsize}x})"
    return str(v.item() if hasattr(v, "item") else v)


def _index_str(name: str, idx: tuple) -> str:
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]" if idx else name


def _float_equal(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Element-wise: same bit pattern, or both NaN."""
    u = np.uint32 if a.dtype.itemsize == 4 else np.uint64
    return (a.view(u) == e.view(u)) | (np.isnan(a) & np.isnan(e))


def ulp_distance(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """|a - e| in float32 ulps (int64), via the monotone integer ordering of float32 bit patterns."""
    def ordered(x):
        i = x.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(2**31) - i, i)
    return np.abs(ordered(a) - ordered(e))


def compare(name: str, actual, expected, op: str, inputs: dict | None = None, max_ulp: int = 0,
            ragged: bool | None = None) -> str | None:
    """None if ``actual`` matches ``expected`` exactly (or within ``max_ulp`` float32 ulps);
    otherwise a message naming the first bad element and the clause."""
    where = f"[{clause(op)}]"
    if expected is None or isinstance(expected, (int, str, WeightFormat)):
        if isinstance(expected, WeightFormat) and actual is not None:
            try:
                actual = WeightFormat(actual)
            except ValueError:
                pass
        if actual != expected or type(actual) is bool:
            return f"{name} = {actual!r}, but should be {expected!r} {where}"
        return None
    if not isinstance(actual, np.ndarray):
        return f"{name}: to_numpy returned {type(actual).__name__}, expected a numpy.ndarray {where}"
    if actual.dtype != expected.dtype:
        return f"{name}: dtype {actual.dtype}, but should be {expected.dtype} {where}"
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape}, but should be {expected.shape} {where}"
    if expected.dtype.kind == "f":
        ok = _float_equal(actual, expected)
        if max_ulp:
            finite = np.isfinite(actual) & np.isfinite(expected) & (np.sign(actual) == np.sign(expected))
            ok |= finite & (ulp_distance(actual, expected) <= max_ulp)
    else:
        ok = actual == expected
    if ok.all():
        return None
    bad = ~ok
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    msg = (f"{_index_str(name, idx)} = {_fmt_value(actual, idx)}, but should be "
           f"{_fmt_value(expected, idx)} {where}")
    if max_ulp:
        msg += f" (tolerance {max_ulp} ulp; off by {int(ulp_distance(actual[idx], expected[idx]))} ulp)"
    msg += f"\n  {int(bad.sum())} of {expected.size} elements differ"
    for iname, arr in (inputs or {}).items():
        if isinstance(arr, np.ndarray) and arr.shape == expected.shape and arr.size:
            msg += f"; input {_index_str(iname, idx)} = {_fmt_value(arr, idx)}"
    pattern = where_bad(bad, ragged) if op in MATMUL_OPS else None
    if pattern:
        msg += f"\n  {pattern}"
    for hint in hints(op, actual, expected, bad, idx):
        msg += f"\n  hint: {hint}"
    return msg


# ---------------------------------------------------------------------------
# where the mismatches lie, and which rule they suggest


_AXES = ("rows (M)", "columns (N)", "groups")
#: the operations whose outputs are [M, N] or [M, N, ng] tiles of a matmul kernel
MATMUL_OPS = ("w4a8_group_sums", "w4a8_epilogue", "w4a8_matmul")


def _ranges(hit: np.ndarray, limit: int = 4) -> str:
    """Sorted indices as ranges: ``[3, 16, 17, 18]`` -> ``3, 16..18``."""
    runs, start = [], None
    for i, v in enumerate(hit):
        if start is None:
            start = v
        if i + 1 == len(hit) or hit[i + 1] != v + 1:
            runs.append(f"{start}" if start == v else f"{start}..{v}")
            start = None
    return ", ".join(runs[:limit]) + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


#: tile widths a kernel commonly uses; a mismatch suffix starting at a multiple of one is its last partial tile
TILE_WIDTHS = (256, 128, 64, 32, 16, 8)


def _partial_tile(start: int, size: int) -> int | None:
    """The largest tile width T such that ``start..size-1`` is exactly the last, partial tile of T."""
    for t in TILE_WIDTHS:
        if size % t and start == size - size % t and start > 0:
            return t
    return None


def where_bad(bad: np.ndarray, ragged: bool | None = None) -> str | None:
    """For an output of rank 2 or 3 ([M, N] or [M, N, ng]) whose mismatches do not cover it all:
    the rows, columns and groups that hold them, and what a tiled kernel would have done to give that:
    a partial last tile is named only when the mismatches are exactly one (the size is not a multiple
    of a tile width and they start where its last full tile ends), the last group only when they are in
    it alone (``ragged``: whether that group is ragged, if the caller knows)."""
    if bad.ndim not in (2, 3) or bad.all():
        return None
    parts, tails = [], []
    for ax in range(bad.ndim):
        hit = np.flatnonzero(bad.any(axis=tuple(a for a in range(bad.ndim) if a != ax)))
        size = bad.shape[ax]
        if len(hit) == size:
            parts.append(f"all {_AXES[ax]}")
            continue
        parts.append(f"{_AXES[ax]} {_ranges(hit)} of 0..{size - 1}")
        if hit[-1] != size - 1 or len(hit) != size - hit[0]:
            continue
        if ax == 2 and hit[0] == size - 1 and size > 1:
            tails.append("the last group" + {True: ", which is ragged (§4.1)", False: ""}.get(ragged, ""))
        elif ax < 2 and (t := _partial_tile(int(hit[0]), size)):
            tails.append(f"the last partial tile along {'MN'[ax]} ({_AXES[ax].split()[0]} {hit[0]}..{size - 1} "
                         f"after {hit[0] // t} full tiles of {t})")
    text = "mismatches in " + "; ".join(parts)
    if tails:
        text += " -- only " + " and ".join(tails)
    return text


def hints(op: str, actual: np.ndarray, expected: np.ndarray, bad: np.ndarray, idx: tuple) -> list[str]:
    """The rules of docs/spec.md §1.4 that the kind of mismatch suggests (never proof, just where to look)."""
    out = []
    a, e = actual[bad], expected[bad]
    if expected.dtype.kind == "f":
        tiny = np.finfo(np.float32).tiny
        if np.any((e != 0) & (np.abs(e) < tiny) & (a == 0)):
            out.append("a subnormal result came back as zero: §1.4 rule 6, subnormals are not flushed")
        if np.any((a == 0) & (e == 0) & (np.signbit(a) != np.signbit(e))):
            out.append("+0.0 vs -0.0: §1.4 rule 9, signed zero is part of the result")
        av, ev = actual[idx], expected[idx]
        if np.isfinite(av) and np.isfinite(ev) and av != 0 and int(ulp_distance(av, ev)) == 1:
            if op in ("w4a8_epilogue", "w4a8_matmul"):
                out.append("one ulp off: an FMA (§1.4 rule 4) or another order of the group sum "
                           "(§1.4 rule 5, §6.2: ascending g, each op rounded)")
            else:
                out.append("one ulp off: true division (§1.4 rule 3), separate roundings (§1.4 rule 4)")
    elif op.startswith("quantize") and a.size and np.all(np.abs(a.astype(np.int64) - e.astype(np.int64)) == 1):
        out.append("off by one: round half to even (§1.4 rule 2), true division (§1.4 rule 3), the clip range (§1.1)")
    elif op in ("w4a8_group_sums", "w4a8_matmul") and expected.dtype == np.int32 and a.size:
        out.append("group sums are exact int32 (§6.1, §6.3): check tile edges, the ragged last group (§4.1), "
                   "the zero-point term z * sum(qx over the group's own columns)")
    return out


# ---------------------------------------------------------------------------
# the assertion


def _ragged(case: dict) -> bool | None:
    """Whether the case's last weight group is ragged (K not a multiple of G); None if it has no K and G."""
    if "k" not in case or "group_size" not in case:
        return None
    try:
        k = int(case["k"])
        g = k if case["group_size"] in (-1, None) else int(case["group_size"])
        return g > 0 and k % g != 0 and k > g
    except (TypeError, ValueError):
        return None


def check_op(backend, op: str, case: dict, max_ulp: int = 0, expected=None, rebuild: str | None = None,
             layouts: dict | None = None):
    """Assert that ``backend``'s ``op`` on ``case`` equals ``fptq.spec``'s, exactly (see module docstring).

    ``expected``: the spec's answer when the caller has it already (a large case whose answer comes
    from an exact fast path, :mod:`.large_cases`); the case must then be one the spec accepts.
    ``rebuild``: code defining ``case`` for the reproducer (instead of writing the arrays out).
    ``layouts``: argument name -> a layout of :mod:`.layouts` (the backend gets strided views).
    Returns the spec's result (or the exception it raised) for further checks.
    """
    def fail(msg, rejected=False):
        fail_with_reproducer(msg, backend, op, case, rebuild, layouts, max_ulp, rejected)

    if expected is None:
        try:
            with np.errstate(all="ignore"):
                expected = getattr(spec, op)(**case)
        except (ValueError, TypeError) as e:
            kind = ValueError if isinstance(e, ValueError) else TypeError
            try:
                call_backend(backend, op, case, layouts)
            except kind:
                return e
            except Exception as got:  # noqa: BLE001 - any other exception is the failure we report
                fail(f"{op} raised {type(got).__name__}: {got}, but the spec raises {type(e).__name__} "
                     f"({e}) [{clause(op)}; docs/spec.md §9 what the public API rejects]", rejected=True)
            fail(f"{op} returned a result, but the spec rejects this input with {type(e).__name__}: {e} "
                 f"[{clause(op)}; docs/spec.md §9 what the public API rejects]", rejected=True)
    try:
        actual = call_backend(backend, op, case, layouts)
    except AssertionError:
        raise
    except Exception as got:  # noqa: BLE001
        fail(f"{op} raised {type(got).__name__}: {got}, but the spec accepts this input [{clause(op)}]")
    inputs = {k: v for k, v in case.items() if isinstance(v, np.ndarray)}
    errors = []
    exp_outs = _outputs(op, tuple(expected) if isinstance(expected, tuple) else expected)
    try:
        act_outs = _outputs(op, tuple(actual) if isinstance(actual, tuple) else actual)
    except AssertionError as e:
        fail(str(e))
    for (name, e), (_, a) in zip(exp_outs, act_outs):
        m = compare(name, a, e, op, inputs, max_ulp, _ragged(case))
        if m:
            errors.append(m)
    if errors:
        fail("\n".join(errors))
    return expected


def check_raises(backend, op: str, case: dict, kinds=(ValueError, TypeError)):
    """Assert that both the spec and the backend reject ``case`` with one of ``kinds``."""
    try:
        getattr(spec, op)(**case)
    except kinds:
        pass
    else:  # the case itself is wrong: the suite, not the backend, has a bug
        raise RuntimeError(f"conformance suite bug: spec.{op} accepts a case meant to be rejected")
    try:
        call_backend(backend, op, case)
    except kinds:
        return
    except Exception as got:  # noqa: BLE001
        fail_with_reproducer(f"{op} raised {type(got).__name__}: {got}; expected "
                             f"{' or '.join(k.__name__ for k in kinds)} [{clause(op)}; docs/spec.md §9 what the "
                             "public API rejects]", backend, op, case, rejected=True)
    fail_with_reproducer(f"{op} accepted an input the spec rejects; expected {' or '.join(k.__name__ for k in kinds)} "
                         f"[{clause(op)}; docs/spec.md §9 what the public API rejects]", backend, op, case,
                         rejected=True)
