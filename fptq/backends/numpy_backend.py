"""The ``numpy`` backend: the spec itself (the reference every other backend is checked against).

:class:`fptq.backends.base.BackendBase` with nothing overridden but the name:
each operation runs the spec's check of the same name once
(:mod:`fptq.spec.validate` over the NumPy adapter) and then the spec's own
unchecked implementation (:mod:`fptq.backends._spec_hooks`).
"""

from __future__ import annotations

import numpy as np

from .base import BackendBase


class NumpyBackend(BackendBase):
    """The NumPy reference: every operation is the :mod:`fptq.spec` function of the same name."""

    name = "numpy"

    def describe(self) -> str:
        return f"numpy {np.__version__} (CPU, the reference)"
