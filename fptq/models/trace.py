"""An opt-in memory trace of a quantization run: one stderr line per step with the process's resident set.

Off by default (each :func:`mark` is then one attribute test). ``FPTQ_TRACE=1`` in the environment turns it
on (read at the first mark); :func:`enable` does the same from code. Each :func:`mark` writes

    fptq-trace: <step> rss 1.234 GiB hwm 2.345 GiB [step peak 2.100 GiB] +12.3 s

``rss``/``hwm``: VmRSS and VmHWM of ``/proc/self/status`` when the step ends. With ``FPTQ_TRACE=1`` VmHWM
only grows, so the step whose line first shows the final ``hwm`` set the run's peak. With ``FPTQ_TRACE=step``
every mark also resets VmHWM to the current RSS (``/proc/self/clear_refs``), so each line's ``step peak`` is
the peak of that step alone (since the previous mark) and ``hwm`` is their running maximum, kept here; the
last field is the wall time since the previous mark (the first line's: since the trace started); the
kernel's own high-water mark (``/usr/bin/time``'s "Maximum resident set size", ``ru_maxrss``) is then no
longer the run's peak. Where ``/proc`` cannot be read (not Linux) the lines say so and nothing else changes.

The marks of ``fptq quantize`` (``docs/scale.md``): ``check weights``, ``calibration text``, ``rotation plan``,
``capture: read`` (the modules before the layers read), ``capture`` (every layer's inputs recorded), per layer
``<layer path>: load``, ``rotate``, ``forward``, ``rows``, ``plan``, ``Hessian <linear>``, ``quantize <linear>``,
``outputs``, ``flush``; then ``write: read`` (the final norm), ``write: stored``, ``write: <module paths>`` per
group of the embeddings / lm_head and ``write: finish``. Standard library only.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["enabled", "enable", "mark", "read_status", "MODES"]

#: FPTQ_TRACE values that turn the trace on: "1" (VmHWM as the kernel keeps it), "step" (reset per mark)
MODES = ("1", "step")
_STATUS, _CLEAR = "/proc/self/status", "/proc/self/clear_refs"
_UNREAD = object()
_state = {"mode": _UNREAD, "peak": 0, "t": None}


def enable(mode: str | None = "1") -> None:
    """Turn the trace on (``mode`` one of :data:`MODES`) or off (None)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"FPTQ_TRACE must be one of {MODES} (or unset), got {mode!r}")
    _state["mode"], _state["peak"], _state["t"] = mode, 0, time.perf_counter()


def _mode():
    """The trace mode: :func:`enable`'s, else ``FPTQ_TRACE``'s (read at the first call; a value not in
    :data:`MODES` is a ValueError naming it)."""
    if _state["mode"] is _UNREAD:
        enable(os.environ.get("FPTQ_TRACE") or None)
    return _state["mode"]


def enabled() -> bool:
    """Whether :func:`mark` writes lines."""
    return _mode() is not None


def read_status(path: str = _STATUS) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) from ``path`` (``/proc/self/status``); {} where it cannot be read."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _reset_hwm() -> None:
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
    except OSError:
        pass


def mark(step: str) -> None:
    """End of ``step``: one line on stderr when the trace is on (module docstring); nothing otherwise."""
    mode = _state["mode"]
    if mode is _UNREAD:
        mode = _mode()
    if mode is None:
        return
    st = read_status()
    if not st:
        print(f"fptq-trace: {step} (no /proc/self/status)", file=sys.stderr, flush=True)
        return
    gib = 1 << 30
    line = f"fptq-trace: {step} rss {st['VmRSS'] / gib:.3f} GiB"
    if mode == "step":
        _state["peak"] = max(_state["peak"], st["VmHWM"])
        line += f" hwm {_state['peak'] / gib:.3f} GiB step peak {st['VmHWM'] / gib:.3f} GiB"
        _reset_hwm()
    else:
        line += f" hwm {st['VmHWM'] / gib:.3f} GiB"
    now = time.perf_counter()
    line += f" +{now - (_state['t'] or now):.1f} s"
    _state["t"] = now
    print(line, file=sys.stderr, flush=True)
