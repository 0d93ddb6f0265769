"""Reproducers: Python code, attached to a failure, that recomputes the backend's and the spec's answers.

A failure of :func:`conformance.pytest_helpers.check_op` carries (``add_note``)
a snippet that rebuilds the inputs (small arrays written out as bit patterns,
large ones saved to ``$TMPDIR/fptq-<op>-*.npz`` for the example Hypothesis
reports, fixed large cases rebuilt by their id), calls the backend (through
the same strided views, :mod:`.layouts`, when the test used them) and the
spec, and **ends with the comparison that fails**: dtype and shape, then the
bits (floats by bit pattern, NaN equal to NaN; ``lae_scales`` within its ulp
tolerance), raising an ``AssertionError`` that names the first bad element.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np

from fptq import spec
from fptq.spec import WeightFormat

#: Largest input (elements) written inline into a reproducer; larger ones go to an .npz file.
INLINE_LIMIT = 512

#: The comparison every reproducer ends with (``{max_ulp}``: 0, or the tolerance of ``lae_scales``).
COMPARE = """\
def host(a):
    return a if a is None or isinstance(a, (int, str, spec.WeightFormat)) else np.asarray(b.to_numpy(a))
def ordered(a):  # float32 bits as integers that order like the floats (ulp distance = difference)
    i = a.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(2**31) - i, i)
outs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
for i, (g, w) in enumerate(outs):
    g = host(g)
    if not isinstance(w, np.ndarray):
        assert g == w, f"output {{i}}: {{g!r}}, but should be {{w!r}}"
        continue
    assert (g.dtype, g.shape) == (w.dtype, w.shape), f"output {{i}}: {{g.dtype}} {{g.shape}} vs {{w.dtype}} {{w.shape}}"
    if w.dtype.kind == "f":
        u = f"uint{{8 * w.itemsize}}"
        same = (g.view(u) == w.view(u)) | (np.isnan(g) & np.isnan(w))
        if {max_ulp}:
            near = np.isfinite(g) & np.isfinite(w) & (np.sign(g) == np.sign(w))
            same |= near & (abs(ordered(g) - ordered(w)) <= {max_ulp})
    else:
        same = g == w
    if not same.all():
        j = tuple(int(v) for v in np.argwhere(~same)[0])
        bits = (lambda v: hex(int(np.asarray(v).view(f"uint{{8 * w.itemsize}}")))) if w.dtype.kind == "f" else repr
        raise AssertionError(f"output {{i}}{{list(j)}} = {{g[j]!r}} ({{bits(g[j])}}), but should be {{w[j]!r}} "
                             f"({{bits(w[j])}}); {{int((~same).sum())}} of {{w.size}} elements differ")
print("no difference")"""


def spec_args(op: str, case: dict) -> list:
    """The case's values in the spec function's parameter order (defaults filled in)."""
    params = inspect.signature(getattr(spec, op)).parameters
    unknown = set(case) - set(params)
    if unknown:
        raise KeyError(f"case for {op} has unknown arguments {sorted(unknown)}")
    out = []
    for name, p in params.items():
        if name in case:
            out.append(case[name])
        elif p.default is not inspect.Parameter.empty:
            out.append(p.default)
        else:
            raise KeyError(f"case for {op} lacks argument {name!r}")
    return out


def _array_src(a: np.ndarray, name: str, big: dict) -> str:
    if a.size > INLINE_LIMIT:
        big[name] = a
        return f"_saved[{name!r}]"
    if a.dtype.kind == "f":
        u = f"uint{8 * a.dtype.itemsize}"  # float16/32/64 alike
        bits = ", ".join(f"{int(b):#x}" for b in a.reshape(-1).view(getattr(np, u)))
        return f"np.array([{bits}], dtype=np.{u}).view(np.{a.dtype}).reshape({a.shape})"
    return f"np.array({a.reshape(-1).tolist()}, dtype=np.{a.dtype}).reshape({a.shape})"


_BACKEND_NAMES: dict[int, str] = {}


def remember_backend_name(backend, name: str) -> None:
    """Record how ``backend`` was selected (``--backend NAME``), for the reproducers.

    Kept on the backend object itself where it allows (a checkout's suite can be imported twice,
    as ``conformance`` and as ``fptq.conformance``; both copies then see the name)."""
    try:
        backend._fptq_selected_as = name
    except (AttributeError, TypeError):
        _BACKEND_NAMES[id(backend)] = name


def selected_name(backend) -> str:
    """The name ``backend`` was selected by, else its ``name``."""
    return getattr(backend, "_fptq_selected_as", None) or _BACKEND_NAMES.get(id(backend)) \
        or getattr(backend, "name", "?")


def _final_example() -> bool:
    """False while Hypothesis runs an example it will not report (shrinking), else True: only the
    reported example's arrays are written to ``$TMPDIR``."""
    try:
        from hypothesis.control import current_build_context

        return bool(current_build_context().is_final)
    except Exception:  # noqa: BLE001 - not inside a Hypothesis test
        return True


