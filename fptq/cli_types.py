"""argparse types of the command line's numeric flags, written once (fptq.cli and fptq.cli_quantize use them).

Each takes the flag's text and returns the number or raises ``argparse.ArgumentTypeError`` naming what was
expected (argparse then names the flag)."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float"]


def _checked(v, ok: bool, expected: str, s: str):
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {s}")
    return v


def positive_int(s: str) -> int:
    """An integer >= 1."""
    v = int(s)
    return _checked(v, v >= 1, "a positive integer", s)


def non_negative_int(s: str) -> int:
    """An integer >= 0 (``--seed``, ``--rotation-seed``, ``--tune-scales``)."""
    v = int(s)
    return _checked(v, v >= 0, "an integer >= 0", s)


def positive_float(s: str) -> float:
    """A finite number > 0 (``--tune-scales-lr`` and others)."""
    v = float(s)
    return _checked(v, math.isfinite(v) and v > 0, "a finite number > 0", s)


def non_negative_float(s: str) -> float:
    """A finite number >= 0 (v0, v1; their order is QuantConfig's check)."""
    v = float(s)
    return _checked(v, math.isfinite(v) and v >= 0, "a finite number >= 0", s)