def _call_lines(backend_name: str, op: str, layouts: dict | None) -> list[str]:
    """The lines that call the backend (through the test's strided views, if any) and the spec."""
    if layouts:
        lines = ["from fptq.conformance.layouts import backend_view  # a checkout: from conformance.layouts ...",
                 f"layouts = {dict(layouts)!r}", f"b = get_backend({backend_name!r})",
                 f"got = b.{op}(*[backend_view(b, a, layouts.get(n)) if isinstance(a, np.ndarray) else a "
                 "for n, a in case.items()])"]
    else:
        lines = [f"b = get_backend({backend_name!r})",
                 f"got = b.{op}(*[b.from_numpy(a) if isinstance(a, np.ndarray) else a for a in case.values()])"]
    return lines + [f"want = spec.{op}(**case)"]


def _case_lines(op: str, case: dict, head: list[str]) -> list[str]:
    """``case = dict(...)`` with the arrays written out (or saved to an .npz file named in ``head``)."""
    big: dict[str, np.ndarray] = {}
    lines = []
    for name, value in zip(inspect.signature(getattr(spec, op)).parameters, spec_args(op, case)):
        if isinstance(value, np.ndarray):
            lines.append(f"    {name}={_array_src(value, name, big)},")
        elif isinstance(value, WeightFormat):
            lines.append(f"    {name}=spec.WeightFormat({value.value!r}),")
        else:
            lines.append(f"    {name}={value!r},")
    if big and not _final_example():
        head.append("# (an intermediate example while Hypothesis shrinks: its arrays are not saved)")
    elif big:
        fd, path = tempfile.mkstemp(prefix=f"fptq-{op}-", suffix=".npz")
        os.close(fd)
        np.savez(path, **big)
        head.append(f"_saved = np.load({path!r})")
    return ["case = dict(", *lines, ")"]


#: The end of a reproducer of a rejection: the spec's error, then the backend's call that must raise the same.
REJECTS = """\
try:
    spec.{op}(**case)
except (ValueError, TypeError) as e:
    print("the spec rejects it:", type(e).__name__, e)
    want_error = type(e)
try:
    {call}
except want_error as e:
    print("so does the backend:", e)
else:
    raise AssertionError(f"the backend does not raise {{want_error.__name__}} (docs/spec.md §9.4)")"""


def reproducer(backend_name: str, op: str, case: dict, rebuild: str | None = None, layouts: dict | None = None,
               max_ulp: int = 0, rejected: bool = False) -> str:
    """Python code that recomputes the backend's and the spec's answers for ``case`` (floats bit-exact) and
    ends with the comparison that fails (:data:`COMPARE`; for an input the spec rejects, :data:`REJECTS`).

    ``rebuild``: code that defines ``case`` (a fixed case rebuilt by name) instead of the arrays written out;
    ``layouts``: the strided views the test passed (argument name -> layout, :mod:`.layouts`).
    """
    head = ["import numpy as np", "from fptq import spec", "from fptq.backends import get_backend"]
    body = rebuild.splitlines() if rebuild is not None else _case_lines(op, case, head)
    calls = _call_lines(backend_name, op, layouts)
    if rejected:
        return "\n".join(head + body + calls[:-2] + [REJECTS.format(op=op, call=calls[-2])])
    return "\n".join(head + body + calls + [COMPARE.format(max_ulp=int(max_ulp))])


def fail_with_reproducer(msg: str, backend, op: str, case: dict, rebuild: str | None = None,
                         layouts: dict | None = None, max_ulp: int = 0, rejected: bool = False):
    """Raise AssertionError(msg) with a note holding Python code that reproduces the failure."""
    err = AssertionError(msg)
    name = selected_name(backend)
    err.add_note("Reproduce with:\n" + reproducer(name, op, case, rebuild, layouts, max_ulp, rejected))
    raise err
